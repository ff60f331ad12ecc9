"""The training engine: one loop for every stage (stage.py), to be read top to bottom.

    train(stage, config, out_dir)      check OUT, build data/model/EMA/AdamW, maybe resume, loop, finish
    one step                           lr warm-up -> micro-batches (forward, per-sample loss, backward;
                                       DDP averages the gradients) -> clip -> finite? -> AdamW -> EMA
    every log_every / ckpt_every /     a line of OUT/metrics.jsonl / OUT/last/ (atomic, exact resume) /
    sample_every steps                 stage.sample with the EMA weights

Exactness. Every random number a step uses comes from generators seeded by (seed, step, micro-batch) --
the micro-batch's position in the *global* batch, not the process rank -- and the data order is a
function of (seed, epoch) (data.py). So a run killed and resumed from OUT/last/ ends with bit-identical
weights on the CPU, and N processes train the same model as one process with the same global batch
(up to the rounding of the gradient all-reduce). Both are tested in tests/test_train_engine.py.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import time
from contextlib import nullcontext
from datetime import datetime, timezone
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from minisvd.train import distributed
from minisvd.train.checkpoint import (
    git_commit,
    load_checkpoint,
    peek_state,
    read_checkpoint,
    read_state,
    recover,
    save_checkpoint,
    set_rng_state,
)
from minisvd.train.config import TrainConfig
from minisvd.train.data import BatchSampler, DataOrder, seed_for, to_device
from minisvd.train.ema import EMA, ema_beta
from minisvd.train.fsdp import (
    full_norm,
    gather_model_state,
    gather_optimizer_state,
    load_full_state,
    shard_model,
)
from minisvd.train.metrics import MetricsFile, Window, plot_loss
from minisvd.train.stage import Stage, get_stage


class TrainError(Exception):
    """Bad input, or an OUT folder this run must not touch. The CLI prints it as one line (exit code 2)."""


class NonFiniteLoss(RuntimeError):
    """The loss or the gradient norm is NaN/inf: the run stops, OUT/last/ keeps the last good state."""


def lr_at(step: int, config: TrainConfig) -> float:
    """Linear warm-up over `warmup_steps`, then constant (SVD trains at a constant rate, App. D)."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    return config.lr


def make_optimizer(params: list, config: TrainConfig) -> torch.optim.Optimizer:
    """AdamW, or bitsandbytes' 8-bit AdamW (`optimizer="adamw8bit"`: its two moments in 8 bits, block-wise
    quantised, 2 bytes a parameter instead of 8): the same update rule and hyper-parameters."""
    kw = dict(lr=config.lr, betas=config.betas, weight_decay=config.weight_decay)
    if config.optimizer == "adamw8bit":
        try:
            import bitsandbytes as bnb
        except ImportError:
            raise TrainError(
                "--optimizer adamw8bit needs bitsandbytes (pip install bitsandbytes; a CUDA GPU): "
                "install it or use --optimizer adamw"
            ) from None
        return bnb.optim.AdamW8bit(params, **kw)
    return torch.optim.AdamW(params, **kw)


# ----------------------------------------------------------------------------------------------------------
# Before anything is written: is OUT free (or resumable), and which config does the run use?


def check_out_dir(out_dir: Path, stage: Stage, resume: bool, d: distributed.Dist) -> dict | None:
    """Refuse to touch a folder holding another run; return the checkpoint's state.json when resuming."""
    if d.is_main and out_dir.exists():
        recover(out_dir)  # finish or undo a save that a crash interrupted (checkpoint.py)
    distributed.barrier(d)
    state = read_state(out_dir)
    if resume and state is None:
        raise TrainError(
            f"--resume: {out_dir} holds no checkpoint (no last/state.json); run without --resume"
        )
    if state is not None and state["stage"] != stage.name:
        raise TrainError(
            f"{out_dir} holds a run of stage {state['stage']!r} (step {state['step']}), not {stage.name!r}: "
            "use another --out"
        )
    if state is not None and not resume:
        done = state["step"] >= state["config"]["steps"]
        raise TrainError(
            f"{out_dir} already holds {'a finished' if done else 'an unfinished'} run of {stage.name!r} "
            f"(step {state['step']}/{state['config']['steps']}): use --resume (with --steps to train longer), "
            "or another --out"
        )
    return state


