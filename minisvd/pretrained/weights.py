"""Safe weight files and state-dict loading that names every problem.

Only safetensors, or `torch.load(weights_only=True)` for .bin/.pt/.ckpt files: a pickle that would run
code is refused. Loading compares keys and shapes first and raises one ValueError that lists missing,
unexpected and mis-shaped keys by name.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import torch
from torch import nn


def load_file(path: str | os.PathLike, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Read a state dict from .safetensors (preferred) or a weights-only torch file."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"weight file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file as st_load

        try:
            return st_load(str(path), device=str(device))
        except SafetensorError as e:  # safetensors names no file
            raise ValueError(f"{path} is truncated or corrupt ({e}): download it again") from None
    try:
        sd = torch.load(path, map_location=device, weights_only=True)
    except (EOFError, RuntimeError) as e:
        if isinstance(e, RuntimeError) and "PytorchStreamReader" not in str(e):
            raise
        # a cut zip archive or pickle stream
        raise ValueError(f"{path} is truncated or corrupt ({type(e).__name__}): download it again") from None
    except pickle.UnpicklingError as e:
        raise ValueError(
            f"{path} is a pickle that holds more than tensors; minisvd refuses to unpickle it because that can run "
            f"arbitrary code. Convert it to .safetensors with code you trust. ({str(e).splitlines()[0]})"
        ) from None
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict):
        raise ValueError(f"{path} does not hold a state dict (got {type(sd).__name__})")
    return sd


def check_state_dict(
    model: nn.Module, state_dict: dict[str, torch.Tensor]
) -> tuple[list[str], list[str], list[str]]:
    """Return (missing, unexpected, mis-shaped) key descriptions of `state_dict` against `model`."""
    expected = model.state_dict()
    missing = sorted(k for k in expected if k not in state_dict)
    unexpected = sorted(k for k in state_dict if k not in expected)
    misshaped = sorted(
        f"{k}: expected {tuple(expected[k].shape)}, got {tuple(state_dict[k].shape)}"
        for k in expected
        if k in state_dict and tuple(expected[k].shape) != tuple(state_dict[k].shape)
    )
    return missing, unexpected, misshaped


def format_problems(missing: list[str], unexpected: list[str], misshaped: list[str], limit: int = 20) -> str:
    """One readable message listing the problems (first `limit` of each kind)."""
    parts = []
    for name, keys in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped)):
        if keys:
            shown = "\n    ".join(keys[:limit])
            more = f"\n    ... and {len(keys) - limit} more" if len(keys) > limit else ""
            parts.append(f"  {len(keys)} {name} key(s):\n    {shown}{more}")
    return "\n".join(parts)


def require_fit(
    model: nn.Module,
    state_dict: dict[str, torch.Tensor],
    what: str = "model",
    source=None,
    strict: bool = True,
) -> None:
    """Raise one ValueError naming every missing, unexpected and mis-shaped key (missing/unexpected only if strict)."""
    missing, unexpected, misshaped = check_state_dict(model, state_dict)
    if misshaped or (strict and (missing or unexpected)):
        where = f"the weights in {source}" if source else "the weights"
        raise ValueError(
            f"{where} do not fit this {what} (is the config/size preset right?):\n"
            + format_problems(missing, unexpected, misshaped)
        )


def load_state_dict_checked(
    model: nn.Module, state_dict: dict[str, torch.Tensor], what: str = "model", strict: bool = True
) -> nn.Module:
    """`model.load_state_dict` that first reports missing, unexpected and mis-shaped keys by name."""
    require_fit(model, state_dict, what, strict=strict)
    model.load_state_dict(state_dict, strict=strict)
    return model


def build_checked(model_cls, config, state_dict: dict[str, torch.Tensor], what: str, source) -> nn.Module:
    """`model_cls(config)` holding `state_dict` (float32, eval, frozen): built on the meta device (no random
    init), checked key by key, then given the tensors."""
    with torch.device("meta"):
        model = model_cls(config)
    require_fit(model, state_dict, what, source)
    model.load_state_dict(
        {k: v.float() if v.is_floating_point() else v for k, v in state_dict.items()},
        strict=True,
        assign=True,
    )
    leftover = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if leftover:  # a buffer built in __init__ and not saved: build it for real instead
        model = model_cls(config)
        model.load_state_dict(state_dict, strict=True)
    return model.eval().requires_grad_(False)
