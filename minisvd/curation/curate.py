"""The curation pipeline over a folder of videos (Blattmann et al. 2023, Sec. 3.1, App. C).

For each video: probe -> cut cascade -> clips snapped to keyframes -> clip files (packet copy) -> motion,
text, scores, captions per clip. The results live in `OUT/clips.csv` (one row a clip, one column a
score) and `OUT/videos.csv` (one row a source file, with its status and the reason if it failed).

Sources are the video files in FOLDER and its sub-folders (hidden folders and OUT left out), named by their
path relative to FOLDER (`sub/a.mov`); a clip is `OUT/clips/<name>_<start>_<end>.mp4` with `<name>` that
path with `/` as `__` (`sub__a.mov_000024_000048`), so `a.mp4` and `a.mov`, or `x/a.mp4` and `y/a.mp4`,
never share a clip file (names that still collide, or are very long, get a short hash of the path).

Resumable, and only what is complete on disk counts: a video is skipped when its row is `ok` with the same
size and mtime, it has exactly `n_clips` clip rows, each with every score filled and a clip file that
exists and demuxes to its `n_frames`. Anything less is redone for that video (cut detection again if
clip rows are missing; a clip file that is missing or broken is cut again, a valid one is kept; empty
cells are computed). Tables and clip files are written to a temporary file and renamed; the tables after
every video while a rewrite is quick, once they are large (a rewrite is O(rows)) only after `WRITE_GAP`
times the last rewrite's duration, and always at the end, Ctrl-C included; so a kill at any point loses at
most the videos finished since the last write (their valid clip files are kept and reused). A file that
cannot be read (zero length, cut before its index, an image, not a video) is recorded with its reason and
the run goes on; failed videos are tried again on the next run (`retry_failed=False` to skip them while
their size and mtime are unchanged). A video whose first frames decode and then the file breaks off keeps
those frames (clips are cut from them) and gets a `warning`. Videos are spread over worker processes, one
per core; a worker that dies (killed, out of memory) fails only its own video, which is tried once more in
a fresh process and then recorded as failed. `engine="ray"` (`--engine ray [--address ...]`) runs the same per-video function as Ray
tasks on a cluster instead (`engines.py`); the driver still writes the tables, and checks nothing on disk
itself: whether a video's clip files are all there is checked by its task.
"""

from __future__ import annotations

import os
import signal
import time
from collections import Counter, deque
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path

from tqdm import tqdm

from minisvd.curation.captions import DescribeFrame, DescribeMotion, JoinSummary
from minisvd.curation.clip_scores import check_clip_dir, make_scorer
from minisvd.curation.cuts import CutConfig, detect_cuts_in_frames, scenes, snap_to_keyframes
from minisvd.curation.engines import RayResults, import_ray
from minisvd.curation.filtering import score_choice
from minisvd.curation.motion import MotionConfig, describe_motion, flow_size, motion_score, sample_indices
from minisvd.curation.outputs import (
    CLIP_COLS,
    VIDEO_COLS,
    _cell,
    _missing,
    _well_named,
    clip_file_ok,
    clip_id,
    clip_names,
    cuts_recorded,
    list_sources,
    read_table,
    video_complete,
    write_table,
)
from minisvd.curation.text import text_score
from minisvd.curation.video_io import decode_small_yuv_until_error, extract_clip, iter_frames, probe

WORKER_DIED = "worker process died twice (killed? out of memory?)"
ENGINES = ("local", "ray")
WRITE_GAP = 10  # after a table rewrite that took w seconds, the next one waits 10 w: at most ~10% of the time
DIE_ON_ENV = (
    "MINISVD_CURATE_TEST_DIE_ON"  # test hook: a worker given this source (relative path) kills itself
)
SAMPLES_HINT = (
    "the sample videos (data_samples/) come with the git repository, not with the installed package: run from "
    'the repository root, or write toy videos with `python -c "from minisvd.data import write_raw_set; '
    "write_raw_set('toy_videos')\"` and curate toy_videos"
)


class NoInputFolder(FileNotFoundError):
    """The folder to curate does not exist (or is a file); the message says how to get sample videos."""


