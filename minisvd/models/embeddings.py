"""Sinusoidal embeddings of scalars (noise level, micro-conditioning ids, frame index) and their MLPs.

SVD embeds three kinds of scalars the same way (Blattmann et al. 2023, Sec. 3 and App. D):
the noise level c_noise, the added-time ids (fps_id, motion_bucket_id, cond_aug) and, inside every
spatio-temporal transformer, the frame position 0..F-1.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def sinusoidal_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Transformer-style embedding of scalars t (N,) -> (N, dim) in [cos | sin] order (Vaswani et al. 2017).

    Frequencies are max_period^(-k / (dim/2)) for k = 0..dim/2-1. Always computed in float32 (as the
    original SVD code does), whatever dtype the model runs in.
    """
    if t.ndim != 1:
        raise ValueError(f"sinusoidal_embedding expects a 1-D tensor of scalars, got shape {tuple(t.shape)}")
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None, :]  # (N, half)
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)  # (N, 2*half)
    if dim % 2:
        emb = nn.functional.pad(emb, (0, 1))
    return emb


class TimestepEmbedding(nn.Module):
    """Two-layer MLP on a sinusoidal embedding: linear -> SiLU -> linear."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int | None = None):
        super().__init__()
        self.linear_1 = nn.Linear(in_dim, hidden_dim)
        self.act = nn.SiLU()
        self.linear_2 = nn.Linear(hidden_dim, out_dim or hidden_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(self.act(self.linear_1(x)))
