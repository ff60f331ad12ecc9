"""The UNet stages I (image), II (video), III (hires) and image-to-video, and the text-to-video sampler.

A tiny stage-0 folder (random 3-level VAE, random tiny CLIP with a tokenizer over toy captions) stands in
for the `vae` and `clip` stages; every stage then trains 2 steps through the engine from the previous run,
as the chain does, with tiny datasets. Checked: finite losses and complete final/ folders, the inflation
identity (and that it fails without zero-init), conv_in growth, the i2v export in diffusers against
minisvd, the chain's errors, and the sampler.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import PIL.Image
import pytest
import torch
from helpers import load_diffusers_svd_quietly, max_abs_diff, randomize_

from minisvd.models.unet import UNet
from minisvd.train import TrainConfig, train
from minisvd.train.stages.i2v import ImageToVideoStage, check_grown, grow_conv_in
from minisvd.train.stages.image import ImageStage
from minisvd.train.stages.video import HiresStage, VideoStage, check_inflation, inflate

STEPS = TrainConfig.tiny(steps=2, batch_size=2, log_every=1, ckpt_every=2, sample_every=0, warmup_steps=1)


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def stage0(tmp_path_factory):
    """A stand-in for the vae and clip stages: OUT/final/vae (3 levels, factor 4) and OUT/final/clip."""
    from transformers import CLIPModel

    from minisvd.data import ToyClips, ToyFrames, world_preset
    from minisvd.models.clip import build_tokenizer, save_clip_folder, tiny_clip_config
    from minisvd.models.vae import VAEConfig, VideoVAE
    from minisvd.pretrained.save import save_model_folder

    root = tmp_path_factory.mktemp("chain")
    mp = pytest.MonkeyPatch()
    mp.setenv("MINISVD_CACHE", str(root / "cache"))  # toy clips and latents of this test only
    torch.manual_seed(0)
    vae = VideoVAE(
        VAEConfig.tiny(block_out_channels=(32, 32, 64), layers_per_block=1, scaling_factor=0.5)
    ).eval()
    save_model_folder(root / "stage0" / "final" / "vae", vae)
    world = world_preset("tiny")
    captions = [ToyClips(world, 32)[i]["caption"] for i in range(32)]
    captions += [ToyFrames(world, 32)[i]["caption"] for i in range(32)]
    tokenizer = build_tokenizer(captions)
    save_clip_folder(CLIPModel(tiny_clip_config(tokenizer)), tokenizer, root / "stage0" / "final" / "clip")
    yield root
    mp.undo()


@pytest.fixture(scope="module")
def chain(stage0):
    """image -> video -> hires -> i2v, 2 steps each, every stage from the previous run folder."""
    root, runs, init = stage0, {}, stage0 / "stage0"
    for stage, config in [
        (ImageStage(num_images=16, sample_steps=2), STEPS.replace(sample_every=2)),
        (VideoStage(num_clips=8), STEPS),
        (HiresStage(num_clips=2), STEPS),
        (ImageToVideoStage(num_clips=8, sample_steps=2), STEPS.replace(sample_every=2)),
    ]:
        runs[stage.name] = train(stage, config, root / stage.name, init=init)
        runs[stage.name]["stage"] = stage
        init = root / stage.name
    return runs


def test_every_stage_trains_from_the_previous_one(chain):
    for name, run in chain.items():
        assert math.isfinite(run["final_loss"]), name
        final = Path(run["final"])
        assert (
            (final / "unet" / "config.json").exists()
            and (final / "vae").is_dir()
            and (final / "clip").is_dir()
        )
        assert json.loads((final / "stage.json").read_text())["stage"] == name
    assert chain["video"]["stage"].inflation_error <= 1e-5  # checked at build time
    assert chain["i2v"]["stage"].grow_error <= 1e-6
    assert (Path(chain["image"]["out_dir"]) / "samples" / "step_000002.gif").exists()
    i2v_samples = Path(chain["i2v"]["out_dir"]) / "samples"
    assert {"mse", "mse_copy_first", "motion"} <= set(
        json.loads((i2v_samples / "step_000002.json").read_text())
    )


def test_inflation_is_the_image_model_and_fails_without_zero_init():
    from minisvd.models.unet import UNetConfig

    torch.manual_seed(0)
    image = randomize_(UNet(UNetConfig.tiny(in_channels=4, diffusers_resnet_eps=True)), seed=1, scale=0.1)
    video = inflate(image)
    assert check_inflation(image, video) <= 1e-5
    with pytest.raises(ValueError, match="differs from the image UNet"):
        check_inflation(image, inflate(image, zero_init=False))


def test_conv_in_growth_keeps_outputs():
    from minisvd.models.unet import UNetConfig

    unet = randomize_(UNet(UNetConfig.tiny(in_channels=4)), seed=2, scale=0.1)
    grown = grow_conv_in(unet, 4)
    assert grown.config.in_channels == 8 and check_grown(unet, grown) <= 1e-6
    with torch.no_grad():
        grown.conv_in.weight[:, 4:] += 0.1  # a non-zero new weight changes the output: the check sees it
    with pytest.raises(ValueError, match="conv_in"):
        check_grown(unet, grown)


def test_i2v_final_loads_in_diffusers_and_minisvd_alike(chain, caplog):
    from minisvd.pipelines import load_pipeline

    final = chain["i2v"]["final"]
    ref = load_diffusers_svd_quietly(final, caplog)
    ours = load_pipeline(final, match_diffusers=True)  # the eps the course trains with (diffusion.py)
    pixels = torch.rand(32, 32, 3, generator=torch.Generator().manual_seed(0)).mul(255).byte().numpy()
    image = PIL.Image.fromarray(pixels)  # diffusers' pipeline takes PIL images
    kw = dict(height=32, width=32, num_frames=8, num_inference_steps=3, fps=8, motion_bucket_id=127)
    want = ref(image, generator=torch.Generator().manual_seed(0), output_type="pt", **kw).frames[0]
    got = ours(image, generator=torch.Generator().manual_seed(0), **kw)
    assert got.shape == (8, 3, 32, 32) and max_abs_diff(got, want) <= 1e-4


def test_chain_errors_name_the_missing_stage(stage0, chain, tmp_path):
    import shutil

    from minisvd.train import TrainError

    bare = tmp_path / "bare"
    (bare / "final").mkdir(parents=True)
    with pytest.raises(TrainError, match="train vae"):
        train(ImageStage(), STEPS, tmp_path / "a", init=bare)
    shutil.copytree(stage0 / "stage0" / "final" / "vae", bare / "final" / "vae")
    with pytest.raises(TrainError, match="train clip"):
        train(ImageStage(), STEPS, tmp_path / "b", init=bare)
    with pytest.raises(TrainError, match="needs --init"):
        train(VideoStage(), STEPS, tmp_path / "c")
    for stage, wrong, needed in [(VideoStage(), "stage0", "image"), (HiresStage(), "image", "video"),
                                 (ImageToVideoStage(), "video", "hires")]:  # fmt: skip
        init = stage0 / wrong
        with pytest.raises(TrainError, match=f"train {needed} "):
            train(stage, STEPS, tmp_path / stage.name, init=init)


def test_text_to_video_samples_and_guidance_matters(chain):
    from minisvd.pipelines import load_text_to_video

    pipe = load_text_to_video(chain["video"]["final"])
    randomize_(pipe.unet, seed=3, scale=0.05)  # a trained-looking UNet whose text branch is not zero
    caption = chain["video"]["stage"].train_data.captions[0]
    kw = dict(num_frames=8, steps=3, generator=None)
    a = pipe([caption], guidance=1.0, **{**kw, "generator": torch.Generator().manual_seed(0)})
    b = pipe([caption], guidance=3.0, **{**kw, "generator": torch.Generator().manual_seed(0)})
    assert a.shape == (1, 8, 3, 32, 32) and 0 <= a.min() and a.max() <= 1
    assert max_abs_diff(a, b) > 1e-3
    image = pipe([caption, caption], num_frames=1, steps=3, generator=torch.Generator().manual_seed(0))
    assert image.shape == (2, 1, 3, 32, 32)


def test_direction_rules_keep_scenes_whose_first_frame_tells_the_direction():
    from minisvd.data import world_preset
    from minisvd.data.world import sample_scene, scene_rng
    from minisvd.train.stages.i2v import OBJECT_DIRECTIONS, direction_rule_indices, nearest_border_direction

    world = world_preset("tiny")
    assert direction_rule_indices(world, 5, "any") == list(range(5))
    assert (
        nearest_border_direction((2.0, 15.0), 32) == "right"
        and nearest_border_direction((15.0, 30.0), 32) == "up"
    )
    for rule in ("object", "away"):
        for i in direction_rule_indices(world, 20, rule):
            s = sample_scene(world, scene_rng(world.seed, i))
            own = (
                OBJECT_DIRECTIONS[s.object] if rule == "object" else nearest_border_direction(s.start, s.size)
            )
            assert s.camera == "static" and s.direction in ("static", own)
    with pytest.raises(ValueError, match="direction_rule"):
        direction_rule_indices(world, 1, "sideways")


def test_resume_finds_the_frozen_parts_from_the_recorded_init(stage0, tmp_path):
    from safetensors.torch import load_file

    config = STEPS.replace(steps=2, ckpt_every=1)
    train(ImageStage(num_images=16), config, tmp_path / "a", init=stage0 / "stage0")
    train(ImageStage(num_images=16), config.replace(steps=3), tmp_path / "a", resume=True)  # no --init
    train(ImageStage(num_images=16), config.replace(steps=3), tmp_path / "b", init=stage0 / "stage0")
    weights = "final/unet/diffusion_pytorch_model.safetensors"
    a, b = load_file(str(tmp_path / "a" / weights)), load_file(str(tmp_path / "b" / weights))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # bit-identical to a straight run