@dataclass
class CurateConfig:
    """What the pipeline runs with."""

    workers: int = 2
    min_clip_frames: int = 12  # shorter clips (after keyframe snapping) are not kept
    cuts: CutConfig = field(default_factory=CutConfig)
    motion: MotionConfig = field(default_factory=MotionConfig)
    clip_dir: str | None = None  # a local CLIP model folder; None = offline stand-in (not CLIP)
    aesthetic_weights: str | None = None
    retry_failed: bool = True  # False: a video that failed is skipped while its size and mtime are unchanged
    engine: str = "local"  # "local": worker processes here; "ray": Ray tasks (engines.py)
    ray_address: str | None = None  # engine="ray": a cluster (`auto`, `ray://head:10001`); None: a local Ray


# ----------------------------------------------------------------------------- one video (in a worker)
@dataclass
class Job:
    """One video to (re)do: where it is, its names, and what the tables already hold for it."""

    path: str
    rel: str  # path relative to the input folder: the `video` column
    name: str  # the clip files' prefix
    out: str
    old_video: dict | None
    old_clips: list[dict]
    cfg: CurateConfig
    verify: bool = False  # the tables may say it is complete: check its clip files first (`run_job`)


def _stat_row(path: str, rel: str) -> dict:
    st = os.stat(path)
    return {
        "video": rel,
        "size": st.st_size,
        "mtime": int(st.st_mtime),
        "status": "ok",
        "reason": "",
        "warning": "",
    }


def process_video(job: Job) -> tuple[dict, list[dict], Counter]:
    """Do what is missing for one video; returns its row, its clip rows and what was computed.

    Never raises: an error is recorded in the video row, and the clip rows computed so far are returned.
    """
    cfg, path = job.cfg, job.path
    done: Counter = Counter()
    clips: list[dict] = []
    try:
        vrow = _stat_row(path, job.rel)
    except OSError as e:
        return {"video": job.rel, "status": "error", "reason": f"{type(e).__name__}: {e}"[:300]}, [], done
    try:
        if vrow["size"] == 0:
            raise ValueError("zero-length file")
        info = probe(path)
        vrow.update(fps=info.fps, n_frames=info.n_frames)
        good = {c["clip_id"]: dict(c) for c in job.old_clips if _well_named(c, job.name)}
        old = job.old_video
        if cuts_recorded(old, len(good)):  # every clip row is there: keep the cuts
            clips = sorted(good.values(), key=lambda c: int(c["start"]))
            vrow.update({k: _cell(old, k) for k in ("n_frames", "n_transitions", "warning")})
        else:  # cut detection (again), keeping the rows (scores) of clips found before
            frames, _, error = decode_small_yuv_until_error(path, cfg.cuts.size)
            n = len(frames)
            if error is not None:
                vrow["warning"] = (
                    f"truncated: decoding stopped after {n} of {info.n_frames} frames "
                    f"({type(error).__name__}); clips cut from the {n} that decode"
                )[:300]
                vrow["n_frames"] = n
            res = detect_cuts_in_frames(frames, info.fps, cfg.cuts)
            keyframes = [k for k in info.keyframes if k < n]
            spans = snap_to_keyframes(scenes(res.transitions, n), keyframes, n, cfg.min_clip_frames)
            vrow["n_transitions"] = len(res.transitions)
            for s, e in spans:
                cid = clip_id(job.name, s, e)
                clips.append(good.get(cid) or {"clip_id": cid, "video": job.rel, "start": s, "end": e, "n_frames": e - s,
                                               "duration_s": round((e - s) / info.fps, 4)})  # fmt: skip
            done["cuts"] += 1
        vrow["n_clips"] = len(clips)
        clip_dir = Path(job.out) / "clips"
        clip_dir.mkdir(parents=True, exist_ok=True)
        scorer = None
        score_cols, _ = score_choice(cfg.clip_dir)
        for c in clips:
            f = clip_dir / f"{c['clip_id']}.mp4"
            if not clip_file_ok(f, c["n_frames"]):
                write_clip(path, f, int(c["start"]), int(c["end"]))
                done["extract"] += 1
            c["file"] = f"clips/{f.name}"
            todo = _missing(c, score_cols)
            if todo:
                scorer = scorer or make_scorer(cfg.clip_dir, cfg.aesthetic_weights)
                score_clip(c, f, info.height, info.width, todo, scorer, cfg)
                done.update(todo)
    except Exception as e:  # noqa: BLE001 - any failure is recorded, the run goes on
        vrow["status"], vrow["reason"] = "error", f"{type(e).__name__}: {e}"[:300]
    return vrow, clips, done


