"""Pick the device every notebook and script uses: cuda, then mps, then cpu."""

from __future__ import annotations

import os

import torch


def pick_device(preferred: str | None = None) -> torch.device:
    """Return `preferred` if given (or $MINISVD_DEVICE), else cuda, then mps, then cpu."""
    preferred = preferred or os.environ.get("MINISVD_DEVICE")
    if preferred:
        return torch.device(preferred)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")
