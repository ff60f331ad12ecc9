"""Helpers of the notebook course: how long to train, and checking a student's exercise answers."""

from __future__ import annotations

import os


def fast_mode() -> bool:
    """True when notebooks run as tests (`MINISVD_FAST=1`, set by the repo's conftest.py): train briefly."""
    return os.environ.get("MINISVD_FAST", "0") not in ("", "0", "false", "False")
