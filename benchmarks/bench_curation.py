"""Benchmark: our cut cascade vs PySceneDetect, motion and text scores vs ground truth, on data_samples/.

    python benchmarks/bench_curation.py                   # prints the tables used in docs/curation.md
    python benchmarks/bench_curation.py --min-speedup 0   # the same, without the speed check

Cuts: precision / recall / F1 for hard cuts (1-frame tolerance) and gradual transitions (dissolves and
fades: a boundary inside the transition, 2 frames tolerance); see `minisvd.curation.evaluate` for the
matching rules. Speed: frames per second including decoding, each detector timed on the same files in
the same process, in interleaved rounds (best of `--repeats` rounds, because other processes share the
machine). The speed check lives here, not in the test suite: the script exits with status 1 when the
cascade is less than `--min-speedup` times as fast as PySceneDetect's ContentDetector (default 1.5: the
target is 2x and we measure 2x to 7x, so load alone should not fail it, while a change that loses most of
the gain does).
Motion: Spearman rank correlation between our score and the true camera speed of each shot.
Text: mean absolute error between our text-area score and the true text area (first, middle, last frame).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from minisvd.curation.cuts import detect_cuts
from minisvd.curation.evaluate import PRF, match_transitions, spearman
from minisvd.curation.motion import flow_size, motion_score, sample_indices
from minisvd.curation.text import text_score
from minisvd.curation.video_io import iter_frames, read_frames

ROOT = Path(__file__).resolve().parents[1] / "data_samples"


def ours(path: str) -> list[int]:
    return [t.frame for t in detect_cuts(path).transitions]


def pyscenedetect(kind: str):
    from scenedetect import AdaptiveDetector, ContentDetector, HistogramDetector, SceneManager, open_video

    make = {"content": ContentDetector, "adaptive": AdaptiveDetector, "histogram": HistogramDetector}[kind]

    def run(path: str) -> list[int]:
        sm = SceneManager()
        sm.add_detector(make())  # defaults, as the peer ships them (min scene length 15 frames)
        sm.detect_scenes(open_video(path, backend="pyav"))
        return [s[0].frame_num for s in sm.get_scene_list()[1:]]

    return run


def bench_cuts(manifest: dict, root: Path, repeats: int = 3) -> dict[str, dict]:
    detectors = {
        "minisvd cascade": ours,
        **{f"PySceneDetect {k}": pyscenedetect(k) for k in ("content", "adaptive", "histogram")},
    }
    # Rounds interleave the detectors, so a burst of load from other processes hits all of them alike;
    # each detector keeps its best round.
    best = {name: float("inf") for name in detectors}
    found: dict[str, dict[str, list[int]]] = {}
    for _ in range(repeats):
        for name, fn in detectors.items():
            t0, found[name] = time.perf_counter(), {}
            for v in manifest["videos"]:
                found[name][v["file"]] = fn(str(root / v["file"]))
            best[name] = min(best[name], time.perf_counter() - t0)
    frames = sum(v["n_frames"] for v in manifest["videos"])
    out = {}
    for name in detectors:
        tot = {"cut": PRF(0, 0, 0), "gradual": PRF(0, 0, 0)}
        for v in manifest["videos"]:
            res = match_transitions(found[name][v["file"]], v["transitions"])
            tot = {k: tot[k] + res[k] for k in tot}
        out[name] = {**tot, "fps": frames / best[name]}
    return out


def bench_motion_text(manifest: dict, root: Path) -> dict:
    speed_true, speed_ours, text_true, text_ours = [], [], [], []
    for v in manifest["videos"]:
        path = str(root / v["file"])
        w, h = manifest["width"], manifest["height"]
        grey = dict(iter_frames(path, size=flow_size(w, h, 90), fmt="gray"))
        for s in v["shots"]:
            idx = sample_indices(s["start"], s["end"] + 1, manifest["fps"])
            speed_ours.append(motion_score({i: grey[i] for i in idx}, min(w, h)).score)
            speed_true.append(s["speed_px_per_frame"])
            three = [s["start"], (s["start"] + s["end"]) // 2, s["end"]]
            frames = read_frames(path, three)
            text_ours.append(text_score([frames[i] for i in three]).score)
            text_true.append(float(np.mean([v["text_area"][i] for i in three])))
    st, so = np.array(speed_true), np.array(speed_ours)
    tt, to = np.array(text_true), np.array(text_ours)
    return {
        "shots": len(st),
        "spearman": spearman(so, st),
        "speed_mae": float(np.abs(so - st).mean()),
        "text_mae": float(np.abs(to - tt).mean()),
        "text_mae_with_text": float(np.abs(to - tt)[tt > 0].mean()),
        "shots_with_text": int((tt > 0).sum()),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, default=ROOT)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument(
        "--min-speedup",
        type=float,
        default=1.5,
        help="exit 1 if the cascade is slower than this many times ContentDetector (0: no check)",
    )
    a = ap.parse_args()
    manifest = json.loads((a.root / "manifest.json").read_text())
    cuts = bench_cuts(manifest, a.root, a.repeats)
    print("| detector | hard cuts P / R / F1 | gradual P / R / F1 | frames/s |")
    print("|---|---|---|---|")
    for name, r in cuts.items():
        c, g = r["cut"], r["gradual"]
        print(
            f"| {name} | {c.precision:.2f} / {c.recall:.2f} / **{c.f1:.2f}** | {g.precision:.2f} / {g.recall:.2f} / **{g.f1:.2f}** | {r['fps']:.0f} |"
        )
    ratio = cuts["minisvd cascade"]["fps"] / cuts["PySceneDetect content"]["fps"]
    print(f"\nspeed vs ContentDetector: {ratio:.2f}x")
    slow = a.min_speedup > 0 and ratio < a.min_speedup
    mt = bench_motion_text(manifest, a.root)
    print(
        f"motion: Spearman {mt['spearman']:.3f} over {mt['shots']} shots (MAE {mt['speed_mae']:.3f} px/frame)"
    )
    print(
        f"text: MAE {mt['text_mae']:.4f} of the frame area over all shots, {mt['text_mae_with_text']:.4f} over the {mt['shots_with_text']} shots with text"
    )

    if slow:
        raise SystemExit(
            f"FAIL: cascade is {ratio:.2f}x ContentDetector, below --min-speedup {a.min_speedup}"
        )


if __name__ == "__main__":
    main()
