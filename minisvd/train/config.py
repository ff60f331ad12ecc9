"""TrainConfig: every knob of the training loop, its size presets and its json round trip (state.json).

The loop follows the recipe of SVD (Blattmann et al. 2023, App. D): AdamW, a linear learning-rate warm-up,
then a constant rate, and an exponential moving average (EMA) of the weights that the samples and the final
model use. The EMA is measured the way EDM does it (Karras et al. 2022, `training/training_loop.py`):

  half-life  the EMA forgets half of an old weight after `ema_halflife_samples` training *samples* (not
             steps, so the average means the same thing for any batch size):
                 beta = 0.5 ** (batch_size / halflife)          (per step: ema = beta ema + (1 - beta) w)
  ramp-up    early in a run the half-life is capped at `ema_rampup` times the samples seen so far, so the
             EMA of a short run follows the model instead of staying near its random init:
                 halflife = min(ema_halflife_samples, ema_rampup * samples_seen)
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass

PRECISIONS = ("fp32", "bf16")
OPTIMIZERS = ("adamw", "adamw8bit")


@dataclass
class TrainConfig:
    preset: str = "tiny"  # size preset the stage builds its model with (and these values came from)
    steps: int = 300  # optimizer steps of the whole run (a resumed run may raise it)
    batch_size: int = 8  # GLOBAL batch: samples per optimizer step, summed over all processes
    micro_batch_size: int | None = None  # samples per forward (gradient accumulation); None: B / processes
    lr: float = 2e-4  # AdamW learning rate after warm-up (constant afterwards, as SVD)
    betas: tuple[float, float] = (0.9, 0.999)  # AdamW beta1, beta2
    weight_decay: float = 0.0  # AdamW decoupled weight decay
    warmup_steps: int = 20  # linear learning-rate warm-up from lr / warmup_steps to lr
    grad_clip: float | None = 1.0  # max global grad norm; None: only measure it
    ema: bool = True  # keep an EMA of the weights (samples and the final model use it)
    ema_halflife_samples: float = 2_000  # EMA half-life in training samples (module doc)
    ema_rampup: float | None = 0.05  # cap the half-life at this fraction of samples seen; None: no ramp-up
    seed: int = 0  # every random number of the run derives from it (engine.py)
    log_every: int = 10  # steps between lines of metrics.jsonl
    ckpt_every: int = 100  # steps between checkpoints in OUT/last/ (the last step always saves)
    sample_every: int = 0  # steps between samples in OUT/samples/ (0: never)
    precision: str = "fp32"  # "bf16": autocast on cuda (fp32 master weights); cpu/mps always fp32
    gradient_checkpointing: bool = False  # recompute activations in backward (less memory, ~30% slower)
    optimizer: str = "adamw"  # "adamw8bit": bitsandbytes' 8-bit AdamW states (a quarter of the memory; cuda)
    fsdp: bool = False  # several processes: shard weights, gradients and AdamW states (fsdp.py); no EMA
    deterministic: bool = False  # deterministic cuda kernels: bit-identical reruns/resumes on GPUs too
    device: str | None = None  # None: cuda, then mps, then cpu (minisvd.device.pick_device)
    num_workers: int = 0  # DataLoader worker processes

    # Fields a resumed run may change; any other difference would break the resume guarantee.
    RESUMABLE_CHANGES = (
        "steps", "log_every", "ckpt_every", "sample_every", "device", "num_workers", "deterministic"
    )  # fmt: skip

    def __post_init__(self):
        self.betas = tuple(self.betas)  # json gives a list
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        for name in ("steps", "batch_size", "log_every", "ckpt_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.micro_batch_size is not None and (
            self.micro_batch_size < 1 or self.batch_size % self.micro_batch_size
        ):
            raise ValueError(
                f"micro_batch_size ({self.micro_batch_size}) must divide batch_size ({self.batch_size})"
            )

    # ----- presets ----------------------------------------------------------------------------------
    @classmethod
    def tiny(cls, **kw) -> TrainConfig:
        """Minutes on a laptop CPU: a tiny model, a small batch, a checkpoint every 100 steps."""
        return cls(**{**dict(preset="tiny", sample_every=100), **kw})

    @classmethod
    def small(cls, **kw) -> TrainConfig:
        """A single GPU for an hour or so (still runs on a CPU, slowly)."""
        return cls(
            **{
                **dict(
                    preset="small",
                    steps=5_000,
                    batch_size=32,
                    lr=1e-4,
                    warmup_steps=200,
                    ema_halflife_samples=50_000,
                    log_every=50,
                    ckpt_every=500,
                    sample_every=1_000,
                ),
                **kw,
            }
        )

    def replace(self, **kw) -> TrainConfig:
        return dataclasses.replace(self, **kw)

    # ----- json round trip (state.json) -------------------------------------------------------------
    def to_dict(self) -> dict:
        d = asdict(self)
        d["betas"] = list(self.betas)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown TrainConfig field(s): {unknown}")
        return cls(**d)


PRESETS = {"tiny": TrainConfig.tiny, "small": TrainConfig.small}


def preset_config(name: str, **kw) -> TrainConfig:
    """`TrainConfig.tiny(**kw)` or `TrainConfig.small(**kw)` by name."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[name](**kw)
