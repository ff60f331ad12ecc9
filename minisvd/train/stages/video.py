"""Stages II "video" and III "hires": text-to-video pretraining and its high-resolution fine-tune
(Blattmann et al. 2023, Sec. 3.3-3.4 and App. D).

Stage II inflates the stage-I image model (Sec. 3, following Video LDM): the UNet keeps the image weights in
its spatial layers and gets NEW temporal layers, initialised so that the video model computes exactly what
the image model computes on each frame:

    video = UNet(config)                              fresh temporal layers (seeded by the engine)
    zero_init_temporal_(video)                        every temporal branch returns its input (inflate.py)
    inflate_from_image_weights(video, image weights)  the spatial layers are the image model's
    check_inflation(image, video)                     the WHOLE UNet equals the image model on a batch
                                                      (max abs diff <= 1e-5), or the build raises

It then trains everything on 8-frame clips at 32 px (8 x 8 latents): `--data` a curate output folder
(`CuratedClips`, every window of every kept clip at strides 2/3/6 of its 24 fps, i.e. 12/8/4 fps, like
the toy world), else the toy world's clips (`ToyClips`, cached). Conditioning: the caption's CLIP text
token (10% dropout) and micro-conditioning (fps - 1, motion_bucket_id of the clip's motion score, 0).

Noise levels: clips keep their content to higher noise than single frames (8 correlated frames), so stage II
trains at P_mean 1.0 where stage I's images train at 0.0 (measured: lower denoising error over the sampler's
sigmas and lower error of the frame differences than at 0.4; docs/training.md). Stage III fine-tunes the
stage-II model at 64 px (16 x 16 latents) with the noise shifted up again, to 1.5: the same image at twice
the side keeps its content to higher noise, the paper's resolution shift (App. D: 0.7 at 320x576 -> 1.0 at
576x1024). Fewer steps and a smaller batch, as a step costs ~4x more.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from minisvd.models.inflate import inflate_from_image_weights, is_temporal_key, zero_init_temporal_
from minisvd.models.unet import UNet
from minisvd.train.stage import register_stage
from minisvd.train.stages.chain import load_unet
from minisvd.train.stages.diffusion import DiffusionStage, TensorDataset, encode_frames, text_contexts

INFLATION_TOL = 1e-5


# ----------------------------------------------------------------------------------------------------------
# Inflation


def inflate(image_unet: UNet, zero_init: bool = True) -> UNet:
    """The video UNet of an image UNet: its spatial weights, new temporal layers (zeroed if `zero_init`)."""
    video = UNet(image_unet.config)  # new temporal layers, torch's default init
    if zero_init:
        zero_init_temporal_(video)
    spatial = {k: v for k, v in image_unet.state_dict().items() if not is_temporal_key(k)}
    inflate_from_image_weights(video, spatial)
    return video.train().requires_grad_(True)


@torch.no_grad()
def check_inflation(
    image_unet: UNet, video_unet: UNet, num_frames: int = 8, tol: float = INFLATION_TOL
) -> float:
    """Max abs difference between the video UNet (temporal layers on) and the image UNet (bypassed, per
    frame) on a fixed random batch; raises ValueError above `tol`."""
    cfg = image_unet.config
    g = torch.Generator().manual_seed(0)
    B, h = 2, 8
    x = torch.randn(B, num_frames, cfg.in_channels, h, h, generator=g)
    t = torch.randn(B, generator=g)  # c_noise
    ctx = torch.randn(B, 1, cfg.cross_attention_dim, generator=g)
    ids = torch.rand(B, cfg.num_added_time_ids, generator=g) * torch.tensor([11.0, 255.0, 0.1])
    modes = image_unet.training, video_unet.training
    image_unet.eval(), video_unet.eval()
    a = image_unet(x, t, ctx, ids, image_only_indicator=torch.ones(B, num_frames))
    b = video_unet(x, t, ctx, ids)  # image_only_indicator 0: the temporal layers run
    image_unet.train(modes[0]), video_unet.train(modes[1])
    diff = (a - b).abs().max().item()
    if not diff <= tol:
        raise ValueError(
            f"the inflated video UNet differs from the image UNet by {diff:.2e} (> {tol:.0e}) at init: its "
            "temporal layers must start as identities (zero_init_temporal_) and its spatial weights be the "
            "image model's (inflate_from_image_weights)"
        )
    return diff


# ----------------------------------------------------------------------------------------------------------
# Data: clips -> latents, text tokens, fps, motion buckets


def curated_windows(clips, strides: tuple[int, ...] = (2, 3, 6), hop: int = 4) -> list[tuple[int, int, int]]:
    """(clip, start, stride) of every window of `clips.num_frames` frames, starts `hop` frames apart."""
    F = clips.num_frames
    out = []
    for c, (_, _, n, _) in enumerate(clips.clips):
        for s in strides:
            span = (F - 1) * s + 1
            out += [(c, start, s) for start in range(0, n - span + 1, hop)]
    return out


@register_stage
class VideoStage(DiffusionStage):
    """Stage II: text-to-video on 8-frame clips at 32 px, from the inflated stage-I model."""

    name = "video"
    previous = "image"
    uses_curated_data = True
    num_frames = 8
    num_clips = 1024  # toy world clips when there is no --data
    world = "tiny"
    P_mean, P_std = 1.0, 1.2  # measured (docs/training.md): clips need more noise than stage I's images
    extra_fields = ("num_clips", "world")
    schedule = dict(
        steps=400, batch_size=8, lr=5e-4, warmup_steps=20, ema_halflife_samples=1_000, sample_every=200,
        log_every=20, ckpt_every=100,
    )  # fmt: skip

    # ----- data -----------------------------------------------------------------------------------------
    def dataset(self, data: Path | None) -> Dataset:
        fz = self.require_setup()
        if data is not None:
            frames, captions, fps, motion = self.curated(Path(data))
        else:
            frames, captions, fps, motion = self.toy()
        from minisvd.data import motion_bucket_id

        self.train_data = TensorDataset(
            {
                "latents": frames,  # (N, F, C_z, h, w)
                "context": text_contexts(fz.text, fz.tokenizer, captions),  # (N, 1, D)
                "fps": torch.tensor(fps, dtype=torch.float32),
                "motion_bucket_id": motion_bucket_id(
                    torch.tensor(motion, dtype=torch.float64), self.size
                ).float(),
            },
            captions,
        )
        return self.train_data

    def toy(self):
        """The toy world's clips at `size`, rendered and scored once (ToyClips cache), encoded once."""
        from minisvd.data import ToyClips, world_preset
        from minisvd.train.stages.diffusion import cache_root

        fz = self.require_setup()
        world = world_preset(self.world, size=self.size, num_frames=self.num_frames)
        clips = ToyClips(world, self.num_clips, cache_dir=cache_root() / "toy")

        def build():
            z = encode_frames(fz.vae, clips.frames.flatten(0, 1), fz.scaling_factor)
            return {"latents": z.unflatten(0, clips.frames.shape[:2])}

        key = [self.world, self.size, self.num_frames, self.num_clips, world.seed]
        latents = self.cached_tensors("toy", key, build)["latents"]
        m = clips.meta
        return latents, [x["caption"] for x in m], [x["fps"] for x in m], [x["motion"] for x in m]

    def curated(self, folder: Path):
        """Every window of every kept clip of a curate output folder (`curated_windows`)."""
        from minisvd.data import CuratedClips

        fz = self.require_setup()
        clips = CuratedClips(folder, size=self.size, num_frames=self.num_frames, sample="first")
        windows = curated_windows(clips)
        if not windows:
            raise ValueError(f"no clip of {folder} is long enough for {self.num_frames} frames")
        build = lambda: {"latents": encode_frames(fz.vae, clips.frames, fz.scaling_factor)}  # noqa: E731
        per_frame = self.cached_tensors("curated", [str(folder.resolve()), clips.ids, self.size], build)[
            "latents"
        ]
        latents, captions, fps, motion = [], [], [], []
        for c, start, s in windows:
            row, first, n, scale = clips.clips[c]
            idx = first + start + np.arange(self.num_frames) * s
            latents.append(per_frame[torch.from_numpy(idx)])
            item = clips[c]  # caption and the clip's fps / motion at stride 1
            captions.append(item["caption"])
            fps.append(max(1, round(item["fps"] / s)))
            motion.append(item["motion"] * s)
        return torch.stack(latents), captions, fps, motion

    # ----- model ----------------------------------------------------------------------------------------
    def build_model(self, init: Path | None) -> nn.Module:
        """The stage-I UNet inflated (module doc); on --resume (init None) the same shapes, weights follow."""
        if init is None:
            return UNet(self.unet_config())
        image = load_unet(self.require_setup().final, self.name, diffusers_resnet_eps=True)
        if image.config.in_channels != self.unet_config().in_channels:
            raise ValueError(
                f"the UNet in {init} takes {image.config.in_channels} channels, not the latent's"
            )
        video = inflate(image)
        self.inflation_error = check_inflation(image, video)
        return video


@register_stage
class HiresStage(VideoStage):
    """Stage III: the stage-II model fine-tuned at 64 px (16 x 16 latents), noise shifted up."""

    name = "hires"
    previous = "video"
    size = 64
    num_clips = 256  # 2,048 frames at 64 px to encode once (~4x the cost of a 32 px frame)
    world = "small"
    P_mean, P_std = 1.5, 1.2  # stage II's 1.0 shifted up (module doc, docs/training.md)
    schedule = dict(
        steps=100, batch_size=4, lr=3e-4, warmup_steps=10, ema_halflife_samples=200, sample_every=100,
        log_every=10, ckpt_every=50,
    )  # fmt: skip

    def build_model(self, init: Path | None) -> nn.Module:
        """The stage-II UNet as it is (already a video model)."""
        if init is None:
            return UNet(self.unet_config())
        unet = load_unet(self.require_setup().final, self.name, diffusers_resnet_eps=True)
        expected = self.unet_config()
        if unet.config.to_diffusers() != expected.to_diffusers():
            raise ValueError(
                f"the UNet in {init} is not the chain's text-to-video UNet (run stage video first)"
            )
        return unet
