"""Benchmark on CPU: minisvd.ImageToVideo vs diffusers' StableVideoDiffusionPipeline, same tiny random weights.

    python benchmarks/bench_pipeline.py                 # prints the table used in docs/pretrained.md
    python benchmarks/bench_pipeline.py --steps 4 --repeats 2   # quicker

Both pipelines load the same folder (a tiny random SVD saved by `ImageToVideo.save_pretrained`), ours with
`match_diffusers=True` so the frames must agree (we print the max abs difference). Each implementation runs
in its own subprocess (so one's memory does not count against the other), runs once to warm up, then
`--repeats` times; we report the median time and the peak resident memory during the runs above the memory
before them (sampled every 2 ms from /proc/self/statm). The machine is shared: run it twice, or with
`--repeats 5`, before trusting a ratio near 1.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakRSS:
    """Samples RSS in a thread; `.peak` is the largest value seen while the context was open."""

    def __enter__(self):
        self.peak, self.stop = rss_bytes(), False
        self.t = threading.Thread(target=self._run, daemon=True)
        self.t.start()
        return self

    def _run(self):
        while not self.stop:
            self.peak = max(self.peak, rss_bytes())
            time.sleep(0.002)

    def __exit__(self, *exc):
        self.stop = True
        self.t.join()
        self.peak = max(self.peak, rss_bytes())


def worker(impl: str, folder: str, args: argparse.Namespace) -> dict:
    """Load one implementation, warm up, time `repeats` runs; returns times, memory and the frames."""
    import PIL.Image
    import torch

    torch.set_num_threads(args.threads)
    rng = np.random.RandomState(0)
    img = PIL.Image.fromarray((rng.rand(args.height, args.width, 3) * 255).astype(np.uint8))
    kw = dict(
        height=args.height,
        width=args.width,
        num_frames=args.frames,
        num_inference_steps=args.steps,
        decode_chunk_size=args.chunk,
        max_guidance_scale=3.0,
    )
    if impl.startswith("minisvd-"):  # memory-table rows: minisvd-<dtype>-<chunk>
        from minisvd.pipelines import load_pipeline

        _, dtype, chunk = impl.split("-")
        kw["decode_chunk_size"] = None if chunk == "all" else int(chunk)
        pipe = load_pipeline(folder, dtype=dtype)

        def run(seed):
            return pipe(img, generator=torch.Generator().manual_seed(seed), **kw)
    elif impl == "diffusers":
        from diffusers import StableVideoDiffusionPipeline

        pipe = StableVideoDiffusionPipeline.from_pretrained(folder)
        pipe.set_progress_bar_config(disable=True)

        def run(seed):
            with torch.no_grad():
                return pipe(
                    img, generator=torch.Generator().manual_seed(seed), output_type="pt", **kw
                ).frames[0]
    else:
        from minisvd.pipelines import load_pipeline

        pipe = load_pipeline(folder, match_diffusers=True)

        def run(seed):
            return pipe(img, generator=torch.Generator().manual_seed(seed), **kw)

    run(0)  # warm-up
    times = []
    before = rss_bytes()
    with PeakRSS() as mem:
        for _ in range(args.repeats):
            t = time.perf_counter()
            frames = run(1)
            times.append(time.perf_counter() - t)
    return {
        "times": times,
        "peak_extra_mb": (mem.peak - before) / 2**20,
        "peak_rss_mb": mem.peak / 2**20,
        "frames": frames.float().numpy().tolist(),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--height", type=int, default=64)
    p.add_argument("--width", type=int, default=96)
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--chunk", type=int, default=4, help="decode_chunk_size")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument(
        "--threads", type=int, default=1, help="torch intra-op threads (1: least noise on shared CPUs)"
    )
    p.add_argument("--memory-table", action="store_true", help="minisvd only: fp32/bf16 x decode chunk sizes")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--folder", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()

    if args.worker:  # child process: print one JSON line
        print(json.dumps(worker(args.worker, args.folder, args)))
        return

    from minisvd.pipelines import tiny_random_pipeline

    with tempfile.TemporaryDirectory() as tmp:
        tiny_random_pipeline(seed=0, num_frames=args.frames).save_pretrained(tmp)
        results = {}
        impls = ("diffusers", "minisvd")
        if args.memory_table:
            impls = tuple(f"minisvd-{d}-{c}" for d in ("fp32", "bf16") for c in ("all", "2"))
        for impl in impls:
            cmd = [sys.executable, __file__, "--worker", impl, "--folder", tmp] + [
                f"--{k}={getattr(args, k)}"
                for k in ("height", "width", "frames", "steps", "chunk", "repeats", "threads")
            ]
            out = subprocess.run(
                cmd, capture_output=True, text=True, check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}
            ).stdout
            results[impl] = json.loads(out.strip().splitlines()[-1])

    if args.memory_table:
        print(
            f"setting: {args.frames} frames {args.height}x{args.width}, {args.steps} steps, CPU, median of "
            f"{args.repeats}"
        )
        print("| dtype | decode chunk | time per video (s) | peak extra RSS (MiB) |")
        print("|---|---|---|---|")
        for impl, r in results.items():
            _, dtype, chunk = impl.split("-")
            print(f"| {dtype} | {chunk} | {float(np.median(r['times'])):.2f} | {r['peak_extra_mb']:.1f} |")
        return
    d, m = results["diffusers"], results["minisvd"]
    diff = float(np.abs(np.array(d["frames"]) - np.array(m["frames"])).max())
    td, tm = float(np.median(d["times"])), float(np.median(m["times"]))
    print(
        f"setting: {args.frames} frames {args.height}x{args.width}, {args.steps} steps, guidance on, "
        f"decode chunk {args.chunk}, fp32, CPU, {args.threads} thread(s), median of {args.repeats}"
    )
    print("| pipeline | time per video (s) | peak extra RSS (MiB) | peak RSS (MiB) |")
    print("|---|---|---|---|")
    for name, r, t in (("diffusers", d, td), ("minisvd", m, tm)):
        print(f"| {name} | {t:.2f} | {r['peak_extra_mb']:.1f} | {r['peak_rss_mb']:.0f} |")
    print(
        f"time ratio minisvd/diffusers: {tm / td:.2f}; peak extra memory ratio: "
        f"{m['peak_extra_mb'] / max(d['peak_extra_mb'], 1e-9):.2f}; max abs diff of frames: {diff:.1e}"
    )


if __name__ == "__main__":
    main()
