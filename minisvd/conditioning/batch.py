"""Everything the SVD UNet is conditioned on, as one batched object used by sampling and training alike.

  context          (B, L, D)       CLIP embedding: the first frame's image token (image-to-video, L = 1), or
                                   a caption's text tokens (the text-to-image/video stages of the course)
  cond_latent      (B, C_z, h, w)  the noise-augmented conditioning frame's latent (image-to-video only),
                                   repeated over frames and concatenated to the noisy latent on channels
  added_time_ids   (B, 3)          micro-conditioning (fps_id, motion_bucket_id, cond_aug)

Classifier-free guidance (Ho & Salimans 2022) needs an unconditional version: SVD zeroes the CLIP token and
the frame latent and keeps the micro-conditioning (`Conditioning.unconditional`). Training learns that
version by *conditioning dropout*: each video independently loses its context and/or its frame latent with
some probability (`Conditioning.dropout`; the paper does not give the rates, the training stages choose).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

import torch
from einops import repeat
from torch import nn


@dataclass
class Conditioning:
    context: torch.Tensor  # (B, L, D)
    added_time_ids: torch.Tensor  # (B, 3)
    cond_latent: torch.Tensor | None = None  # (B, C_z, h, w), None for text-to-image/video

    def __post_init__(self):
        B = self.context.shape[0]
        if self.added_time_ids.shape[0] != B or (
            self.cond_latent is not None and self.cond_latent.shape[0] != B
        ):
            shapes = {k: None if v is None else tuple(v.shape) for k, v in vars(self).items()}
            raise ValueError(f"conditioning inputs disagree on the batch size: {shapes}")

    def __len__(self) -> int:
        return self.context.shape[0]

    def to(self, device=None, dtype: torch.dtype | None = None) -> Conditioning:
        def move(t):
            return None if t is None else t.to(device=device, dtype=dtype if t.is_floating_point() else None)

        return Conditioning(move(self.context), move(self.added_time_ids), move(self.cond_latent))

    def unconditional(self) -> Conditioning:
        """SVD's unconditional branch: zero CLIP token(s), zero frame latent, the same micro-conditioning."""
        z = None if self.cond_latent is None else torch.zeros_like(self.cond_latent)
        return replace(self, context=torch.zeros_like(self.context), cond_latent=z)

    def dropout(
        self,
        p_context: float,  # probability that a video loses its CLIP/text context
        p_latent: float,  # probability that a video loses its conditioning-frame latent
        generator: torch.Generator | None = None,
    ) -> Conditioning:
        """Conditioning dropout for classifier-free guidance: per video, zero the context and/or the latent."""
        B, dev = len(self), self.context.device
        u = torch.rand(2, B, generator=generator, device=generator.device if generator else "cpu").to(dev)
        keep_c = (u[0] >= p_context).to(self.context.dtype)  # (B,)
        context = self.context * keep_c[:, None, None]
        latent = self.cond_latent
        if latent is not None:
            keep_l = (u[1] >= p_latent).to(latent.dtype)
            latent = latent * keep_l[:, None, None, None]
        return replace(self, context=context, cond_latent=latent)

    def unet_inputs(self, num_frames: int) -> dict[str, torch.Tensor | None]:
        """Keyword inputs of `conditioned_network`: the frame latent repeated over F frames, (B, F, C_z, h, w)."""
        latent = (
            None
            if self.cond_latent is None
            else repeat(self.cond_latent, "b c h w -> b f c h w", f=num_frames)
        )
        return {"cond_latent": latent, "context": self.context, "added_time_ids": self.added_time_ids}


def conditioned_network(unet: nn.Module, dtype: torch.dtype | None = None) -> Callable[..., torch.Tensor]:
    """F_theta(c_in x; c_noise, conditioning) for `minisvd.edm.denoise` / `edm_loss`.

    Concatenates the frame latent (if any) to the scaled noisy latent on channels, runs the UNet in `dtype`
    (default: the UNet's) and returns float32, so the EDM arithmetic around it stays in float32.
    """
    dtype = dtype or next(unet.parameters()).dtype

    def F(x_in, c_noise, context, added_time_ids, cond_latent=None, image_only_indicator=None):
        sample = x_in.to(dtype)  # (B, F, C_z, h, w)
        if cond_latent is not None:
            sample = torch.cat([sample, cond_latent.to(dtype)], dim=2)  # (B, F, 2 C_z, h, w)
        out = unet(sample, c_noise.float(), context.to(dtype), added_time_ids.to(dtype), image_only_indicator)
        return out.float()

    return F
