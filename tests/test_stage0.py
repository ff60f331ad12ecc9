"""Stage 0 (minisvd/train/stages/vae.py, clip.py): the tiny VideoVAE and CLIP, trained by the engine.

Short runs through `minisvd.train.train` (the CLI's engine), one thread: the VAE stage through both of its
phases, the CLIP stage with --init the VAE run; the folders they write load back, the scaling factor is
measured, the per-sample CLIP loss is CLIPModel's, and the curation's CLIP scorer works on our CLIP."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from minisvd.train import TrainError, train
from minisvd.train.stages.clip import (
    ClipStage,
    clip_loss_per_sample,
    make_tokenizer,
    pixels_of,
    world_captions,
)
from minisvd.train.stages.vae import VAEStage

VAE_STEPS = 8  # batch 2: 5 steps of images (10 clips), then 3 of the temporal phase


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def small_vae_stage() -> VAEStage:
    stage = VAEStage("tiny", image_samples=10)
    stage.num_clips, stage.scale_frames, stage.eval_clips = 64, 256, 4  # less to render and evaluate
    return stage


def small_clip_stage() -> ClipStage:
    stage = ClipStage("tiny")
    stage.num_frames, stage.eval_frames = 512, 72
    return stage


@pytest.fixture(scope="module")
def vae_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("stage0") / "vae"
    torch.set_num_threads(1)
    stage = small_vae_stage()
    config = stage.default_config(steps=VAE_STEPS, batch_size=2, warmup_steps=2, log_every=1, device="cpu")
    summary = train(stage, config, out)
    return out, summary


@pytest.fixture(scope="module")
def clip_run(vae_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("stage0") / "clip"
    torch.set_num_threads(1)
    stage = small_clip_stage()
    config = stage.default_config(steps=40, log_every=5, device="cpu")
    summary = train(stage, config, out, init=vae_run[0])
    return out, summary


# ----------------------------------------------------------------------------------------------------------
# vae


def test_vae_loss_decreases_on_a_fixed_batch():
    torch.manual_seed(0)
    stage = VAEStage("tiny")
    data = stage.dataset(None)
    batch = stage.collate([data[i] for i in range(2)])  # (2, 8, 3, 32, 32)
    model = stage.build_model(None)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    losses = []
    for _ in range(12):
        loss, extras = stage.loss(model, batch, torch.Generator().manual_seed(0))
        assert loss.shape == (2,) and torch.isfinite(loss).all() and set(extras) == {"rec_mse", "video_phase"}
        opt.zero_grad()
        loss.mean().backward()
        opt.step()
        losses.append(loss.mean().item())
    assert losses[-1] < 0.7 * losses[0], losses


def test_vae_run_trains_both_phases_and_loads_back(vae_run):
    from minisvd.models.vae import VideoVAE
    from minisvd.pretrained.load import load_model_folder

    out, summary = vae_run
    assert math.isfinite(summary["final_loss"])
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["video_phase"] for r in lines] == [0.0] * 5 + [1.0] * 3  # 10 clips of images, then video
    vae = load_model_folder(out / "final" / "vae", VideoVAE)
    assert vae.config.block_out_channels == (32, 32, 64) and vae.config.downsample_factor == 4
    report = json.loads((out / "final" / "vae_report.json").read_text())
    assert report["temporal_trained"] and report["clips_trained"] == 2 * VAE_STEPS
    assert report["scaling_factor"] == vae.config.scaling_factor
    for key in ("psnr_db", "psnr_64px_db", "flicker", "flicker_with_latent_error"):
        assert math.isfinite(report[key])


def test_vae_scaling_factor_is_measured(vae_run):
    """Not SD's 0.18215 but 1 / std of our latents: scaled latents of training frames have std ~1 (also
    on training frames other than the ones it was measured on)."""
    from minisvd.models.vae import VideoVAE
    from minisvd.pretrained.load import load_model_folder

    vae = load_model_folder(vae_run[0] / "final" / "vae", VideoVAE)
    scale = vae.config.scaling_factor
    assert abs(scale - 0.18215) > 1e-3
    data = small_vae_stage().dataset(None)
    for clips in (range(0, 32), range(32, 64)):  # the first are those it was measured on
        frames = torch.cat([data[i]["frames"] for i in clips])
        with torch.no_grad():
            std = (vae.encode(frames).mode() * scale).std().item()
        assert 0.8 < std < 1.2, (clips, std)


# ----------------------------------------------------------------------------------------------------------
# clip


def test_per_sample_clip_loss_averages_to_clipmodels_loss():
    from transformers import CLIPModel

    from minisvd.data import ToyFrames, world_preset
    from minisvd.models.clip import tiny_clip_config

    torch.manual_seed(0)
    tok = make_tokenizer(world_captions(world_preset("tiny")))
    model = CLIPModel(tiny_clip_config(tok)).eval()
    frames = ToyFrames(world_preset("tiny"), 6)
    items = [frames[i] for i in range(6)]
    enc = tok([x["caption"] for x in items], padding="max_length", truncation=True, return_tensors="pt")
    images = torch.stack([x["image"] for x in items])
    with torch.no_grad():
        out = model(**enc, pixel_values=pixels_of(images, 224), return_loss=True)
    per_sample = clip_loss_per_sample(out.logits_per_image)
    assert per_sample.shape == (6,)
    assert abs(per_sample.mean().item() - out.loss.item()) < 1e-5


def test_clip_pixels_fast_path_equals_clip_pixels():
    from minisvd.conditioning.clip_image import clip_pixels

    g = torch.Generator().manual_seed(0)
    for shape in [(3, 3, 32, 32), (2, 3, 64, 64), (2, 3, 40, 56)]:
        x = torch.rand(shape, generator=g) * 2 - 1
        diff = (pixels_of(x, 224) - clip_pixels((x + 1) / 2, size=224)).abs().max().item()
        assert diff < 1e-4, (shape, diff)


def test_tokenizer_knows_every_word_of_the_world():
    from minisvd.data import make_clip, make_frame, world_preset

    world = world_preset("tiny")
    tok = make_tokenizer(world_captions(world))
    comma = tok.convert_tokens_to_ids("<unk>")
    for i in range(200):
        for caption in (make_clip(world, i).caption, make_frame(world, i).caption):
            ids = tok(caption, truncation=False).input_ids
            assert len(ids) <= tok.model_max_length, caption  # nothing is cut off
            words = caption.replace(",", " ").split()
            assert len([t for t in ids if t != comma]) == len(words) + 2, caption  # <unk> only for commas


def test_clip_loss_decreases_on_a_fixed_batch():
    torch.manual_seed(0)
    stage = small_clip_stage()
    stage.num_frames = 16
    data = stage.dataset(None)
    batch = stage.collate([data[i] for i in range(16)])
    model = stage.build_model(None)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    losses = []
    for _ in range(10):
        loss, extras = stage.loss(model, batch, torch.Generator().manual_seed(0))
        assert loss.shape == (16,) and torch.isfinite(loss).all()
        opt.zero_grad()
        loss.mean().backward()
        opt.step()
        losses.append(loss.mean().item())
    assert losses[-1] < 0.7 * losses[0], losses


def test_clip_run_writes_a_loadable_chain_folder(clip_run, vae_run):
    from transformers import CLIPModel, CLIPProcessor

    from minisvd.models.clip import load_clip_folder
    from minisvd.models.unet import UNetConfig

    out, summary = clip_run
    final = out / "final"
    model, tok = load_clip_folder(final / "clip")
    assert model.config.projection_dim == UNetConfig.tiny().cross_attention_dim
    CLIPModel.from_pretrained(final / "clip", local_files_only=True)
    CLIPProcessor.from_pretrained(final / "clip", local_files_only=True)
    vae_files = sorted(p.name for p in (vae_run[0] / "final" / "vae").iterdir())
    assert sorted(p.name for p in (final / "vae").iterdir()) == vae_files  # carried forward
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert all(math.isfinite(r["loss"]) for r in lines) and lines[-1]["loss"] < lines[0]["loss"]
    report = json.loads((final / "clip_report.json").read_text())
    assert report["retrieval_top1"] > 5 * report["chance"], report  # 36 captions: chance 2.8%


def test_curation_scorer_prefers_the_right_caption(clip_run):
    """With our CLIP folder the curation's CLIP score is real: each held-out frame scores higher with its
    own caption than with a caption naming another object on another background."""
    from minisvd.curation.clip_scores import ClipScorer, make_scorer
    from minisvd.data import make_frame, world_preset
    from minisvd.train.stages.clip import HELD_OUT

    scorer = make_scorer(clip_run[0] / "final" / "clip")
    assert isinstance(scorer, ClipScorer)
    world = world_preset("tiny")
    objects, backgrounds = list(world.objects), list(world.backgrounds)
    wins = 0
    for i in range(12):
        f = make_frame(world, HELD_OUT + 500 + i)
        rgb = np.ascontiguousarray(f.image.permute(1, 2, 0).numpy())  # (H, W, 3) uint8
        other_obj = objects[(objects.index(f.object) + 1) % len(objects)]
        other_bg = backgrounds[(backgrounds.index(f.background) + 3) % len(backgrounds)]
        wrong = make_frame_caption(other_obj, other_bg)
        right = scorer.score([rgb], f.caption)["clip_score"]
        wins += right > scorer.score([rgb], wrong)["clip_score"]
    assert wins == 12, wins


def make_frame_caption(obj: str, background: str) -> str:
    from minisvd.data.photos import BACKGROUNDS
    from minisvd.data.world import article

    return f"{article(obj)} {obj} {BACKGROUNDS[background].place}"


def test_clip_init_without_vae_names_the_stage_to_run(tmp_path):
    (tmp_path / "empty" / "final").mkdir(parents=True)
    stage = small_clip_stage()
    with pytest.raises(TrainError, match=r"needs vae/.*python -m minisvd train vae --out DIR"):
        train(stage, stage.default_config(steps=1, device="cpu"), tmp_path / "out", init=tmp_path / "empty")
    assert not (tmp_path / "out").exists()  # nothing written
