"""Benchmark: one training step of minisvd's UNet vs diffusers' UNetSpatioTemporalConditionModel (CPU).

A training step is what the engine does per batch (minisvd/train/engine.py, without clipping and EMA):
forward through `conditioned_network`, EDM loss per sample (`edm.edm_loss`), backward, AdamW step.
For each configuration the course trains (CONFIGS), both implementations load the same weights (our init,
seed 0, copied into diffusers with strict=True, `UNetConfig(diffusers_resnet_eps=True)`) and the same batch.
Before any timing, this process checks that they compute the same function: forward outputs, loss and the
whole gradient. It also counts the FLOPs of one step (matmuls, convolutions and attention, forward +
backward, `torch.utils.flop_counter`): the work each implementation does.

Timing: every implementation runs in its own fresh subprocess (so its peak RSS is its own), `--rounds`
times, alternating who goes first (the machine's load drifts), `--repeats` timed steps after two warm-up
steps. Per step we record wall time and the process's CPU time; per subprocess, how many cores other
processes kept busy meanwhile (/proc/stat). A 2048^2 fp32 matmul with the same thread count gives the
machine's peak GFLOP/s. `--before DIR` also times ours from another source tree (DIR/minisvd, e.g. a
`git worktree` of an older commit): a before/after measured the same way, against the same diffusers.

    python benchmarks/bench_train.py                                   # every config, 1 and 2 threads
    python benchmarks/bench_train.py --configs II-video --threads 1 --rounds 5
    python benchmarks/bench_train.py --before /tmp/old --save out.md   # + the old tree; tables to out.md

Prints Markdown tables: time per step (median of the least disturbed round), steps/s, clips/s, GFLOP/s and
% of the matmul peak, memory, and time ratios (median over rounds of each round's back-to-back pair).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# name -> what it stands for, UNet preset, in_channels, batch B, frames F, latent side, context tokens L.
# As the course's stages (minisvd/train/stages/): the tiny UNet on latents of 4 channels, ONE context token
# (the projected CLIP text embedding; for image-to-video the image embedding, and the conditioning frame's
# latent on channels, 4 + 4). "image" runs with image_only_indicator = 1 and the temporal layers frozen, as
# stage I does (diffusers has no image_only_indicator: it runs its only mode, with the same layers frozen).
# "text16" has 16 caption tokens instead of one: the general cross-attention path.
CONFIGS = {
    "I-image": dict(stage="stage I text-to-image", preset="tiny", in_ch=4, B=64, F=1, hw=8, L=1, image=True),
    "II-video": dict(stage="stage II text-to-video", preset="tiny", in_ch=4, B=16, F=8, hw=8, L=1),
    "III-hires": dict(stage="stage III high-res", preset="tiny", in_ch=4, B=8, F=8, hw=16, L=1),
    "i2v": dict(stage="image-to-video", preset="tiny", in_ch=8, B=16, F=8, hw=8, L=1),
    "small-i2v": dict(stage="image-to-video, small UNet", preset="small", in_ch=8, B=2, F=8, hw=16, L=1),
    "II-text16": dict(stage="stage II, 16 text tokens", preset="tiny", in_ch=4, B=16, F=8, hw=8, L=16),
}
PEAK_N = 2048  # side of the square fp32 matmul that measures the machine's peak


# ----------------------------------------------------------------------------------------------------------
# One implementation's model, batch and loss (used by the check here and by the timing workers)


def build(impl: str, spec: dict):
    """Our UNet, or diffusers' with our weights behind our call signature; train mode."""
    import torch
    from torch import nn

    from minisvd import UNet, UNetConfig
    from minisvd.models.inflate import is_temporal_key

    torch.manual_seed(0)
    cfg = getattr(UNetConfig, spec["preset"])(in_channels=spec["in_ch"], diffusers_resnet_eps=True)
    model = UNet(cfg)
    if impl == "diffusers":
        from diffusers import UNetSpatioTemporalConditionModel

        class DiffusersUNet(nn.Module):
            """diffusers' UNet behind our forward signature (it has no image_only_indicator input)."""

            def __init__(self, unet):
                super().__init__()
                self.unet = unet

            def forward(self, sample, timestep, context, added_time_ids, image_only_indicator=None):
                return self.unet(sample, timestep, context, added_time_ids).sample

        with torch.device("meta"):
            ref = UNetSpatioTemporalConditionModel(**cfg.to_diffusers())
        ref.load_state_dict({k: v.clone() for k, v in model.state_dict().items()}, strict=True, assign=True)
        del model
        model = DiffusersUNet(ref)
    if spec.get("image"):  # stage I trains the spatial image model only
        for name, p in model.named_parameters():
            p.requires_grad_(not is_temporal_key(name.removeprefix("unet.")))
    return model.train()


