"""Benchmark: minisvd's UNet vs diffusers' UNetSpatioTemporalConditionModel on the same weights (CPU).

For each preset, every implementation runs in its own fresh subprocess so that peak memory (max RSS) is
its own. Both load identical weights (our default init, seed 0, copied into diffusers with strict=True);
outputs are compared (diffusers-eps mode, so the two compute the same function).

    python benchmarks/bench_unet.py                    # tiny, small, svd at reduced size
    python benchmarks/bench_unet.py --presets tiny --repeats 5

Prints a Markdown table: median CPU time per forward (process time, steadier than wall-clock on a shared
machine), peak RSS, and ours/diffusers ratios.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# preset -> (batch, frames, latent H, latent W)
SHAPES = {"tiny": (1, 8, 32, 32), "small": (1, 14, 32, 32), "svd": (1, 4, 16, 16)}


def worker(impl: str, preset: str, repeats: int, out_path: str, threads: int) -> None:
    import torch

    torch.set_num_threads(threads)

    from minisvd import UNet, UNetConfig

    torch.manual_seed(0)
    cfg = getattr(UNetConfig, preset)(diffusers_resnet_eps=True)
    model = UNet(cfg).eval()
    if impl == "diffusers":
        from diffusers import UNetSpatioTemporalConditionModel

        with torch.device("meta"):
            ref = UNetSpatioTemporalConditionModel(**cfg.to_diffusers())
        ref.load_state_dict(model.state_dict(), strict=True, assign=True)
        del model
        model = ref.eval()
    B, F, H, W = SHAPES[preset]
    g = torch.Generator().manual_seed(1)
    x = torch.randn(B, F, cfg.in_channels, H, W, generator=g)
    ehs = torch.randn(B, 1, cfg.cross_attention_dim, generator=g)
    ids = torch.tensor([[6.0, 127.0, 0.02]] * B)
    t = torch.tensor(0.25 * 1.0)

    def run():
        out = model(x, t, ehs, ids)
        return out if impl == "ours" else out.sample

    times = []
    with torch.inference_mode():
        out = run()  # warm-up
        for _ in range(repeats):
            t0 = time.process_time()  # CPU time of this process: robust to other jobs on a shared machine
            out = run()
            times.append(time.process_time() - t0)
    torch.save(
        {"out": out, "times": times, "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024},
        out_path,
    )


def measure(impl: str, preset: str, repeats: int, threads: int) -> dict:
    import torch

    with tempfile.TemporaryDirectory() as d:
        path = str(Path(d) / "r.pt")
        subprocess.run(
            [sys.executable, __file__, "--worker", impl, preset, str(repeats), path, str(threads)], check=True
        )
        return torch.load(path, weights_only=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--presets", nargs="+", default=list(SHAPES))
    p.add_argument("--repeats", type=int, default=5, help="timed forwards per worker (2 for svd)")
    p.add_argument(
        "--rounds", type=int, default=3, help="worker pairs per preset, alternating order (1 for svd)"
    )
    p.add_argument("--threads", type=int, default=1, help="torch threads per worker (1: steadiest timings)")
    p.add_argument("--worker", nargs=5, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        impl, preset, repeats, out, threads = args.worker
        return worker(impl, preset, int(repeats), out, int(threads))

    import torch

    rows = []
    for preset in args.presets:
        reps = 2 if preset == "svd" else args.repeats
        rounds = 1 if preset == "svd" else args.rounds
        runs = {"ours": [], "diffusers": []}
        for r in range(rounds):  # alternate who goes first: the machine's load drifts
            order = ("ours", "diffusers") if r % 2 == 0 else ("diffusers", "ours")
            for impl in order:
                runs[impl].append(measure(impl, preset, reps, args.threads))
        # per implementation, the round with the lowest median (least disturbed by other jobs)
        ours, theirs = (
            min(runs[i], key=lambda m: statistics.median(m["times"])) for i in ("ours", "diffusers")
        )
        err = (ours["out"] - theirs["out"]).abs().max().item()
        scale = theirs["out"].abs().max().item()
        t_o, t_d = statistics.median(ours["times"]), statistics.median(theirs["times"])
        rows.append((preset, SHAPES[preset], t_o, t_d, ours["max_rss_mb"], theirs["max_rss_mb"], err, scale))
        if err > 1e-4 * scale:
            print(f"WARNING {preset}: outputs differ by {err:.3g} (scale {scale:.3g})")
    print(
        f"\ntorch {torch.__version__}, {args.threads} thread(s) per worker, CPU time per forward (median)\n"
    )
    print(
        "| preset | input (B, F, h, w) | ours ms | diffusers ms | time ratio | ours peak MB | diffusers peak MB "
        "| memory ratio | max abs diff |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for preset, shape, t_o, t_d, m_o, m_d, err, scale in rows:
        print(
            f"| {preset} | {shape} | {t_o * 1e3:.1f} | {t_d * 1e3:.1f} | {t_o / t_d:.2f} | {m_o:.0f} | {m_d:.0f} "
            f"| {m_o / m_d:.2f} | {err:.1e} (scale {scale:.2f}) |"
        )


if __name__ == "__main__":
    main()
