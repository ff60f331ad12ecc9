"""The contract between the training engine and a training stage, and the registry the CLI reads.

A *stage* is one thing the course trains: the toy denoiser (stages/toy.py), the tiny VideoVAE and CLIP
(stage 0), text-to-image (stage I), text-to-video (II), the high-resolution fine-tune (III), image-to-video.
The engine (engine.py) owns everything that is the same for all of them: optimizer, warm-up, clipping, EMA,
mixed precision, data order, DDP, checkpoints, exact resume, logging. A stage only says

    what to train      build_model(init)                  -> nn.Module (every parameter with requires_grad
                                                             trains; freeze the rest in build_model)
    on what            dataset(data)                      -> map-style Dataset; dataset[i] must depend on i only
                       collate(items)                     -> one batch (default: torch's default_collate)
    with which loss    loss(model, batch, generator)      -> per-sample loss (B,), or ((B,), {name: (B,)})
    what to show       sample(model, out_dir, step)       -> optional, periodic samples (EMA weights)
    what to keep       save_final(model, ema, out_dir)    -> the trained model (e.g. a diffusers folder)

Rules that keep runs exact (resume, DDP) and fast:
  - draw every random number of `loss` from `generator` (a torch.Generator on the training device, seeded
    by the engine from (seed, step, micro-batch)); random augmentation belongs in `loss`, not in the dataset;
  - call `model(...)` (its forward): under DDP `model` is the DistributedDataParallel wrapper, whose
    forward is what synchronises the gradients;
  - return the loss per sample, unreduced: the engine averages it over the global batch and bins it by
    noise level when the extras hold `"sigma"` (B,); other (B,) extras are logged as their means.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset, default_collate

LossOutput = torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]]


class Stage:
    """Base class of a training stage: subclass it, set `name`, implement the three abstract methods."""

    name: str = "stage"  # registry key and CLI name; recorded in state.json
    find_unused_parameters: bool = False  # DDP: True when the loss leaves some trainable parameters unused

    def __init__(self, preset: str = "tiny"):
        self.preset = preset  # "tiny" | "small" | ...: the size of the model build_model makes

    # ----- required -----------------------------------------------------------------------------------
    def build_model(self, init: Path | None) -> nn.Module:
        """The trainable module, on the CPU in float32; from `init` (weights of an earlier stage) if given.
        Raise FileNotFoundError or ValueError (e.g. from `load_init`) for weights that are missing or do
        not fit: the engine shows them as one error."""
        raise NotImplementedError

    def dataset(self, data: Path | None) -> Dataset:
        """The training set, map-style (`len` and `[i]`), item i a pure function of i."""
        raise NotImplementedError

    def loss(self, model: nn.Module, batch: Any, generator: torch.Generator) -> LossOutput:
        """The loss of each sample of `batch` (already on the device), (B,), optionally with a dict of (B,)
        extras such as `{"sigma": sigma}`. Runs under autocast when precision is bf16."""
        raise NotImplementedError

    # ----- optional -----------------------------------------------------------------------------------
    def setup(self, init: Path | None) -> None:
        """Load what the stage uses but does not train (e.g. a frozen VAE and CLIP) from `init`. Called
        before `dataset` and `build_model`, also on --resume (with the run's recorded init). Default: nothing."""

    def default_config(self, **overrides):
        """This stage's schedule for its preset (steps, batch, lr, EMA, ...): the TrainConfig that
        `python -m minisvd train STAGE` and the demo use when no flag says otherwise. Stages override it
        with what they measured to learn fastest per CPU-second; the default is the generic preset."""
        from minisvd.train.config import preset_config

        return preset_config(self.preset, **overrides)

    def fields(self) -> dict:
        """The stage's own settings (json-able): recorded in state.json, and given back to the stage's
        constructor on --resume. Default: none."""
        return {}

    def fsdp_units(self, model: nn.Module) -> list[nn.Module]:
        """The modules FSDP shards one by one (fsdp.py): each gathers its full weights only while it runs.
        Default: every child module with parameters (a ModuleList's entries one by one)."""
        from minisvd.train.fsdp import default_units

        return default_units(model)

    def collate(self, items: list) -> Any:
        """Items of `dataset` -> one batch; tensors, dicts, lists and objects with `.to(device)` are moved."""
        return default_collate(items)

    def sample(self, model: nn.Module, out_dir: Path, step: int) -> Path | None:
        """Write samples of `model` (the EMA if there is one; in eval mode, no grad) into `out_dir`.
        Use a fixed-seed generator so samples of different steps are comparable. Default: none."""
        return None

    def save_final(self, model: nn.Module, ema: nn.Module | None, out_dir: Path) -> Path:
        """Keep the trained model in `out_dir` (OUT/final/). Default: model.safetensors (the EMA weights if
        any, else the model's, which `load_init` reads back) and raw.safetensors (the model's)."""
        from safetensors.torch import save_file

        out_dir.mkdir(parents=True, exist_ok=True)
        save_file(cpu_state_dict(ema if ema is not None else model), str(out_dir / "model.safetensors"))
        save_file(cpu_state_dict(model), str(out_dir / "raw.safetensors"))
        return out_dir


# ----------------------------------------------------------------------------------------------------------
# Helpers for stages


def cpu_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """A state dict safetensors can write: CPU tensors, contiguous, none sharing memory."""
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in model.state_dict().items()}


def load_init(model: nn.Module, init: Path | str, what: str = "model") -> nn.Module:
    """Load `init` into `model`, naming every missing, unexpected and mis-shaped key if it does not fit.

    `init` is a weight file (.safetensors, or a weights-only torch file), a folder holding
    `model.safetensors` (OUT/final/ of an earlier stage), or a run folder OUT (its final/model.safetensors)."""
    from minisvd.pretrained.weights import load_file, require_fit

    path = Path(init)
    if path.is_dir():
        candidates = [path / "model.safetensors", path / "final" / "model.safetensors"]
        found = [c for c in candidates if c.exists()]
        if not found:
            looked = ", ".join(str(c) for c in candidates)
            raise FileNotFoundError(f"{path} holds no weights: looked for {looked}")
        path = found[0]
    state_dict = load_file(path)  # FileNotFoundError for a missing file
    require_fit(model, state_dict, what=what, source=path)
    model.load_state_dict(state_dict)
    return model


# ----------------------------------------------------------------------------------------------------------
# The registry: `python -m minisvd train STAGE` offers every registered name

STAGES: dict[str, type[Stage]] = {}


def register_stage(cls: type[Stage]) -> type[Stage]:
    """Class decorator: `@register_stage class MyStage(Stage): name = "my-stage"`."""
    if not cls.name or cls.name == Stage.name:
        raise ValueError(f"{cls.__name__} needs its own `name` to be registered")
    STAGES[cls.name] = cls
    return cls


def get_stage(name: str, preset: str = "tiny", **fields) -> Stage:
    """A registered stage by name, built for `preset`, with its settings `fields` (e.g. trainable="lora")."""
    if name not in STAGES:
        raise KeyError(f"unknown stage {name!r}; registered: {', '.join(sorted(STAGES)) or 'none'}")
    if fields:  # a stage raises ValueError for a preset or a field it does not know
        import inspect

        try:
            inspect.signature(STAGES[name]).bind(preset=preset, **fields)
        except TypeError:
            raise ValueError(f"stage {name} takes no settings ({', '.join(sorted(fields))})") from None
        return STAGES[name](preset=preset, **fields)
    return STAGES[name](preset=preset)
