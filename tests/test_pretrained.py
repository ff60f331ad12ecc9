"""Loading SVD weights: diffusers folders, variants, the HF cache, original single files, and clear errors.

The single-file checks use the tiny original-layout fixture (tests/fixtures/svd_tiny_original), whose UNet and
VAE outputs were computed by the original Stability code: after conversion we must reproduce them to
1e-4 * max|expected| (the UNet with the original GroupNorm eps, our default).
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from helpers import FIXTURE, fixture_meta, fixture_tensors, max_abs_diff

from minisvd.models.unet import UNetConfig
from minisvd.models.vae import VAEConfig
from minisvd.pipelines import load_pipeline, tiny_random_pipeline
from minisvd.pretrained import find_in_hf_cache, find_svd_weights


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A tiny random pipeline saved in the diffusers layout (fp32), and the pipeline itself."""
    pipe = tiny_random_pipeline(seed=11, num_frames=4)
    folder = tmp_path_factory.mktemp("tiny_svd")
    pipe.save_pretrained(folder)
    return pipe, folder


def same_weights(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k].float(), sb[k].float()) for k in sa)


# ----- diffusers folders ---------------------------------------------------------------------------------------
def test_folder_round_trip_and_dtype(saved):
    pipe, folder = saved
    loaded = load_pipeline(folder)
    assert all(same_weights(getattr(pipe, n), getattr(loaded, n)) for n in ("unet", "vae", "image_encoder"))
    assert loaded.unet.config.num_frames == 4 and loaded.dtype == torch.float32
    assert loaded.unet.config.diffusers_resnet_eps is False  # default: the original code's GroupNorm eps
    assert load_pipeline(folder, match_diffusers=True).unet.config.diffusers_resnet_eps is True
    half = load_pipeline(folder, dtype="bf16")
    assert {p.dtype for m in half.models.values() for p in m.parameters()} == {torch.bfloat16}


def test_fp16_variant(saved, tmp_path):
    pipe, _ = saved
    half = tiny_random_pipeline(seed=11, num_frames=4).to(dtype=torch.float16)
    half.save_pretrained(tmp_path, variant="fp16")
    assert (tmp_path / "unet" / "diffusion_pytorch_model.fp16.safetensors").exists()
    with pytest.raises(FileNotFoundError, match="try variant='fp16'"):
        load_pipeline(tmp_path)
    loaded = load_pipeline(tmp_path, variant="fp16", dtype=torch.float16)
    assert loaded.dtype == torch.float16
    assert same_weights(loaded.unet, half.unet) and not same_weights(loaded.unet, pipe.unet.to(torch.float32))


def test_repo_id_from_a_local_hf_cache(saved, tmp_path, monkeypatch):
    _, folder = saved
    snap = tmp_path / "hub" / "models--someone--tiny-svd" / "snapshots" / "0123abcd"
    shutil.copytree(folder, snap)
    (tmp_path / "hub" / "models--someone--tiny-svd" / "refs").mkdir()
    (tmp_path / "hub" / "models--someone--tiny-svd" / "refs" / "main").write_text("0123abcd")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    assert find_in_hf_cache("someone/tiny-svd") == snap
    assert load_pipeline("someone/tiny-svd").unet.config.num_frames == 4
    with pytest.raises(FileNotFoundError, match="huggingface-cli download someone/absent"):
        load_pipeline("someone/absent")


def test_preset_mismatch_is_a_clear_error(saved, tmp_path):
    _, folder = saved
    xt = tmp_path / "xt"
    shutil.copytree(folder, xt)
    cfg = json.loads((xt / "unet" / "config.json").read_text())
    (xt / "unet" / "config.json").write_text(json.dumps({**cfg, "num_frames": 25}))
    with pytest.raises(ValueError, match=r"SVD-XT|svd_xt.*num_frames=25.*preset='svd'"):
        load_pipeline(xt, preset="svd")
    load_pipeline(xt, preset="svd_xt")  # the right preset loads
    # an original file named for SVD-XT, asked for as plain SVD: refused before any weight is read
    f = tmp_path / "svd_xt.safetensors"
    f.write_bytes(b"not read")
    with pytest.raises(ValueError, match="preset='svd' expects num_frames=14; use preset='svd_xt'"):
        load_pipeline(f, preset="svd", image_encoder=folder / "image_encoder")


def test_mis_shaped_weights_are_named(saved, tmp_path):
    _, folder = saved
    bad = tmp_path / "bad"
    shutil.copytree(folder, bad)
    cfg = json.loads((bad / "unet" / "config.json").read_text())
    (bad / "unet" / "config.json").write_text(json.dumps({**cfg, "cross_attention_dim": 48}))
    with pytest.raises(
        ValueError, match=r"mis-shaped key\(s\):\n.*attn2\.to_k\.weight: expected \(\d+, 48\)"
    ):
        load_pipeline(bad)


