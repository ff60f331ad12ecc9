"""Training checkpoints: everything an exact resume needs, in safe files, written atomically.

    OUT/last/model.safetensors      the model's weights
    OUT/last/ema.safetensors        the EMA's weights (when the run keeps an EMA)
    OUT/last/optimizer.safetensors  AdamW's state: its tensors, and its other values as json in the metadata
                                    (keyed by parameter index, also for FSDP runs: fsdp.py)
    OUT/last/state.json             stage, step, data position, RNG states, the full TrainConfig, times, git

No pickle anywhere: a checkpoint can be opened without running anyone's code.

Atomic: the new checkpoint is written into OUT/last.tmp-<pid>/ and fsynced; then OUT/last becomes
OUT/last.old, the new folder becomes OUT/last, and last.old is deleted. A crash at any point leaves either
a complete `last/` or a complete `last.old/`, which `recover` turns back into `last/` on the next start.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from minisvd.train.stage import cpu_state_dict

LAST, OLD, TMP = "last", "last.old", "last.tmp-"


# ----------------------------------------------------------------------------------------------------------
# The optimizer's state dict, flattened: tensors to safetensors, the rest to json


def optimizer_to_files(state_dict: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """{"state": {i: {name: tensor | value}}, "param_groups": [...]} -> (tensors "state.i.name", json-able rest)."""
    tensors, values = {}, {}
    for i, per_param in state_dict["state"].items():
        for name, v in per_param.items():
            if torch.is_tensor(v):
                tensors[f"state.{i}.{name}"] = v.detach().to("cpu", copy=True).contiguous()
            else:
                values[f"state.{i}.{name}"] = v
    groups = [
        {k: list(v) if isinstance(v, tuple) else v for k, v in g.items()} for g in state_dict["param_groups"]
    ]
    return tensors, {"param_groups": groups, "values": values}


def optimizer_from_files(tensors: dict[str, torch.Tensor], structure: dict) -> dict:
    """The inverse of `optimizer_to_files`: a state dict `optimizer.load_state_dict` takes."""
    state: dict[int, dict] = {}
    for key, v in list(tensors.items()) + list(structure["values"].items()):
        _, i, name = key.split(".", 2)
        state.setdefault(int(i), {})[name] = v
    groups = [
        {k: tuple(v) if isinstance(v, list) and k != "params" else v for k, v in g.items()}  # betas
        for g in structure["param_groups"]
    ]
    return {"state": state, "param_groups": groups}


# ----------------------------------------------------------------------------------------------------------
# RNG states as json (lists of ints)


def rng_state() -> dict:
    """The global generators: torch CPU (and cuda), numpy, python `random`."""
    np_state = np.random.get_state()
    state = {
        "torch_cpu": torch.get_rng_state().tolist(),
        "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
        "python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["torch_cuda"] = [s.tolist() for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(torch.tensor(state["torch_cpu"], dtype=torch.uint8))
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), *rest))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "torch_cuda" in state and torch.cuda.is_available():
        cuda = state["torch_cuda"][: torch.cuda.device_count()]
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in cuda])


def git_commit() -> str | None:
    """The commit of the minisvd checkout, if it is one (provenance for state.json)."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5
        )
        return (out.stdout.strip() or None) if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


# ----------------------------------------------------------------------------------------------------------
# Writing and reading OUT/last/


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def recover(out_dir: Path) -> None:
    """Undo an interrupted save: bring back last.old if last is missing, drop stray tmp folders."""
    last, old = out_dir / LAST, out_dir / OLD
    if not last.exists() and (old / "state.json").exists():
        old.rename(last)  # crash between the two renames: the previous checkpoint is complete
    elif old.exists():
        shutil.rmtree(old)  # crash after the second rename: the new `last` is complete
    for tmp in out_dir.glob(TMP + "*"):
        shutil.rmtree(tmp, ignore_errors=True)  # crash while writing: never became `last`


def save_checkpoint(
    out_dir: Path,
    model: torch.nn.Module | dict,  # the model, or its (full) state dict
    ema: torch.nn.Module | dict | None,
    optimizer: torch.optim.Optimizer | dict,  # the optimizer, or its state dict keyed by parameter index
    state: dict,  # json-able: stage, step, data position, config, ...
) -> Path:
    """Write OUT/last/ atomically (module doc); adds the RNG states to `state`."""
    tmp = out_dir / f"{TMP}{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    as_dict = lambda m: m if isinstance(m, dict) else cpu_state_dict(m)  # noqa: E731
    save_file(as_dict(model), str(tmp / "model.safetensors"))
    if ema is not None:
        save_file(as_dict(ema), str(tmp / "ema.safetensors"))
    optim = optimizer if isinstance(optimizer, dict) else optimizer.state_dict()
    tensors, structure = optimizer_to_files(optim)
    save_file(tensors, str(tmp / "optimizer.safetensors"), metadata={"structure": json.dumps(structure)})
    (tmp / "state.json").write_text(json.dumps({**state, "rng": rng_state()}, indent=1) + "\n")
    for f in tmp.iterdir():
        _fsync(f)
    _fsync(tmp)

    last, old = out_dir / LAST, out_dir / OLD
    if last.exists():
        last.rename(old)
    tmp.rename(last)
    _fsync(out_dir)
    shutil.rmtree(old, ignore_errors=True)
    return last


def read_state(out_dir: Path) -> dict | None:
    """OUT/last/state.json after `recover`, or None when OUT holds no checkpoint."""
    path = out_dir / LAST / "state.json"
    return json.loads(path.read_text()) if path.exists() else None


def peek_state(out_dir: Path) -> dict | None:
    """Like `read_state`, without recovering first (read-only): falls back to last.old/state.json."""
    for name in (LAST, OLD):
        path = Path(out_dir) / name / "state.json"
        if path.exists():
            return json.loads(path.read_text())
    return None


def read_checkpoint(out_dir: Path) -> tuple[dict, dict, dict | None, dict]:
    """OUT/last/ as (state, model state dict, EMA state dict or None, optimizer state dict); nothing applied."""
    last = out_dir / LAST
    state = json.loads((last / "state.json").read_text())
    model = load_file(str(last / "model.safetensors"))
    ema = load_file(str(last / "ema.safetensors")) if (last / "ema.safetensors").exists() else None
    with safe_open(str(last / "optimizer.safetensors"), framework="pt") as f:
        structure = json.loads(f.metadata()["structure"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    return state, model, ema, optimizer_from_files(tensors, structure)


def load_checkpoint(
    out_dir: Path,
    model: torch.nn.Module,
    ema: torch.nn.Module | None,
    optimizer: torch.optim.Optimizer,
) -> dict:
    """Load OUT/last/ into the model, EMA and optimizer (in place); return its state (RNGs restored)."""
    from minisvd.pretrained.weights import load_state_dict_checked

    state, model_sd, ema_sd, optim_sd = read_checkpoint(out_dir)
    load_state_dict_checked(model, model_sd, what="model of the checkpoint")
    if ema is not None:
        if ema_sd is None:
            raise ValueError(f"{out_dir}/{LAST} holds no ema.safetensors: the run kept no EMA")
        load_state_dict_checked(ema, ema_sd, what="EMA of the checkpoint")
    optimizer.load_state_dict(optim_sd)
    set_rng_state(state["rng"])
    return state