def make_batch(spec: dict) -> dict:
    """Clean latents x0, sigma, noise and the conditioning, from a fixed seed: edm_loss's arguments."""
    import torch

    from minisvd import edm

    g = torch.Generator().manual_seed(1)
    B, F, hw, C = spec["B"], spec["F"], spec["hw"], 4
    D = 32 if spec["preset"] == "tiny" else 256  # cross_attention_dim of the preset
    x0 = torch.randn(B, F, C, hw, hw, generator=g)
    batch = dict(
        x0=x0,
        sigma=edm.sample_sigmas(B, 0.7, 1.6, generator=g),  # SVD's i2v training noise (App. D)
        noise=torch.randn(x0.shape, generator=g),
        context=torch.randn(B, spec["L"], D, generator=g),
        added_time_ids=torch.tensor([[6.0, 127.0, 0.02]]).expand(B, 3),
    )
    if spec["in_ch"] == 8:  # image-to-video: the conditioning frame's latent, repeated over frames
        batch["cond_latent"] = torch.randn(B, 1, C, hw, hw, generator=g).expand(B, F, C, hw, hw)
    if spec.get("image"):
        batch["image_only_indicator"] = torch.ones(B, F)
    return batch


def loss_of(model, batch: dict, image_mode: bool = True):
    """The mean EDM loss of the batch (the engine's per-sample loss, averaged)."""
    from minisvd import edm
    from minisvd.conditioning.batch import conditioned_network

    cond = {k: v for k, v in batch.items() if k not in ("x0", "sigma", "noise")}
    if not image_mode:
        cond.pop("image_only_indicator", None)
    return edm.edm_loss(
        conditioned_network(model), batch["x0"], batch["sigma"], batch["noise"], reduction="none", **cond
    ).mean()