def run_job(job: Job) -> tuple[dict, list[dict], Counter] | None:
    """What a worker process or Ray task runs: None when `job.verify` finds the video complete on disk
    (nothing to write), else `process_video(job)`."""
    if os.environ.get(DIE_ON_ENV) == job.rel:
        os.kill(os.getpid(), signal.SIGKILL)  # test hook: die as the OOM killer would kill a worker
    if job.verify:
        score_cols, _ = score_choice(job.cfg.clip_dir)
        if video_complete(job.old_video, job.old_clips, job.name, Path(job.out), score_cols):
            return None
    return process_video(job)


def write_clip(src: str, f: Path, start: int, end: int) -> None:
    """Cut frames [start, end) of `src` into `f` through a temporary file, checked, then renamed."""
    tmp = f.with_name(f".{f.stem}.part.mp4")
    try:
        got = extract_clip(src, tmp, start, end)
        if got != end - start:
            raise ValueError(f"clip {f.name}: {got} of {end - start} frames copied")
        os.replace(tmp, f)
    finally:
        tmp.unlink(missing_ok=True)


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


def _run_jobs(jobs: list[Job], workers: int) -> Iterator[tuple[dict, list[dict], Counter] | None]:
    """Results of `process_video` for every job, as they finish (in this process when workers <= 1).

    Each worker is its own one-process pool fed one video at a time, so when a worker dies (SIGKILL,
    the OOM killer) we know which video it held: that video is tried once more in a fresh process and then
    recorded as failed; the other videos are not disturbed. (`multiprocessing.Pool` would wait for the
    dead worker's result forever.)
    """
    if workers <= 1:
        yield from map(process_video, jobs)
        return
    ctx = get_context("spawn")
    queue = deque((job, 1) for job in jobs)
    slots: list[ProcessPoolExecutor | None] = [None] * min(workers, len(jobs))
    running: dict = {}  # future -> (slot, job, attempt)
    try:
        while queue or running:
            busy = {slot for slot, _, _ in running.values()}
            for i in range(len(slots)):
                if queue and i not in busy:
                    slots[i] = slots[i] or ProcessPoolExecutor(1, mp_context=ctx)
                    job, attempt = queue.popleft()
                    running[slots[i].submit(run_job, job)] = (i, job, attempt)
            finished, _ = wait(list(running), return_when=FIRST_COMPLETED)
            for fut in finished:
                i, job, attempt = running.pop(fut)
                try:
                    yield fut.result()
                except BrokenProcessPool:
                    slots[i].shutdown(wait=False)
                    slots[i] = None
                    if attempt == 1:
                        queue.append((job, 2))
                    else:
                        yield _failed_result(job, WORKER_DIED)
                except Exception as e:  # noqa: BLE001 - e.g. a result that does not pickle
                    yield _failed_result(job, f"{type(e).__name__}: {e}")
    finally:
        for ex in slots:
            if ex is not None:
                ex.shutdown(wait=True, cancel_futures=True)


def _failed_result(job: Job, reason: str) -> tuple[dict, list[dict], Counter]:
    return _failed(job, reason), [], Counter()


