"""Micro-conditioning of SVD: (fps_id, motion_bucket_id, cond_aug) per video (Blattmann et al. 2023, Sec. 4.1, App. D).

The UNet embeds each of the three numbers sinusoidally (like the noise level), concatenates the three
embeddings and adds them through an MLP to the time embedding (`UNet.add_embedding`). Conventions of the
released models, followed by the original code and diffusers:

  fps_id            = fps - 1        (the frame rate the clip was sampled at, minus one)
  motion_bucket_id  = 0 .. 255       (more motion when higher; 127 by default)
  cond_aug          = the noise strength of the conditioning frame's augmentation (see frame.py)

The unconditional branch of classifier-free guidance keeps the same ids (only the CLIP token and the frame
latent are zeroed), so these are never dropped.
"""

from __future__ import annotations

import torch


def fps_id(fps: float | torch.Tensor) -> float | torch.Tensor:
    """The id the UNet sees for a frame rate: fps - 1 (SVD's released models)."""
    return fps - 1


def micro_conditioning(
    fps: float | torch.Tensor,  # frames per second, scalar or (B,)
    motion_bucket_id: float | torch.Tensor,  # scalar or (B,)
    cond_aug: float | torch.Tensor,  # scalar or (B,)
    batch_size: int | None = None,  # B when every input is a scalar (default 1)
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """added_time_ids (B, 3) = [fps - 1, motion_bucket_id, cond_aug] per video."""
    cols = [
        torch.as_tensor(v, dtype=torch.float64).reshape(-1) for v in (fps_id(fps), motion_bucket_id, cond_aug)
    ]
    B = batch_size or max(c.numel() for c in cols)
    for name, c in zip(("fps", "motion_bucket_id", "cond_aug"), cols):
        if c.numel() not in (1, B):
            raise ValueError(f"{name} has {c.numel()} values, expected 1 or the batch size {B}")
    return torch.stack([c.expand(B) for c in cols], dim=1).to(device=device, dtype=dtype)  # (B, 3)
