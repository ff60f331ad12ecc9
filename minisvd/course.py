"""Helpers of the notebook course: how long to train, and checking a student's exercise answers."""

from __future__ import annotations

import os


def fast_mode() -> bool:
    """True when notebooks run as tests (`MINISVD_FAST=1`, set by the repo's conftest.py): train briefly."""
    return os.environ.get("MINISVD_FAST", "0") not in ("", "0", "false", "False")


def shipped_checkpoint(stage: str, preset: str = "tiny"):
    """The course's trained `final/` folder of `stage` (vae, clip, image, video, hires, i2v), shipped in the
    repository's checkpoints/<preset>/<stage>/ (made by scripts/train_checkpoints.py; MANIFEST.json there
    records the command, commit, device and time). Notebooks load these to show quality without the wait.

    `MINISVD_SHIPPED=DIR` replaces the shipped folders by your own runs: DIR/<stage>/final (a run folder,
    e.g. the `runs/` of `python -m minisvd demo --out D`) or DIR/<stage> (a final/ folder itself).
    The shipped folders are stored small (`minisvd.train.shipped`) and unpacked once into the cache."""
    from pathlib import Path

    override = os.environ.get("MINISVD_SHIPPED")
    if override:
        run = Path(override) / stage
        folder = run / "final" if (run / "final").is_dir() else run
        if not folder.is_dir():
            raise FileNotFoundError(f"MINISVD_SHIPPED={override}: no {run}/final or {run} folder")
        return folder
    from minisvd.train.shipped import unpack

    # stored small (own parts only, fp16); unpacked once to a complete fp32 final/ folder in the cache
    root = Path(__file__).resolve().parents[1] / "checkpoints" / preset
    if not (root / stage).is_dir():
        raise FileNotFoundError(
            f"no shipped checkpoint {root / stage}: run from a clone of the repository (pip install -e .), or train "
            f"it with `python scripts/train_checkpoints.py`"
        )
    return unpack(root, stage)
