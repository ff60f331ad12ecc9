"""The curation pipeline over a folder of videos (Blattmann et al. 2023, Sec. 3.1, App. C).

For each video: probe -> cut cascade -> clips snapped to keyframes -> clip files (packet copy) -> motion,
text, scores, captions per clip. The results live in `OUT/clips.csv` (one row a clip, one column a
score) and `OUT/videos.csv` (one row a source file, with its status and the reason if it failed).

Resumable: each step fills only the columns still empty, and the tables are rewritten (atomically)
after every video, so an interrupted run loses at most the video in flight and a second run computes
only what is missing. A file that cannot be read (zero length, truncated, not a video) is recorded with
its reason and the run goes on. Videos are spread over worker processes, one per core.
"""

from __future__ import annotations

import csv
import os
from collections import Counter
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path

from tqdm import tqdm

from minisvd.curation.captions import DescribeFrame, DescribeMotion, JoinSummary
from minisvd.curation.clip_scores import check_clip_dir, make_scorer
from minisvd.curation.cuts import CutConfig, detect_cuts_in_frames, scenes, snap_to_keyframes
from minisvd.curation.filtering import column, score_choice  # noqa: F401  (column: re-exported for notebook 04)
from minisvd.curation.motion import MotionConfig, describe_motion, flow_size, motion_score, sample_indices
from minisvd.curation.text import text_score
from minisvd.curation.video_io import decode_small_yuv, extract_clip, iter_frames, probe

VIDEO_EXT = {".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v"}
VIDEO_COLS = ["video", "size", "mtime", "status", "reason", "fps", "n_frames", "n_transitions", "n_clips"]
CLIP_COLS = ["clip_id", "video", "start", "end", "n_frames", "duration_s", "file", "motion", "motion_kind",
             "text_area", "standin_aesthetic", "standin_consistency", "clip_score", "clip_aesthetic",
             "caption_frame", "caption_clip", "caption_summary"]  # fmt: skip
STEPS = {"motion": ["motion", "motion_kind"], "text": ["text_area"], "captions": ["caption_summary"]}


@dataclass
class CurateConfig:
    """What the pipeline runs with."""

    workers: int = 2
    min_clip_frames: int = 12  # shorter clips (after keyframe snapping) are not kept
    cuts: CutConfig = field(default_factory=CutConfig)
    motion: MotionConfig = field(default_factory=MotionConfig)
    clip_dir: str | None = None  # a local CLIP model folder; None = offline stand-in (not CLIP)
    aesthetic_weights: str | None = None


