"""Shared test helpers: fixture paths, tolerance checks, tiny random configs."""

from __future__ import annotations

import json
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
FIXTURE = REPO / "tests" / "fixtures" / "svd_tiny_original"


def fixture_meta() -> dict:
    return json.loads((FIXTURE / "README.json").read_text())


def fixture_tensors(name: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(FIXTURE / name))


def max_abs_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, f"shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}"
    return (a.double() - b.double()).abs().max().item()


def randomize_(module: torch.nn.Module, seed: int = 0, scale: float = 0.2) -> torch.nn.Module:
    """Fill every parameter with random values (zero-init layers and mix factors too), so tests see them all."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in sorted(module.named_parameters()):
            p.copy_(torch.randn(p.shape, generator=g) * scale)
    return module


def load_diffusers_svd_quietly(folder, caplog):
    """diffusers' `StableVideoDiffusionPipeline.from_pretrained(folder)`, asserting that it warns and logs
    nothing (torchvision's absence aside), with its progress bar off."""
    import logging
    import warnings

    from diffusers import StableVideoDiffusionPipeline

    with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.WARNING):
        warnings.simplefilter("always")
        pipe = StableVideoDiffusionPipeline.from_pretrained(folder)
    noisy = [str(w.message) for w in caught if "torchvision" not in str(w.message)]
    logged = [
        r.getMessage()
        for r in caplog.records
        if r.levelno >= logging.WARNING and "torchvision" not in r.getMessage()
    ]
    assert not noisy and not logged, (noisy, logged)
    pipe.set_progress_bar_config(disable=True)
    return pipe
