"""Exponential moving average of the weights, with EDM's half-life and ramp-up (see config.py's doc).

Karras et al. 2022 (EDM), `training/training_loop.py`: after each optimizer step
    halflife = min(halflife_samples, rampup * samples_seen)      (ramp-up: short runs still move)
    beta     = 0.5 ** (batch_size / halflife)
    ema      = beta * ema + (1 - beta) * weights
SVD samples with the EMA weights, and so do our periodic samples and final models.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


def ema_beta(
    samples_seen: int,  # training samples the weights have seen, this step's batch included
    batch_size: int,  # global batch of the step
    halflife_samples: float,  # the half-life once ramped up
    rampup: float | None = 0.05,  # cap the half-life at rampup * samples_seen; None: no ramp-up
) -> float:
    """The EMA decay of one step: the EMA loses half of an old weight every `halflife` samples."""
    halflife = halflife_samples
    if rampup is not None:
        halflife = min(halflife, rampup * samples_seen)
    return 0.5 ** (batch_size / max(halflife, 1e-8))


class EMA:
    """A frozen copy of the model whose weights trail the model's: `ema.update(model, beta)` each step."""

    def __init__(self, model: nn.Module):
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module, beta: float) -> None:
        for p_ema, p in zip(self.model.parameters(), model.parameters()):
            p_ema.lerp_(p.detach(), 1.0 - beta)  # p_ema = beta p_ema + (1 - beta) p
        for b_ema, b in zip(self.model.buffers(), model.buffers()):
            b_ema.copy_(b)  # buffers (e.g. running stats) are copied, not averaged

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.model.state_dict()

    def load_state_dict(self, state_dict: dict[str, torch.Tensor]) -> None:
        from minisvd.pretrained.weights import load_state_dict_checked

        load_state_dict_checked(self.model, state_dict, what="EMA model")