def count_flops(model, batch: dict) -> int:
    """FLOPs of forward + backward (matmuls, convolutions, attention), CPU SDPA included."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

    aten = torch.ops.aten
    sdpa = {  # the CPU flash-attention kernels are missing from torch's table
        aten._scaled_dot_product_flash_attention_for_cpu: lambda q, k, v, *a, **kw: sdpa_flop_count(q, k, v),
        aten._scaled_dot_product_flash_attention_for_cpu_backward: (
            lambda go, q, k, v, *a, **kw: sdpa_backward_flop_count(go, q, k, v)
        ),
    }
    with FlopCounterMode(display=False, custom_mapping=sdpa) as counter:
        loss_of(model, batch).backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def check(spec: dict) -> dict:
    """Same function? Forward output, loss and whole gradient of ours vs diffusers; the FLOPs of each.
    Errors are relative: max |ours - theirs| / max |theirs| (forward), and L2 norms (gradient)."""
    import torch

    batch = make_batch(spec)
    B, F = batch["x0"].shape[:2]
    sample = torch.cat([batch["x0"], batch["cond_latent"]], 2) if "cond_latent" in batch else batch["x0"]
    res = {}
    for impl in ("ours", "diffusers"):
        model = build(impl, spec)
        with torch.no_grad():
            out = model(sample, torch.full((B,), 0.3), batch["context"], batch["added_time_ids"])
        loss = loss_of(model, batch, image_mode=False)  # diffusers has no image mode: compare video mode
        loss.backward()
        grads = {  # ours leaves Q, K of one-token cross-attention without a gradient: theirs is 0
            n.removeprefix("unet."): (p.grad if p.grad is not None else torch.zeros_like(p)).flatten()
            for n, p in model.named_parameters()
        }
        model.zero_grad(set_to_none=True)
        res[impl] = dict(out=out, loss=loss.item(), grads=grads, flops=count_flops(model, batch))
    o, d = res["ours"], res["diffusers"]
    g_o, g_d = (torch.cat([r["grads"][n] for n in sorted(d["grads"])]) for r in (o, d))
    return dict(
        out_err=(o["out"] - d["out"]).abs().max().item() / d["out"].abs().max().item(),
        loss_err=abs(o["loss"] - d["loss"]) / abs(d["loss"]),
        grad_err=((g_o - g_d).norm() / g_d.norm()).item(),
        flops={"ours": o["flops"], "diffusers": d["flops"]},
        params=sum(p.numel() for p in build("ours", {**spec, "image": False}).parameters()),
    )


# ----------------------------------------------------------------------------------------------------------
# Timing workers (each in a fresh process)


def busy_seconds() -> float:
    """CPU seconds all cores of the machine have spent busy since boot (/proc/stat)."""
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def memory_mb(field: str) -> float:
    """VmRSS (resident now) or VmHWM (peak resident) of this process, from /proc/self/status. Not
    getrusage's ru_maxrss: Linux carries that across execve, so a child would report its parent's peak."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) / 1024 for line in f if line.startswith(field + ":"))


def time_steps(step, repeats: int) -> dict:
    """Per-step wall and CPU times of `step()`, and how many cores other processes used meanwhile."""
    walls, cpus = [], []
    busy0, cpu0, wall0 = busy_seconds(), time.process_time(), time.perf_counter()
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        step()
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    wall = time.perf_counter() - wall0
    others = (busy_seconds() - busy0 - (time.process_time() - cpu0)) / wall
    return dict(wall=walls, cpu=cpus, others=max(others, 0.0))


def trainer(impl: str, spec: dict):
    """(step, losses): one training step of `impl` on the config's fixed batch, and the losses it saw."""
    import torch

    model = build(impl, spec)
    batch = make_batch(spec)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-4)  # TrainConfig's
    losses = []

    def step():
        loss = loss_of(model, batch)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())

    return step, losses


def worker(impl: str, config: str, repeats: int, threads: int) -> dict:
    import torch

    torch.set_num_threads(threads)
    if impl == "peak":  # the machine's fp32 matmul peak at this thread count
        a, b = torch.randn(PEAK_N, PEAK_N), torch.randn(PEAK_N, PEAK_N)
        r = time_steps(lambda: a @ b, repeats)
        return dict(gflops=2 * PEAK_N**3 / min(r["wall"]) / 1e9, others=r["others"])

    # every worker imports the same libraries, so that the memory before training compares
    from diffusers import UNetSpatioTemporalConditionModel  # noqa: F401

    spec = CONFIGS[config]
    if impl == "paired":  # ours and diffusers in one process, one step each in turn: the tightest ratio
        steps = {i: trainer(i, spec)[0] for i in ("ours", "diffusers")}
        for s in steps.values():
            s(), s()  # warm-up
        runs = {i: [] for i in steps}
        for k in range(repeats):
            for i in ("ours", "diffusers") if k % 2 == 0 else ("diffusers", "ours"):
                runs[i].append(time_steps(steps[i], 1))
        return {i: {key: [r[key][0] for r in rs] for key in ("wall", "cpu")} for i, rs in runs.items()}

    step, losses = trainer(impl, spec)
    rss_before = memory_mb("VmRSS")
    step(), step()  # warm-up: AdamW's state, allocator, oneDNN primitives
    r = time_steps(step, repeats)
    r.update(rss_before=rss_before, max_rss=memory_mb("VmHWM"), first_loss=losses[0])
    return r