def test_code_running_pickle_is_refused(saved, tmp_path):
    _, folder = saved
    bad = tmp_path / "pickle"
    shutil.copytree(folder, bad)
    (bad / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    torch.save(
        {"weights": torch.zeros(1), "payload": _Payload()}, bad / "unet" / "diffusion_pytorch_model.bin"
    )
    with pytest.raises(ValueError, match="refuses to unpickle"):
        load_pipeline(bad)


class _Payload:  # any class outside torch's allow-list: unpickling it would run code
    pass


def test_missing_weights_say_how_to_download(tmp_path):
    with pytest.raises(
        FileNotFoundError, match="huggingface-cli download stabilityai/stable-video-diffusion"
    ):
        load_pipeline(tmp_path / "nowhere")
    (tmp_path / "half").mkdir()
    with pytest.raises(FileNotFoundError, match="unet/ is missing"):
        load_pipeline(tmp_path / "half")


# ----- original single files -----------------------------------------------------------------------------------
def fixture_configs():
    meta = fixture_meta()
    unet_cfg = UNetConfig.from_diffusers(meta["equivalent_diffusers_unet_config"])
    vae_cfg = VAEConfig.from_diffusers(meta["equivalent_diffusers_vae_config"])
    return unet_cfg, vae_cfg


def test_single_file_fixture_reproduces_the_original_code(saved):
    _, folder = saved
    unet_cfg, vae_cfg = fixture_configs()
    pipe = load_pipeline(
        FIXTURE / "svd_tiny_original.safetensors",
        unet_config=unet_cfg,
        vae_config=vae_cfg,
        image_encoder=folder / "image_encoder",
    )
    ref = fixture_tensors("reference.safetensors")
    with torch.no_grad():
        out = pipe.unet(
            ref["unet.sample"],
            ref["unet.c_noise"],
            ref["unet.encoder_hidden_states"],
            ref["unet.added_time_ids"],
        )
        dec = pipe.vae.decode(ref["vae.latents"], num_frames=fixture_meta()["vae_decode_num_frames"])
    assert max_abs_diff(out, ref["unet.expected"]) <= 1e-4 * ref["unet.expected"].abs().max()
    assert max_abs_diff(dec, ref["vae.expected_decoded"]) <= 1e-4 * ref["vae.expected_decoded"].abs().max()
    # the decoder's output time conv (which diffusers' own converter misses) came from the file, not the init
    original = fixture_tensors("svd_tiny_original.safetensors")
    assert torch.equal(
        pipe.vae.decoder.time_conv_out.weight,
        original["first_stage_model.decoder.conv_out.time_mix_conv.weight"],
    )


def test_single_file_errors(saved, tmp_path):
    _, folder = saved
    unet_cfg, vae_cfg = fixture_configs()
    with pytest.raises(ValueError, match="image_encoder=<folder"):
        load_pipeline(FIXTURE / "svd_tiny_original.safetensors", unet_config=unet_cfg, vae_config=vae_cfg)
    # the tiny file read with a wrong VAE size (one more level): names the keys that do not fit
    with pytest.raises(ValueError, match=r"(?s)do not fit this VAE.*(missing|mis-shaped) key"):
        load_pipeline(
            FIXTURE / "svd_tiny_original.safetensors",
            unet_config=unet_cfg,
            vae_config=VAEConfig(block_out_channels=(32, 64, 96), layers_per_block=2),
            image_encoder=folder / "image_encoder",
        )


# ----- real weights (slow, only where they are on disk) -----------------------------------------------------------
@pytest.mark.slow
def test_real_weights_two_steps():
    path = find_svd_weights()
    if path is None:
        pytest.skip(
            "no SVD weights on disk: set MINISVD_SVD_WEIGHTS or put "
            "stabilityai/stable-video-diffusion-img2vid[-xt] in the Hugging Face cache"
        )
    from PIL import Image

    variant = "fp16" if any((path / "unet").glob("*.fp16.safetensors")) else None
    device = "cuda" if torch.cuda.is_available() else "cpu"
    pipe = load_pipeline(path, variant=variant, dtype=torch.float16 if device == "cuda" else torch.float32)
    pipe.to(device)
    img = Image.new("RGB", (512, 320), (200, 120, 40))
    frames = pipe(
        img,
        height=320,
        width=512,
        num_frames=4,
        num_inference_steps=2,
        decode_chunk_size=2,
        generator=torch.Generator().manual_seed(0),
    )
    assert frames.shape == (4, 3, 320, 512) and torch.isfinite(frames).all()
    assert frames.std() > 0.01