def resumed_config(config: TrainConfig | None, state: dict, out_dir: Path) -> TrainConfig:
    """The checkpoint's config, with the few fields a resumed run may change taken from `config`."""
    saved = TrainConfig.from_dict(state["config"])
    if config is None:
        return saved
    diffs = [
        f"{f.name} {getattr(config, f.name)!r} (saved: {getattr(saved, f.name)!r})"
        for f in dataclasses.fields(TrainConfig)
        if f.name not in TrainConfig.RESUMABLE_CHANGES and getattr(config, f.name) != getattr(saved, f.name)
    ]
    if diffs:
        raise TrainError(
            f"--resume continues the run in {out_dir} with its own settings, but these differ: {', '.join(diffs)}; "
            f"only {', '.join(TrainConfig.RESUMABLE_CHANGES)} may change"
        )
    return saved.replace(**{name: getattr(config, name) for name in TrainConfig.RESUMABLE_CHANGES})


def split_loss(out, stage: Stage, batch_size: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """A stage's loss output -> (per-sample loss (B,), extras), checking the shape."""
    per_sample, extras = out if isinstance(out, tuple) else (out, {})
    if per_sample.shape != (batch_size,):
        raise TrainError(
            f"stage {stage.name!r}: loss must return one value per sample, shape ({batch_size},), "
            f"got {tuple(per_sample.shape)} (use reduction='none')"
        )
    return per_sample, extras


# ----------------------------------------------------------------------------------------------------------
# The run


def train(
    stage: Stage | str,  # a Stage, or the name of a registered one (built for config.preset)
    config: TrainConfig | None,  # None: TrainConfig.tiny(), or the checkpoint's config when resuming
    out_dir: str | Path,  # OUT: checkpoints, metrics, samples, final model
    init: str | Path | None = None,  # weights to start from (an earlier stage's OUT/final/)
    data: str | Path | None = None,  # the stage's data folder
    resume: bool = False,  # continue the run in OUT from OUT/last/
    command: str | None = None,  # the command line, appended to OUT/command.txt
) -> dict:
    """Train `stage` into `out_dir`; return a summary (final loss, speed, where things are)."""
    out_dir = Path(out_dir)
    if config is None:
        saved = peek_state(out_dir) if resume else None
        config = TrainConfig.from_dict(saved["config"]) if saved else TrainConfig.tiny()
    if config.deterministic:  # cuda's fastest kernels add in a varying order; the CPU is deterministic anyway
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # read when cuBLAS starts
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    if isinstance(stage, str):
        saved = peek_state(out_dir) if resume else None  # --resume: the stage's own recorded settings
        try:
            stage = get_stage(stage, config.preset, **((saved or {}).get("stage_fields") or {}))
        except (KeyError, ValueError) as e:
            raise TrainError(e.args[0]) from None
    try:
        d, device = distributed.setup(config.device)
    except RuntimeError as e:
        raise TrainError(str(e)) from None
    try:
        with torch.enable_grad():  # also when called inside torch.no_grad() (a notebook cell, a test)
            return _train(stage, config, out_dir, init, data, resume, command, d, device)
    finally:
        distributed.cleanup(d)


def _train(stage, config, out_dir, init, data, resume, command, d, device) -> dict:
    t_start = time.time()
    state = check_out_dir(out_dir, stage, resume, d)
    if state is not None:
        config = resumed_config(config, state, out_dir)
    B, W = config.batch_size, d.world_size
    if B % W:
        raise TrainError(f"batch size {B} must be divisible by the number of processes ({W})")
    micro = config.micro_batch_size or B // W  # samples per forward pass
    if (B // W) % micro:
        raise TrainError(f"micro batch {micro} must divide the per-process batch {B // W} (= {B} / {W})")
    accum = B // W // micro  # micro-batches per process and step (gradient accumulation)
    fsdp = config.fsdp and d.enabled  # one process: --fsdp changes nothing
    if fsdp and config.ema:
        raise TrainError("--fsdp keeps no EMA (it would need a second sharded copy): add --no-ema")
    if fsdp and config.sample_every and d.is_main:
        print("note: --fsdp takes no periodic samples (the sharded model runs on all processes at once)")

    # ----- what the stage uses but does not train (frozen VAE, CLIP), then data ------------------------
    if state is not None and not init:
        init = state.get("init")  # --resume: the run's own --init, recorded in state.json
    try:
        stage.setup(Path(init) if init else None)
    except (FileNotFoundError, ValueError) as e:
        raise TrainError(f"--init {init}: {e}") from None
    try:
        dataset = stage.dataset(Path(data) if data else None)
    except (FileNotFoundError, ValueError) as e:
        raise TrainError(f"stage {stage.name!r}: cannot build its dataset: {e}") from None
    n = len(dataset)
    if n == 0:
        raise TrainError(f"stage {stage.name!r}: the dataset is empty (data: {data or 'built in'})")

    # ----- model, EMA, optimizer ----------------------------------------------------------------------
    torch.manual_seed(config.seed)  # the initial weights: the same in every process
    try:
        model = stage.build_model(None if state else (Path(init) if init else None))
    except (FileNotFoundError, ValueError) as e:
        raise TrainError(f"--init {init}: {e}") from None
    template = copy.deepcopy(model) if fsdp and d.is_main else None  # unsharded CPU copy for save_final
    model.to(device).train()
    if config.gradient_checkpointing:
        if hasattr(model, "enable_gradient_checkpointing"):
            model.enable_gradient_checkpointing()
        elif d.is_main:
            print(f"note: {type(model).__name__} has no enable_gradient_checkpointing(); training without it")
    if fsdp:
        shard_model(model, stage.fsdp_units(model))
    ema = EMA(model) if config.ema else None
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise TrainError(f"stage {stage.name!r}: the model has no trainable parameters")
    optimizer = make_optimizer(params, config)

    # ----- resume: weights, EMA, optimizer, RNG states, data position ---------------------------------
    order, start_step, started, elapsed_before = DataOrder(n, config.seed), 0, None, 0.0
    if state is not None and fsdp:  # every process reads the full checkpoint and keeps its shards
        state, model_sd, _, optim_sd = read_checkpoint(out_dir)
        load_full_state(model, optimizer, model_sd, optim_sd)
        set_rng_state(state["rng"])
    elif state is not None:
        state = load_checkpoint(out_dir, model, ema.model if ema else None, optimizer)
    if state is not None:
        if state["dataset_size"] != n:
            raise TrainError(f"the dataset has {n} items, the checkpoint's run had {state['dataset_size']}")
        order = DataOrder(n, config.seed, **state["data_position"])
        start_step, started, elapsed_before = state["step"], state["started"], state["elapsed_s"]
    started = started or datetime.now(timezone.utc).isoformat(timespec="seconds")
    if d.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        if command:
            with open(out_dir / "command.txt", "a") as f:
                f.write(command + "\n")
    metrics = MetricsFile(out_dir / "metrics.jsonl", start_step if state else None, d.is_main)
    commit = git_commit() if d.is_main else None

    net = model
    if d.enabled and not fsdp:  # gradients averaged over processes in backward
        ids = [device.index] if device.type == "cuda" else None
        unused = stage.find_unused_parameters
        net = DistributedDataParallel(model, device_ids=ids, find_unused_parameters=unused)
    steps_left = max(config.steps - start_step, 0)
    sampler = BatchSampler(order.copy(), steps_left, B, micro, d.rank, W, num_micro=steps_left * accum)
    loader = DataLoader(
        dataset,
        batch_sampler=sampler,  # the indices of each micro-batch, in order (data.py)
        collate_fn=stage.collate,
        num_workers=config.num_workers,
        pin_memory=device.type == "cuda",
        generator=torch.Generator().manual_seed(config.seed),  # worker seeds; leaves the global RNG alone
    )
    batches = iter(loader)
    use_bf16 = config.precision == "bf16" and device.type == "cuda"
    if config.precision == "bf16" and not use_bf16 and d.is_main:
        print(f"note: bf16 autocast is for cuda only; training in fp32 on {device.type}")

    def autocast():
        return torch.autocast("cuda", dtype=torch.bfloat16) if use_bf16 else nullcontext()

    last_loss = state.get("last_loss") if state else None
    saved_step = start_step if state else None
    train_seconds = 0.0

    def save(step: int) -> None:
        nonlocal saved_step
        weights, optim = model, optimizer
        if fsdp:  # a collective: every process gathers, rank 0 writes
            weights, optim = gather_model_state(model), gather_optimizer_state(model, optimizer)
        if d.is_main:
            save_checkpoint(
                out_dir,
                weights,
                ema.model if ema else None,
                optim,
                {
                    "stage": stage.name,
                    "stage_fields": stage.fields(),
                    "preset": stage.preset,
                    "step": step,  # optimizer steps done
                    "data_position": order.position(),  # where the next step's batch starts
                    "dataset_size": n,
                    "last_loss": last_loss,
                    "config": config.to_dict(),
                    "world_size": W,
                    "init": str(init) if init else None,
                    "started": started,
                    "elapsed_s": elapsed_before + time.time() - t_start,
                    "git_commit": commit,
                },
            )
        saved_step = step

    def sample(step: int) -> None:
        sampled = ema.model if ema else model
        was_training = sampled.training
        sampled.eval()
        with torch.no_grad(), autocast():
            stage.sample(sampled, out_dir / "samples", step)
        sampled.train(was_training)

    # ----- the loop -----------------------------------------------------------------------------------
    window = Window(device)
    bar = tqdm(total=config.steps, initial=start_step, unit="step", desc=stage.name, disable=not d.is_main)
    for step in range(start_step, config.steps):  # `step` steps are done; this one makes step + 1
        t0 = time.perf_counter()
        lr = lr_at(step, config)
        for group in optimizer.param_groups:
            group["lr"] = lr
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)  # this process's samples
        for j in range(accum):
            batch = to_device(next(batches), device)
            chunk = d.rank * accum + j  # this micro-batch's place in the global batch
            generator = torch.Generator(device).manual_seed(seed_for(config.seed, step, chunk))
            torch.manual_seed(seed_for(config.seed, step, chunk, 1))  # dropout and other global-RNG users
            no_sync = d.enabled and j < accum - 1  # all-reduce the gradients once, after the last one
            if fsdp:
                model.set_requires_gradient_sync(not no_sync)
            with net.no_sync() if no_sync and not fsdp else nullcontext():
                with autocast():
                    per_sample, extras = split_loss(stage.loss(net, batch, generator), stage, micro)
                # this process's share of the GLOBAL mean: DDP divides the summed gradients by W
                (per_sample.float().sum() * (W / B)).backward()
            loss_sum += per_sample.detach().double().sum()
            window.add_samples(per_sample, extras)
        grad_norm = full_norm(torch.nn.utils.clip_grad_norm_(params, config.grad_clip or math.inf))
        loss = distributed.all_reduce_sum(loss_sum, d).item() / B  # the global batch's mean loss

        if not (math.isfinite(loss) and math.isfinite(grad_norm)):  # before AdamW touches the weights
            if step > 0 and saved_step != step:
                save(step)  # the weights and optimizer are still those after step `step`
            bar.close()
            kept = f"{out_dir}/last/ keeps step {step}, the last good state" if step else "nothing was saved"
            raise NonFiniteLoss(
                f"stage {stage.name!r}: non-finite loss at step {step + 1} (loss={loss}, grad_norm={grad_norm}); "
                f"stopped: {kept}"
            )
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if ema is not None:
            ema.update(model, ema_beta((step + 1) * B, B, config.ema_halflife_samples, config.ema_rampup))
        order.take(B)  # the data position after this step
        last_loss, done = loss, step + 1
        seconds = time.perf_counter() - t0
        train_seconds += seconds
        window.add_step(loss * B, B, seconds)
        bar.update(1)

        if done % config.log_every == 0 or done == config.steps:
            record = {"step": done, "lr": lr, "grad_norm": grad_norm, **window.summary(d)}
            metrics.write(record)
            bar.set_postfix(loss=f"{record['loss']:.4f}")
            window.reset()
        if done % config.ckpt_every == 0 or done == config.steps:
            save(done)
        if (
            config.sample_every
            and d.is_main
            and not fsdp
            and (done % config.sample_every == 0 or done == config.steps)
        ):
            sample(done)
    bar.close()

    # ----- finish -------------------------------------------------------------------------------------
    final = loss_png = None
    final_model = model
    if fsdp:  # gather the weights into rank 0's unsharded copy
        full = gather_model_state(model)
        if d.is_main:
            template.load_state_dict(full)
            final_model = template
    if d.is_main:
        final = stage.save_final(final_model, ema.model if ema else None, out_dir / "final")
        loss_png = plot_loss(out_dir / "metrics.jsonl", out_dir / "loss.png")
    distributed.barrier(d)
    trained = config.steps - start_step if steps_left else 0
    return {
        "stage": stage.name,
        "out_dir": str(out_dir),
        "step": max(config.steps, start_step),
        "resumed_from": start_step if state else None,
        "final_loss": last_loss,
        "steps_per_s": trained / train_seconds if train_seconds else None,
        "elapsed_s": elapsed_before + time.time() - t_start,
        "checkpoint": str(out_dir / "last"),
        "final": str(final) if final else None,
        "metrics": str(out_dir / "metrics.jsonl"),
        "loss_png": str(loss_png) if loss_png else None,
        "world_size": W,
    }
