"""`python -m minisvd train STAGE --out DIR`: train a stage with the engine of `minisvd.train`.

Several processes: `torchrun --nproc_per_node=N -m minisvd train STAGE ...` (DistributedDataParallel).
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys


def _stage_names() -> list[str]:
    """Every registered stage (`minisvd.train.STAGES`); importing it costs ~20 ms after `import minisvd`."""
    from minisvd.train import STAGES

    return sorted(STAGES)


def _preset_names() -> list[str]:
    from minisvd.train import PRESETS

    return sorted(PRESETS)


def register(sub) -> None:
    p = sub.add_parser(
        "train",
        help="train a stage (toy, ...) with EMA, checkpoints, exact --resume and DDP",
        description="Train one stage of the course. Examples:\n"
        "  python -m minisvd train toy --out runs/toy                 # ~3 minutes on a laptop CPU\n"
        "  python -m minisvd train toy --out runs/toy --resume --steps 600\n"
        "  torchrun --nproc_per_node=2 -m minisvd train toy --out runs/toy-ddp\n"
        "Writes OUT/last/ (checkpoint), OUT/metrics.jsonl, OUT/loss.png, OUT/samples/, OUT/final/.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("stage", choices=_stage_names(), help="what to train")
    p.add_argument("--out", required=True, help="run folder (a new one, or the run to --resume)")
    p.add_argument(
        "--preset", choices=_preset_names(), default=None, help="model and run sizes (default tiny)"
    )
    p.add_argument("--init", default=None, help="start from these weights (an earlier stage's OUT/final/)")
    p.add_argument("--data", default=None, help="the stage's data folder")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--steps", type=int, default=None, help="optimizer steps of the whole run")
    p.add_argument("--batch-size", type=int, default=None, help="global batch, over all processes")
    p.add_argument("--micro-batch-size", type=int, default=None, help="samples per forward pass")
    p.add_argument("--lr", type=float, default=None, help="learning rate after warm-up")
    p.add_argument("--warmup-steps", type=int, default=None, help="linear learning-rate warm-up")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--log-every", type=int, default=None, help="steps between lines of metrics.jsonl")
    p.add_argument("--ckpt-every", type=int, default=None, help="steps between checkpoints")
    p.add_argument("--sample-every", type=int, default=None, help="steps between samples (0: never)")
    p.add_argument("--precision", choices=["fp32", "bf16"], default=None, help="bf16: autocast on cuda")
    p.add_argument("--gradient-checkpointing", action="store_true", default=None, help="less memory, slower")
    p.add_argument(
        "--deterministic", action="store_true", default=None, help="deterministic cuda kernels (exact resume)"
    )
    p.add_argument(
        "--no-ema", dest="ema", action="store_false", default=None, help="keep no EMA of the weights"
    )
    p.add_argument("--ema", dest="ema", action="store_true", default=None, help="keep an EMA (finetune: off)")
    p.add_argument(
        "--optimizer", choices=["adamw", "adamw8bit"], default=None, help="adamw8bit: bitsandbytes (cuda)"
    )
    p.add_argument(
        "--fsdp", action="store_true", default=None, help="under torchrun: shard weights, grads, optimizer"
    )
    p.add_argument("--num-workers", type=int, default=None, help="DataLoader worker processes")
    ft = p.add_argument_group("stage finetune (a pretrained SVD on your clips; docs/finetuning.md)")
    ft.add_argument("--trainable", choices=["all", "temporal", "lora"], default=None, help="default temporal")
    ft.add_argument("--lora-rank", type=int, default=None, help="LoRA rank (default 16)")
    ft.add_argument("--height", type=int, default=None, help="training frame height (default 576)")
    ft.add_argument("--width", type=int, default=None, help="training frame width (default 1024)")
    ft.add_argument(
        "--frames", dest="num_frames", type=int, default=None, help="frames (default: the UNet's)"
    )
    ft.add_argument("--stride", type=int, default=None, help="take every stride-th frame (default 1)")
    ft.add_argument("--max-windows", dest="max_windows_per_clip", type=int, default=None,
                    help="training windows per clip (default 4)")  # fmt: skip
    ft.add_argument("--offload", action="store_true", default=None, help="the VAE encoder stays on the CPU")
    p.add_argument("--device", default=None, help="cuda, mps or cpu (default: best available)")
    p.set_defaults(func=cmd_train)


OVERRIDES = (  # CLI flag (argparse dest) -> TrainConfig field of the same name
    "steps", "batch_size", "micro_batch_size", "lr", "warmup_steps", "seed", "log_every", "ckpt_every",
    "sample_every", "precision", "gradient_checkpointing", "deterministic", "ema", "num_workers", "device",
    "optimizer", "fsdp",
)  # fmt: skip
STAGE_FIELDS = (  # CLI flag (argparse dest) -> the stage's setting of the same name (Stage.fields)
    "trainable", "lora_rank", "height", "width", "num_frames", "stride", "max_windows_per_clip", "offload",
)  # fmt: skip


def cmd_train(args: argparse.Namespace) -> int:
    main_process = int(os.environ.get("RANK", 0)) == 0

    def fail(message: str, code: int = 2) -> int:
        if main_process:
            print(f"error: {message}", file=sys.stderr)
        return code

    from pathlib import Path

    from minisvd.train import NonFiniteLoss, TrainConfig, TrainError, get_stage, train
    from minisvd.train.checkpoint import peek_state

    given = {k: getattr(args, k) for k in OVERRIDES if getattr(args, k) is not None}
    fields = {k: getattr(args, k) for k in STAGE_FIELDS if getattr(args, k) is not None}
    try:
        saved = peek_state(Path(args.out)) if args.resume else None
        if saved is not None:  # resume: the run's own settings, changed only where a flag says so
            config = TrainConfig.from_dict(saved["config"]).replace(**given)
            if args.preset and args.preset != config.preset:
                return fail(f"--preset {args.preset}: the run in {args.out} uses --preset {config.preset}")
            recorded = saved.get("stage_fields") or {}
            for k, v in fields.items():
                if k in recorded and recorded[k] != v:
                    flag = "--" + {"num_frames": "frames", "max_windows_per_clip": "max-windows"}.get(k, k)
                    return fail(f"{flag.replace('_', '-')} {v}: the run in {args.out} uses {recorded[k]}")
            stage = get_stage(args.stage, config.preset, **{**recorded, **fields})
        else:  # the stage's own schedule for the preset, changed where a flag says so
            stage = get_stage(args.stage, args.preset or "tiny", **fields)
            config = stage.default_config(**given)
    except (ValueError, KeyError) as e:
        return fail(str(e))

    world = int(os.environ.get("WORLD_SIZE", 1))
    command = shlex.join(sys.orig_argv) + (f"  # WORLD_SIZE={world} (torchrun)" if world > 1 else "")
    try:
        summary = train(stage, config, args.out, args.init, args.data, args.resume, command=command)
    except TrainError as e:
        return fail(str(e))
    except NonFiniteLoss as e:
        return fail(str(e), code=1)
    except KeyboardInterrupt:
        return fail(f"interrupted; continue with --resume (last checkpoint: {args.out}/last/)", code=130)

    if main_process:
        loss = summary["final_loss"]
        loss = f"{loss:.4f}" if loss is not None else "n/a"
        print(f"trained {summary['stage']} to step {summary['step']}: final loss {loss}")
        speed = f", {summary['steps_per_s']:.2f} steps/s" if summary["steps_per_s"] else ""
        print(f"  processes  {summary['world_size']}{speed}")
        print(f"  checkpoint {summary['checkpoint']}/   (continue with --resume --steps N)")
        print(f"  final      {summary['final']}/")
        print(f"  metrics    {summary['metrics']}")
        if summary["loss_png"]:
            print(f"  loss plot  {summary['loss_png']}")
    return 0
