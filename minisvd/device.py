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


def fast_mode() -> bool:
    """True when notebooks run as tests (`MINISVD_FAST=1`, set by the repo's conftest.py)."""
    return os.environ.get("MINISVD_FAST", "0") not in ("", "0", "false", "False")