def _failed(job: Job, reason: str) -> dict:
    try:
        row = _stat_row(job.path, job.rel)
    except OSError:
        row = {"video": job.rel}
    return {**row, "status": "error", "reason": reason[:300]}


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
    """Run (or resume) the pipeline over every video file in `folder` (and its sub-folders); tables in `out`."""
    cfg = cfg or CurateConfig()
    if cfg.engine not in ENGINES:
        raise ValueError(f"unknown engine {cfg.engine!r}: one of {', '.join(ENGINES)}")
    if cfg.engine == "ray":
        import_ray()  # not installed: one line naming the extra, before anything is written
    check_clip_dir(cfg.clip_dir)  # before anything is written or computed
    folder, out = Path(folder), Path(out)
    if not folder.is_dir():
        what = "not a folder" if folder.exists() else "no such folder"
        raise NoInputFolder(f"{what}: {folder} ({folder.resolve()}); {SAMPLES_HINT}")
    out.mkdir(parents=True, exist_ok=True)
    vpath, cpath = out / "videos.csv", out / "clips.csv"
    for tmp in (out / "clips").glob(".*.part.mp4"):  # left by a killed run
        tmp.unlink(missing_ok=True)
    videos = {r["video"]: r for r in read_table(vpath) if r.get("video")}
    by_video: dict[str, list[dict]] = {}
    for c in read_table(cpath):
        if c.get("video"):
            by_video.setdefault(c["video"], []).append(c)
    score_cols, _ = score_choice(cfg.clip_dir)
    sources = list_sources(folder, out)
    names = clip_names(rel for rel, _ in sources)
    remote = cfg.engine == "ray"  # workers on other machines: absolute paths; they check clip files, not we
    jobs = []
    for rel, p in sources:
        st, old = p.stat(), videos.get(rel)
        same = _cell(old, "size") == str(st.st_size) and _cell(old, "mtime") == str(int(st.st_mtime))
        if not same:  # new or changed file: start over for it
            old, by_video[rel] = None, []
        elif _cell(old, "status") == "error" and not cfg.retry_failed:
            continue  # failed before, unchanged, and failures are not to be retried
        elif not remote and video_complete(old, by_video.get(rel, []), names[rel], out, score_cols):
            continue
        path, where = (os.path.abspath(p), os.path.abspath(out)) if remote else (str(p), str(out))
        jobs.append(Job(path, rel, names[rel], where, old, by_video.get(rel, []), cfg, verify=remote))
    computed: Counter = Counter()
    if remote:
        results = RayResults(jobs, run_job, _failed_result, WORKER_DIED, cfg.workers, cfg.ray_address)
    else:
        results = _run_jobs(jobs, cfg.workers)
    tables = _Tables(cpath, vpath)
    try:
        for res in tqdm(results, total=len(jobs), desc="curate", disable=not progress):
            if res is None:  # complete on disk (checked by its worker): nothing changes
                continue
            vrow, vclips, done = res
            videos[vrow["video"]] = vrow
            by_video[vrow["video"]] = vclips
            computed.update(done)
            tables.write(by_video, videos, when_due=True)
    finally:
        try:
            results.close()
        finally:  # always at the end (also on Ctrl-C): what finished since the last write, or, with nothing
            # to do, the tables as the rules above read them (e.g. a clips table that was lost and rebuilt)
            tables.write(by_video, videos)
    return CurateReport(_all_videos(videos), _all_clips(by_video), computed)


class _Tables:
    """Writes both tables (clips first: a video row never runs ahead of its clip rows), each through a
    temporary file and a rename; with `when_due`, only once `WRITE_GAP` times the last write's duration
    has passed since it, so rewriting tables of a million rows (O(rows) each) does not dominate a run."""

    def __init__(self, cpath: Path, vpath: Path):
        self.cpath, self.vpath = cpath, vpath
        self.due = 0.0  # time.monotonic() from which the next write is due

    def write(self, by_video: dict[str, list[dict]], videos: dict[str, dict], when_due: bool = False) -> None:
        t = time.monotonic()
        if when_due and t < self.due:
            return
        write_table(self.cpath, _all_clips(by_video), CLIP_COLS)
        write_table(self.vpath, _all_videos(videos), VIDEO_COLS)
        end = time.monotonic()
        self.due = end + WRITE_GAP * (end - t)


def _all_videos(videos: dict[str, dict]) -> list[dict]:
    return [videos[v] for v in sorted(videos)]


def _all_clips(by_video: dict[str, list[dict]]) -> list[dict]:
    return [c for v in sorted(by_video) for c in by_video[v]]
