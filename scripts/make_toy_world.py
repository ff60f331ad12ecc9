"""The toy video world from the command line: pictures, speed, motion calibration, and a raw set through curation.

    python scripts/make_toy_world.py sheet --out toy.png          # objects x backgrounds, and a few clips
    python scripts/make_toy_world.py bench                         # clips/s on the fly and cached, 32 and 64 px
    python scripts/make_toy_world.py calibrate --clips 300         # predicted vs measured motion, score range
    python scripts/make_toy_world.py raw --out /tmp/toy --videos 16 --curate
                                                                   # write a raw set, curate it, compare with truth

The numbers in `minisvd/data/*.py` docstrings and in the report of the training-data issue come from these.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def sheet(args) -> None:
    import cv2

    from minisvd.data.photos import contact_sheet
    from minisvd.data.world import WorldConfig, make_clip

    top = contact_sheet(64)
    cfg = WorldConfig(size=64, seed=args.seed)
    rows = []
    for i in range(6):
        c = make_clip(cfg, i)
        rows.append(np.concatenate(list(c.frames.permute(0, 2, 3, 1).numpy()), 1))  # 8 frames side by side
        print(
            f"clip {i}: {c.caption}  ({c.fps} fps, {c.speed_px_per_frame:.2f} px/frame, motion {c.motion:.2f})"
        )
    clips = np.concatenate(rows, 0)
    w = max(top.shape[1], clips.shape[1])
    pad = lambda a: np.pad(a, ((0, 0), (0, w - a.shape[1]), (0, 0)))  # noqa: E731
    cv2.imwrite(args.out, np.concatenate([pad(top), pad(clips)], 0)[..., ::-1])
    print(f"wrote {args.out}")


def bench(args) -> None:
    from minisvd.data.datasets import ToyClips, collate
    from minisvd.data.world import WorldConfig

    for size in (32, 64):
        cfg = WorldConfig(size=size, seed=args.seed)
        fly = ToyClips(cfg, 100_000)
        [fly[i] for i in range(64)]  # warm the sprite caches
        best = float("inf")
        for r in range(args.rounds):
            t = time.perf_counter()
            for b in range(8):
                collate([fly[1000 + r * 128 + b * 16 + j] for j in range(16)])
            best = min(best, (time.perf_counter() - t) / 8)
        t = time.perf_counter()
        cached = ToyClips(cfg, 256, cache=True)
        build = (time.perf_counter() - t) / 256
        hit = float("inf")
        for _ in range(args.rounds):
            t = time.perf_counter()
            for b in range(16):
                collate([cached[b * 16 + j] for j in range(16)])
            hit = min(hit, (time.perf_counter() - t) / 16)
        print(f"{size}x{size}x8: on the fly {1000 * best:6.1f} ms / 16 clips = {16 / best:6.0f} clips/s | "
              f"cached {1000 * hit:5.2f} ms / 16 = {16 / hit:6.0f} clips/s (building: {1000 * build:.1f} ms/clip, "
              f"real motion score included)")  # fmt: skip


def calibrate(args) -> None:
    from minisvd.curation.evaluate import spearman
    from minisvd.data.motion_bucket import measure_motion, motion_bucket_id
    from minisvd.data.world import WorldConfig, make_clip

    for size in (32, 64):
        clips = [make_clip(WorldConfig(size=size, seed=args.seed), i) for i in range(args.clips)]
        pred = np.array([c.motion for c in clips])
        meas = np.array([measure_motion(c.frames, c.fps) for c in clips])
        still = np.array([c.speed == "still" and c.camera == "static" for c in clips])
        m64 = meas * 64 / size
        moving = pred > 0.05
        print(f"{size} px, {args.clips} clips: Spearman(predicted, measured) = {spearman(pred, meas):.3f}, "
              f"median measured / predicted = {np.median(meas[moving] / pred[moving]):.3f}")  # fmt: skip
        print(f"  measured score at 64 px: fully static max {m64[still].max():.4f}; percentiles 5/25/50/75/95/99/max "
              f"= {np.round(np.percentile(m64, [5, 25, 50, 75, 95, 99, 100]), 3).tolist()}")  # fmt: skip
        b = motion_bucket_id(meas, size)
        print(
            f"  buckets: percentiles 5/25/50/75/95/99 = {np.percentile(b, [5, 25, 50, 75, 95, 99]).tolist()}"
        )


def raw(args) -> None:
    from minisvd.curation.curate import CurateConfig, curate_folder
    from minisvd.curation.filtering import STANDIN_FILTERS, apply_filters, format_funnel
    from minisvd.data.raw import curation_summary, dropped_by, format_summary, label_clips, write_raw_set

    out = Path(args.out)
    t = time.perf_counter()
    manifest = write_raw_set(out / "raw", args.videos, seed=args.seed, progress=True)
    print(f"wrote {args.videos} videos in {time.perf_counter() - t:.1f} s to {out / 'raw'}")
    if not args.curate:
        return
    t = time.perf_counter()
    rep = curate_folder(out / "raw", out / "curated", CurateConfig(workers=args.workers))
    print(f"curated in {time.perf_counter() - t:.1f} s: {len(rep.clips)} clips")
    truth = {v["file"]: len(v["transitions"]) for v in manifest["videos"]}
    found = {v["video"]: int(v.get("n_transitions") or 0) for v in rep.videos}
    print(f"transitions: {sum(truth.values())} true, {sum(found.values())} detected; videos with the right count: "
          f"{sum(found.get(f) == n for f, n in truth.items())} / {len(truth)}")  # fmt: skip
    labels = label_clips(manifest, rep.clips)
    for name, col in (("static", "motion"), ("text", "text_area"), ("dull", "standin_aesthetic")):
        has = np.array([name in lab["defects"] for lab in labels])
        v = np.array([float(c[col]) for c in rep.clips])
        if has.any() and (~has).any():
            print(f"{col:>18}: {name} clips {np.round(np.percentile(v[has], [0, 50, 100]), 4).tolist()} "
                  f"(min/median/max) vs others {np.round(np.percentile(v[~has], [0, 50, 100]), 4).tolist()}")  # fmt: skip
    _, funnel = apply_filters(rep.clips, STANDIN_FILTERS)
    print(format_funnel(funnel))
    print(format_summary(curation_summary(labels, dropped_by(rep.clips, STANDIN_FILTERS))))
    (out / "labels.json").write_text(json.dumps(labels, indent=1))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("sheet")
    s.add_argument("--out", default="toy_world.png")
    b = sub.add_parser("bench")
    b.add_argument("--rounds", type=int, default=3)
    c = sub.add_parser("calibrate")
    c.add_argument("--clips", type=int, default=300)
    r = sub.add_parser("raw")
    r.add_argument("--out", required=True)
    r.add_argument("--videos", type=int, default=16)
    r.add_argument("--curate", action="store_true")
    r.add_argument("--workers", type=int, default=2)
    for q in (s, b, c, r):
        q.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    {"sheet": sheet, "bench": bench, "calibrate": calibrate, "raw": raw}[args.cmd](args)


if __name__ == "__main__":
    main()
