"""SVD's open_clip image conditioner, converted from an original single file (minisvd/pretrained/original_clip.py).

Parity is against open_clip itself (its `VisionTransformer`, built by its own factory from a tiny config), the
full size is checked on the meta device against open_clip's ViT-H/14, and the original-layout fixture grows a
tiny conditioner so that `load_pipeline(file)` runs with nothing else given.

open_clip imports torchvision at package level (for code SVD never uses); the CPU torch wheel of this project
has no matching torchvision, so where torchvision does not import, open_clip's model modules are loaded with a
stand-in `torchvision.ops.misc` (open_clip's ViT never touches it). CI installs open_clip with `--no-deps`.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
import warnings

import pytest
import torch
from helpers import FIXTURE, fixture_meta, max_abs_diff, randomize_

from minisvd.models.clip import svd_clip_vision_config
from minisvd.pretrained.original_clip import (
    PREFIX,
    VISUAL,
    convert_clip_state_dict,
    convert_clip_to_original,
    load_original_clip,
)

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def open_clip_model():
    """open_clip's `model` module (CLIP, CLIPVisionCfg, CLIPTextCfg), imported with torchvision if it works."""
    if importlib.util.find_spec("open_clip") is None:
        pytest.skip("open_clip is not installed: pip install --no-deps open-clip-torch")
    try:
        import torchvision  # noqa: F401

        yield importlib.import_module("open_clip.model")
        return
    except Exception:  # noqa: BLE001 - absent, or the PyPI build that does not import beside a CPU torch
        pass
    import transformers  # noqa: F401 - before the stand-in exists: transformers probes for torchvision

    saved = dict(sys.modules)
    misc = types.ModuleType("torchvision.ops.misc")
    misc.FrozenBatchNorm2d = type("FrozenBatchNorm2d", (torch.nn.Module,), {})  # unused by the ViT
    stand_in = {
        "torchvision": types.ModuleType("torchvision"),
        "torchvision.ops": types.ModuleType("x"),
        "torchvision.ops.misc": misc,
    }
    package = types.ModuleType("open_clip")  # the package without its __init__ (which imports everything)
    package.__path__ = list(importlib.util.find_spec("open_clip").submodule_search_locations)
    sys.modules.update({**stand_in, "open_clip": package})
    try:
        module = importlib.import_module("open_clip.model")
    finally:
        for name in stand_in:  # only while open_clip imports: nothing else may see a torchvision
            del sys.modules[name]
    yield module
    for name in set(sys.modules) - set(saved):
        del sys.modules[name]


def open_clip_conditioner(oc, embed_dim, vision, text, device=None):
    """open_clip's CLIP as sgm's FrozenOpenCLIPImageEmbedder keeps it (text transformer deleted), and its state
    dict under the single file's prefix."""
    with torch.device(device or "cpu"):
        model = oc.CLIP(embed_dim, oc.CLIPVisionCfg(**vision), oc.CLIPTextCfg(**text))
    del model.transformer
    return model, {PREFIX + k: v for k, v in model.state_dict().items()}


TINY_VISION = dict(layers=2, width=128, head_width=64, patch_size=14, image_size=224)
TINY_TEXT = dict(context_length=8, vocab_size=64, width=32, heads=2, layers=1)


def test_parity_with_open_clip(open_clip_model):
    """Our converted CLIP image embedding = open_clip's, to fp32 round-off, on random pixels and real photos."""
    from skimage import data

    from minisvd.conditioning.clip_image import clip_pixels

    model, sd = open_clip_conditioner(open_clip_model, 48, TINY_VISION, TINY_TEXT)
    randomize_(model, seed=3, scale=0.1)
    model.eval()
    sd = {PREFIX + k: v for k, v in model.state_dict().items()}
    ours = load_original_clip(sd)
    photos = torch.stack(
        [
            torch.from_numpy(getattr(data, n)()).permute(2, 0, 1).float() / 255
            for n in ("astronaut", "coffee")
        ][:1]
        + [torch.rand(3, 512, 512, generator=torch.Generator().manual_seed(0))]
    )
    pixels = torch.cat(
        [clip_pixels(photos), torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))]
    )
    with torch.no_grad():
        expected = model.visual(pixels)  # (N, 48): open_clip's pooled, projected embedding
        got = ours(pixels).image_embeds
    rel = max_abs_diff(got, expected) / expected.abs().max().item()
    print(f"open_clip parity: max abs diff / max |embedding| = {rel:.2e}")
    assert rel <= 1e-5
    assert ours.config.num_attention_heads == 2 and ours.config.hidden_act == "gelu"