# ----------------------------------------------------------------------------- tables on disk
def read_table(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def write_table(path: Path, rows: list[dict], cols: list[str]) -> None:
    """Write via a temporary file and rename, so a crash never leaves half a table."""
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    os.replace(tmp, path)


def _missing(row: dict, scorer_cols: list[str]) -> list[str]:
    """The steps whose columns are still empty in this clip row."""
    steps = [s for s, c in STEPS.items() if any(row.get(k, "") == "" for k in c)]
    if any(row.get(k, "") == "" for k in scorer_cols):
        steps.append("scores")
    return steps


# ----------------------------------------------------------------------------- one video (in a worker)
def process_video(
    path: str, out: str, old_clips: list[dict], cfg: CurateConfig
) -> tuple[dict, list[dict], Counter]:
    """Do what is missing for one video; returns its row, its clip rows and what was computed.

    Never raises: an error is recorded in the video row, and the clip rows computed so far are returned.
    """
    st = os.stat(path)
    vrow = {
        "video": Path(path).name,
        "size": st.st_size,
        "mtime": int(st.st_mtime),
        "status": "ok",
        "reason": "",
    }
    done: Counter = Counter()
    clips = [dict(c) for c in old_clips]
    try:
        if st.st_size == 0:
            raise ValueError("zero-length file")
        info = probe(path)
        vrow.update(fps=info.fps, n_frames=info.n_frames)
        if not clips:  # cut detection and clip extraction
            frames, _ = decode_small_yuv(path, cfg.cuts.size)
            res = detect_cuts_in_frames(frames, info.fps, cfg.cuts)
            spans = snap_to_keyframes(
                scenes(res.transitions, len(frames)), info.keyframes, len(frames), cfg.min_clip_frames
            )
            vrow["n_transitions"] = len(res.transitions)
            stem = Path(path).stem
            for s, e in spans:
                clips.append({"clip_id": f"{stem}_{s:06d}_{e:06d}", "video": vrow["video"], "start": s, "end": e,
                              "n_frames": e - s, "duration_s": round((e - s) / info.fps, 4)})  # fmt: skip
            done["cuts"] += 1
        vrow["n_clips"] = len(clips)
        clip_dir = Path(out) / "clips"
        clip_dir.mkdir(parents=True, exist_ok=True)
        scorer = None
        score_cols, _ = score_choice(cfg.clip_dir)
        for c in clips:
            f = clip_dir / f"{c['clip_id']}.mp4"
            if not f.exists() or c.get("file", "") == "":
                extract_clip(path, f, int(c["start"]), int(c["end"]))
                c["file"] = str(Path("clips") / f.name)
                done["extract"] += 1
            scorer = scorer or make_scorer(cfg.clip_dir, cfg.aesthetic_weights)
            todo = _missing(c, score_cols)
            if todo:
                score_clip(c, f, info.height, info.width, todo, scorer, cfg)
                done.update(todo)
    except Exception as e:  # noqa: BLE001 - any failure is recorded, the run goes on
        vrow["status"], vrow["reason"] = "error", f"{type(e).__name__}: {e}"[:300]
    return vrow, clips, done


def score_clip(c: dict, f: Path, height: int, width: int, todo: list[str], scorer, cfg: CurateConfig) -> None:
    """One decode of the clip file: grey frames for the flow at 2 fps, RGB first / middle / last."""
    n = int(c["n_frames"])
    fps = n / float(c["duration_s"])
    want_rgb = {0, n // 2, n - 1}
    want_grey = set(sample_indices(0, n, fps, cfg.motion))
    fw, fh = flow_size(width, height, cfg.motion.flow_short_side)
    rgb, grey = {}, {}
    for i, fr in iter_frames(f):
        if i in want_rgb:
            rgb[i] = fr
        if i in want_grey:
            import cv2

            grey[i] = cv2.resize(cv2.cvtColor(fr, cv2.COLOR_RGB2GRAY), (fw, fh), interpolation=cv2.INTER_AREA)
    three = [rgb[k] for k in sorted(rgb)]
    if "motion" in todo or "captions" in todo:
        m = motion_score(grey, min(height, width), cfg.motion)
        desc = describe_motion(m.maps)
        c["motion"], c["motion_kind"] = round(m.score, 5), desc["kind"]
    if "text" in todo:
        c["text_area"] = round(text_score(three).score, 5)
    if "captions" in todo:
        mid = three[len(three) // 2]
        c["caption_frame"] = DescribeFrame()(mid, float(c["text_area"]))
        c["caption_clip"] = DescribeMotion()(three, desc)
        c["caption_summary"] = JoinSummary()(c["caption_frame"], c["caption_clip"])
    if "scores" in todo:
        c.update({k: round(v, 5) for k, v in scorer.score(three, str(c.get("caption_summary", ""))).items()})


def _work(args):
    return process_video(*args)


# ----------------------------------------------------------------------------- the folder
@dataclass
class CurateReport:
    """What a run did."""

    videos: list[dict]
    clips: list[dict]
    computed: Counter


def curate_folder(
    folder: str | Path, out: str | Path, cfg: CurateConfig | None = None, progress: bool = True
) -> CurateReport:
    """Run (or resume) the pipeline over every video file in `folder`; tables in `out`."""
    cfg = cfg or CurateConfig()
    check_clip_dir(cfg.clip_dir)  # before anything is written or computed
    folder, out = Path(folder), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    vpath, cpath = out / "videos.csv", out / "clips.csv"
    videos = {r["video"]: r for r in read_table(vpath)}
    clips = read_table(cpath)
    by_video: dict[str, list[dict]] = {}
    for c in clips:
        by_video.setdefault(c["video"], []).append(c)
    score_cols, _ = score_choice(cfg.clip_dir)
    jobs = []
    for p in sorted(folder.iterdir()):
        if p.suffix.lower() not in VIDEO_EXT or not p.is_file():
            continue
        st, old = p.stat(), videos.get(p.name)
        same = old and old["size"] == str(st.st_size) and old["mtime"] == str(int(st.st_mtime))
        if not same:
            by_video[p.name] = []  # new or changed file: start over for it
        elif old["status"] == "error" or (
            old.get("n_clips", "") != ""
            and all(
                not _missing(c, score_cols) and c.get("file") and (out / c["file"]).exists()
                for c in by_video.get(p.name, [])
            )
        ):
            continue  # recorded already (done, or failed with its reason)
        jobs.append((str(p), str(out), by_video.get(p.name, []), cfg))
    computed: Counter = Counter()
    if jobs:
        ctx = get_context("spawn") if cfg.workers > 1 else None
        pool = ctx.Pool(min(cfg.workers, len(jobs))) if ctx else None
        results = pool.imap_unordered(_work, jobs) if pool else map(_work, jobs)
        try:
            for vrow, vclips, done in tqdm(results, total=len(jobs), desc="curate", disable=not progress):
                videos[vrow["video"]] = {**videos.get(vrow["video"], {}), **vrow}
                by_video[vrow["video"]] = vclips
                computed.update(done)
                write_table(vpath, list(videos.values()), VIDEO_COLS)
                write_table(cpath, [c for v in sorted(by_video) for c in by_video[v]], CLIP_COLS)
        finally:
            if pool:
                pool.close()
                pool.join()
    if not vpath.exists():
        write_table(vpath, [], VIDEO_COLS)
        write_table(cpath, [], CLIP_COLS)
    all_clips = [c for v in sorted(by_video) for c in by_video[v]]
    return CurateReport(list(videos.values()), all_clips, computed)
