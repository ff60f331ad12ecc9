"""Stage I, "image": text-to-image pretraining of the spatial UNet (Blattmann et al. 2023, Sec. 3.2).

SVD starts from an image model (Stable Diffusion 2.1) and shows that this image pretraining is what makes
video training work (Sec. 3.2, Fig. 3a: image-pretrained beats random init). The course trains its own:

  data     `ToyFrames`: single frames of the toy world at 32 px, captioned without motion ("a cat on grass"),
           encoded once to 8 x 8 latents by the frozen VAE of stage 0 (`DiffusionStage` caches them)
  model    the chain's `UNetConfig.tiny` UNet (in = out = 4 latent channels, cross-attention width = CLIP's
           projection_dim, 3 added time ids, zero for images), run on 1-frame "videos" with
           `image_only_indicator` = 1: every temporal layer is bypassed exactly (alpha = 1), and frozen
           here (requires_grad False), so only the spatial image model trains
  context  the caption's projected CLIP text token (frozen CLIP), dropped to zero 10% of the time (App. D)
  loss     EDM's per sample, ln(sigma) ~ N(P_mean, P_std^2)

Noise levels. EDM's (-1.2, 1.2) is a starting point for 64 x 64 pixel images. For our 8 x 8 x 4 latents we
compared 300-step runs by the denoising error the sampler meets (x0-MSE averaged over the 16 Karras sigmas of
the sampler, held-out frames): P_mean -1.2: 0.284, -0.8: 0.222, -0.4: 0.197, 0.0: 0.184, +0.4: 0.178. The
whole gap is at high noise, where the caption decides the layout of the 256 latent numbers; below sigma ~ 1
all runs are equal. Above 0.0 the high-noise gain shrinks and the mid-noise error grows: (0.0, 1.2)
(docs/training.md, "Stages I-III and image-to-video").
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torch.utils.data import Dataset

from minisvd.conditioning.batch import Conditioning
from minisvd.models.inflate import is_temporal_key
from minisvd.models.unet import UNet
from minisvd.train.stage import register_stage
from minisvd.train.stages.diffusion import DiffusionStage, TensorDataset, encode_frames, text_contexts


@register_stage
class ImageStage(DiffusionStage):
    name = "image"
    num_frames = 1
    num_images = 4096  # ToyFrames items (distinct frames of distinct clips)
    world = "tiny"  # the toy world preset (32 px)
    P_mean, P_std = 0.0, 1.2  # see the module doc
    extra_fields = ("num_images", "world")
    schedule = dict(
        steps=500, batch_size=32, lr=1e-3, warmup_steps=20, ema_halflife_samples=2_000, sample_every=250,
        log_every=20, ckpt_every=250,
    )  # fmt: skip

    def dataset(self, data: Path | None) -> Dataset:
        from minisvd.data import ToyFrames, world_preset

        if data is not None:
            raise ValueError("stage image trains on the toy world's frames (ToyFrames); drop --data")
        fz = self.require_setup()
        world = world_preset(self.world, size=self.size)
        frames = ToyFrames(world, self.num_images, cache=True)

        def build():
            return {
                "latents": encode_frames(fz.vae, frames.images, fz.scaling_factor)[:, None]
            }  # (N, 1, C, h, w)

        key = [self.world, self.size, self.num_images, world.seed]
        latents = self.cached_tensors("frames", key, build)["latents"]
        captions = [m["caption"] for m in frames.meta]
        n = len(captions)
        self.train_data = TensorDataset(
            {
                "latents": latents,
                "context": text_contexts(fz.text, fz.tokenizer, captions),  # (N, 1, D)
                "fps": torch.ones(n),  # unused: images get all-zero added time ids (conditioning)
                "motion_bucket_id": torch.zeros(n),
            },
            captions,
        )
        return self.train_data

    def build_model(self, init: Path | None) -> nn.Module:
        """A new spatial UNet (the chain's config); temporal layers frozen: they are bypassed for images."""
        unet = UNet(self.unet_config())
        for name, p in unet.named_parameters():
            p.requires_grad_(not is_temporal_key(name))
        return unet

    def conditioning(self, batch: dict, generator: torch.Generator) -> Conditioning:
        """Text token (dropped with p_drop_context) and all-zero added time ids: images have no fps/motion."""
        ctx = batch["context"]
        ids = torch.zeros(len(ctx), 3, device=ctx.device)
        return Conditioning(context=ctx, added_time_ids=ids).dropout(self.p_drop_context, 0.0, generator)

    def image_only_indicator(self, x0: torch.Tensor) -> torch.Tensor:
        return torch.ones(x0.shape[:2], dtype=x0.dtype, device=x0.device)  # (B, 1): alpha = 1, image model

    def sample_prompts(self) -> list[dict]:
        data = self.train_data
        if data is None:
            return []
        seen, prompts = set(), []
        for c in data.captions:  # the first 8 distinct captions
            if c not in seen:
                seen.add(c)
                prompts.append({"caption": c, "fps": 1, "motion_bucket_id": 0})
            if len(prompts) == 8:
                break
        return prompts