def test_vit_h_14_on_the_meta_device(open_clip_model):
    """open_clip's ViT-H/14 (SVD's conditioner, 632M parameters) converts to exactly the shapes and parameter count
    of transformers' CLIPVisionModelWithProjection with SVD's image_encoder config; text leftovers are skipped."""
    from transformers import CLIPVisionModelWithProjection

    vit_h = dict(layers=32, width=1280, head_width=80, patch_size=14, image_size=224)
    text_h = dict(context_length=77, vocab_size=49408, width=1024, heads=16, layers=24)
    _, sd = open_clip_conditioner(open_clip_model, 1024, vit_h, text_h, device="meta")
    assert any(k.startswith(PREFIX + "token_embedding") for k in sd)  # leftovers present, as in the real file
    config, converted = convert_clip_state_dict(sd)
    reference = svd_clip_vision_config()
    for field in (
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
        "image_size",
        "patch_size",
        "projection_dim",
        "hidden_act",
        "layer_norm_eps",
    ):
        assert getattr(config, field) == getattr(reference, field), field
    with torch.device("meta"):
        target = CLIPVisionModelWithProjection(reference).state_dict()
    assert converted.keys() == target.keys()
    assert all(converted[k].shape == target[k].shape for k in target)
    n_ours = sum(v.numel() for v in converted.values())
    n_open_clip = sum(v.numel() for k, v in sd.items() if k.startswith(VISUAL))
    assert n_ours == n_open_clip == sum(v.numel() for v in target.values()) == 632_076_800


def test_keys_skipped_by_name_and_strays_named():
    from transformers import CLIPVisionModelWithProjection

    from minisvd.models.clip import tiny_clip_vision_config

    torch.manual_seed(0)
    model = CLIPVisionModelWithProjection(tiny_clip_vision_config(projection_dim=16, patch_size=14)).eval()
    original = convert_clip_to_original(model.state_dict())
    _, back = convert_clip_state_dict(original, num_heads=4)
    assert back.keys() == model.state_dict().keys()
    assert all(torch.equal(back[k], v) for k, v in model.state_dict().items())  # the two tables are inverses
    leftovers = {PREFIX + "logit_scale": torch.ones(()), PREFIX + "ln_final.weight": torch.ones(4)}
    convert_clip_state_dict({**original, **leftovers}, num_heads=4)  # known leftovers: fine
    with pytest.raises(
        ValueError, match=r"cannot place:\s+conditioner.embedders.0.open_clip.model.visual.extra"
    ):
        convert_clip_state_dict({**original, VISUAL + "extra.weight": torch.ones(1)}, num_heads=4)
    with pytest.raises(ValueError, match="open_clip.model.mystery"):
        convert_clip_state_dict({**original, PREFIX + "mystery": torch.ones(1)}, num_heads=4)


def test_kornia_resize_equals_ours():
    """The reference preprocesses with kornia (bicubic, antialias, align_corners=True); ours is the same
    computation: bit-identical on real photos at several sizes (docs/pretrained.md)."""
    kornia = pytest.importorskip("kornia")
    from skimage import data

    from minisvd.conditioning.clip_image import CLIP_MEAN, CLIP_STD, clip_pixels

    mean, std = torch.tensor(CLIP_MEAN), torch.tensor(CLIP_STD)
    for name, size in (("astronaut", (576, 1024)), ("coffee", (400, 600)), ("chelsea", (128, 160))):
        x = torch.from_numpy(getattr(data, name)()).permute(2, 0, 1)[None].float() / 255
        x = torch.nn.functional.interpolate(x, size=size, mode="bilinear", antialias=True).clamp(0, 1)
        y = kornia.geometry.resize(
            x * 2 - 1, (224, 224), interpolation="bicubic", align_corners=True, antialias=True
        )
        reference = kornia.enhance.normalize(
            (y + 1) / 2, mean, std
        )  # sgm's FrozenOpenCLIPImageEmbedder.preprocess
        assert max_abs_diff(clip_pixels(x), reference) <= 1e-6, name