def measure(impl: str, config: str, repeats: int, threads: int, source: str | None = None) -> dict:
    """Run one worker in a fresh process; `source`: a tree whose minisvd/ it imports instead of ours."""
    import torch

    env = dict(os.environ, PYTHONPATH=source) if source else None
    with tempfile.TemporaryDirectory() as d:
        path = str(Path(d) / "r.pt")
        cmd = [sys.executable, __file__, "--worker", impl, config, str(repeats), str(threads), path]
        subprocess.run(cmd, check=True, env=env)
        return torch.load(path, weights_only=True)


# ----------------------------------------------------------------------------------------------------------
# The tables


def cpu_name() -> str:
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    p.add_argument("--threads", nargs="+", type=int, default=[1, 2], help="torch threads per worker")
    p.add_argument("--repeats", type=int, default=6, help="timed steps per worker")
    p.add_argument("--rounds", type=int, default=4, help="workers per implementation and config, alternating")
    p.add_argument("--pairs", type=int, default=16, help="steps each, alternating in ONE process (0: skip)")
    p.add_argument("--before", help="a source tree (holding minisvd/) to time as 'before' too")
    p.add_argument("--save", help="also write the printed Markdown to this file")
    p.add_argument("--worker", nargs=5, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        import torch

        impl, config, repeats, threads, out = args.worker
        return torch.save(worker(impl, config, int(repeats), int(threads)), out)

    import torch

    torch.set_num_threads(max(args.threads))
    impls = {"ours": None, "diffusers": None}  # name -> source tree (None: this one)
    if args.before:
        impls["before"] = str(Path(args.before).resolve())
    lines = [
        f"`python benchmarks/{Path(__file__).name} {' '.join(sys.argv[1:])}`".replace(" `", "`"),
        "",
        f"{os.cpu_count()}-core {cpu_name()}, torch {torch.__version__}, fp32. Load average at start: "
        + ", ".join(f"{v:.2f}" for v in os.getloadavg()),
        "",
    ]
    checks = {}
    for name in args.configs:
        checks[name] = c = check(CONFIGS[name])
        ok = max(c["out_err"], c["loss_err"]) < 1e-5 and c["grad_err"] < 1e-5
        lines.append(
            f"- {name}: {'same function' if ok else 'MISMATCH'}: forward {c['out_err']:.1e}, "
            f"loss {c['loss_err']:.1e}, gradient {c['grad_err']:.1e} (relative, ours vs diffusers)"
        )
        print(lines[-1], flush=True)
        if not ok:
            sys.exit(f"{name}: ours and diffusers disagree; fix that before timing")
    lines.append("")

    for threads in args.threads:
        peak = [measure("peak", "", 10, threads)]
        rows = []
        for name in args.configs:
            runs = {impl: [] for impl in impls}
            for r in range(args.rounds):  # rotate who goes first
                order = list(impls)[r % len(impls) :] + list(impls)[: r % len(impls)]
                for impl in order:
                    worker_impl = "ours" if impl == "before" else impl
                    runs[impl].append(measure(worker_impl, name, args.repeats, threads, impls[impl]))
                    m = runs[impl][-1]
                    print(
                        f"  {threads}t {name} {impl}: {statistics.median(m['wall']) * 1e3:.0f} ms wall, "
                        f"{statistics.median(m['cpu']) * 1e3:.0f} ms CPU, others {m['others']:.1f} cores",
                        flush=True,
                    )
            if args.pairs:
                runs["paired"] = measure("paired", name, args.pairs, threads)
            rows.append((name, runs))
        peak.append(measure("peak", "", 10, threads))
        lines += table(rows, checks, threads, max(m["gflops"] for m in peak), list(impls))
        text = "\n".join(lines)
        print("\n" + text, flush=True)
        if args.save:  # after each thread count: a long run keeps what it measured
            Path(args.save).write_text(text + "\n")


def table(rows, checks, threads: int, peak: float, impls: list[str]) -> list[str]:
    med = statistics.median
    out = [
        f"**{threads} thread(s) per process**; fp32 matmul peak {peak:.0f} GFLOP/s ({PEAK_N}^2, same threads). "
        "Step times: median of the round with the lowest median. Memory: resident before the first step "
        "/ peak. Others' load: cores other processes kept busy, per round.",
        "",
        "| config | B, F, C_in, h=w, L | impl | ms/step wall | ms/step CPU | steps/s | clips/s | GFLOP/step "
        "| GFLOP/s | % peak | RSS MB | others' load |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, runs in rows:
        s = CONFIGS[name]
        shape = f"{s['B']}, {s['F']}, {s['in_ch']}, {s['hw']}, {s['L']}"
        for impl in impls:
            best = min(runs[impl], key=lambda m: med(m["wall"]))
            wall, cpu = med(best["wall"]), med(best["cpu"])
            work = "- | - | -"  # FLOPs are counted for this tree's ours and for diffusers, not for "before"
            if impl != "before":
                gflop = checks[name]["flops"][impl] / 1e9
                work = f"{gflop:.2f} | {gflop / wall:.1f} | {100 * gflop / wall / peak:.1f}"
            others = ", ".join(f"{m['others']:.1f}" for m in runs[impl])
            out.append(
                f"| {name} | {shape} | {impl} | {wall * 1e3:.0f} | {cpu * 1e3:.0f} | {1 / wall:.2f} "
                f"| {s['B'] / wall:.1f} | {work} | {best['rss_before']:.0f} / {best['max_rss']:.0f} | {others} |"
            )
    header = "| config | stands for | params | ours/diffusers wall (per round) | ours/diffusers CPU "
    header += "| paired in one process: wall, CPU (quartiles) | peak RSS ratio | <= 0.8? |"
    if "before" in impls:
        header += " ours/before wall | ours/before CPU | first loss, ours vs before |"
    out += ["", header, "|" + "---|" * (header.count("|") - 1)]

    def ratios(runs: dict, a: str, b: str, key: str) -> list[float]:
        """Per round: median step time of a / that of b (the two ran back to back)."""
        return [med(x[key]) / med(y[key]) for x, y in zip(runs[a], runs[b])]

    for name, runs in rows:
        r_wall, r_cpu = ratios(runs, "ours", "diffusers", "wall"), ratios(runs, "ours", "diffusers", "cpu")
        r_rss = med(m["max_rss"] for m in runs["ours"]) / med(m["max_rss"] for m in runs["diffusers"])
        paired, met = "-", med(r_wall) <= 0.8 and med(r_cpu) <= 0.8
        if "paired" in runs:  # ratio of each step of ours to the step of diffusers next to it
            pw, pc = (
                [o / d for o, d in zip(runs["paired"]["ours"][k], runs["paired"]["diffusers"][k])]
                for k in ("wall", "cpu")
            )
            q = statistics.quantiles(pc, n=4)
            paired, met = f"{med(pw):.2f}, {med(pc):.2f} ({q[0]:.2f}-{q[2]:.2f})", met and med(pc) <= 0.8
        row = (
            f"| {name} | {CONFIGS[name]['stage']} | {checks[name]['params']:,} | {med(r_wall):.2f} "
            f"({', '.join(f'{r:.2f}' for r in r_wall)}) | {med(r_cpu):.2f} | {paired} | {r_rss:.2f} "
            f"| {'yes' if met else 'no'} |"
        )
        if "before" in impls:
            same = abs(runs["ours"][0]["first_loss"] - runs["before"][0]["first_loss"])
            row += (
                f" {med(ratios(runs, 'ours', 'before', 'wall')):.2f} | {med(ratios(runs, 'ours', 'before', 'cpu')):.2f} "
                f"| {same / abs(runs['before'][0]['first_loss']):.0e} |"
            )
        out.append(row)
    return out + [""]


if __name__ == "__main__":
    main()