# ----- the fixture grows a conditioner: load_pipeline(file) with nothing else -----------------------------------
def grown_fixture(folder):
    """The original-layout fixture plus a tiny conditioner as a real file holds it: the open_clip image tower, the
    text tower's leftovers, and the conditioner's VAE copy (encoder equal to first_stage_model's, its own
    quant_conv, a decoder and post_quant_conv that SVD never calls). Made at test time from the committed
    fixture (11 MB) rather than stored a second time. Returns (path, the CLIP, the quant_conv)."""
    from safetensors.torch import load_file, save_file
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    sd = load_file(str(FIXTURE / "svd_tiny_original.safetensors"))
    width = fixture_meta()["original_unet_params"]["context_dim"]  # 48: the UNet's cross-attention width
    config = CLIPVisionConfig(  # width 64: one head of open_clip's default width 64
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=1,
        image_size=224,
        patch_size=14,
        projection_dim=width,
        hidden_act="gelu",
    )
    clip = randomize_(CLIPVisionModelWithProjection(config), seed=6, scale=0.1)
    sd.update(convert_clip_to_original(clip.state_dict()))
    sd.update({PREFIX + "logit_scale": torch.tensor(4.6), PREFIX + "text_projection": torch.randn(32, width)})
    copy = "conditioner.embedders.3.encoder."
    g = torch.Generator().manual_seed(7)
    quant = {"weight": torch.randn(8, 8, 1, 1, generator=g) * 0.3, "bias": torch.randn(8, generator=g) * 0.1}
    for k, v in list(sd.items()):
        if k.startswith("first_stage_model.encoder."):
            sd[copy + k[len("first_stage_model.") :]] = v.clone()
    sd.update({f"{copy}quant_conv.{p}": t for p, t in quant.items()})
    sd.update(
        {
            f"{copy}post_quant_conv.weight": torch.ones(4, 4, 1, 1),
            f"{copy}decoder.conv_in.weight": torch.ones(1),
        }
    )
    path = folder / "svd_tiny_original_with_conditioner.safetensors"
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    return path, clip.eval(), quant


def fixture_configs():
    from minisvd.models.unet import UNetConfig
    from minisvd.models.vae import VAEConfig

    meta = fixture_meta()
    return (
        UNetConfig.from_diffusers(meta["equivalent_diffusers_unet_config"]),
        VAEConfig.from_diffusers(meta["equivalent_diffusers_vae_config"]),
    )


def test_single_file_alone_generates(tmp_path):
    from PIL import Image

    from minisvd.pipelines import load_pipeline

    path, clip, quant = grown_fixture(tmp_path)
    unet_cfg, vae_cfg = fixture_configs()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # equal encoder copies: no warning
        pipe = load_pipeline(path, unet_config=unet_cfg, vae_config=vae_cfg)
    assert all(torch.equal(pipe.image_encoder.state_dict()[k], v) for k, v in clip.state_dict().items())
    assert torch.equal(
        pipe.vae.quant_conv.weight, quant["weight"]
    )  # the conditioner copy's, not the identity
    clip.save_pretrained(tmp_path / "image_encoder")
    override = load_pipeline(
        path, unet_config=unet_cfg, vae_config=vae_cfg, image_encoder=tmp_path / "image_encoder"
    )
    image = Image.new("RGB", (64, 64), (180, 90, 40))
    kw = dict(height=64, width=64, num_frames=5, num_inference_steps=2)
    a = pipe(image, generator=torch.Generator().manual_seed(0), **kw)
    b = override(image, generator=torch.Generator().manual_seed(0), **kw)
    assert torch.isfinite(a).all() and a.shape == (5, 3, 64, 64)
    assert max_abs_diff(a, b) <= 1e-4  # the same CLIP given as a folder (round-off: another attention kernel)


def test_unequal_encoder_copies_warn(tmp_path):
    from safetensors.torch import load_file, save_file

    from minisvd.pipelines import load_pipeline

    path, _, _ = grown_fixture(tmp_path)
    sd = load_file(str(path))
    sd["conditioner.embedders.3.encoder.encoder.conv_in.bias"] += 0.5
    save_file(sd, str(path))
    unet_cfg, vae_cfg = fixture_configs()
    with pytest.warns(UserWarning, match=r"conditioner's VAE encoder differs .*max abs 0\.5"):
        pipe = load_pipeline(path, unet_config=unet_cfg, vae_config=vae_cfg)
    assert torch.equal(
        pipe.vae.encoder.conv_in.bias, sd["conditioner.embedders.3.encoder.encoder.conv_in.bias"]
    )
