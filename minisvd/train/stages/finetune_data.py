"""The fine-tuning data: your clips cut into fixed windows, with the frame rate and motion score of each.

Two kinds of --data folder:

  - a `python -m minisvd curate` output folder (it holds clips.csv): every clip of the table, decoded at
    (height, width) by `CuratedClips` (cover + centre crop, cached in DATA/minisvd_cache/); fps = the table's
    n_frames / duration_s; motion = the table's curation score (px / frame of the source clip) x the resize
    factor, i.e. px / frame of the training frames;
  - any folder of video files (.mp4, .mov, ...; sub-folders too, hidden ones left out, as `curate` lists
    them): each file decoded the same way; fps from the container; motion measured on the decoded frames
    with the curation's own score (`measure_motion`: Farneback at 2 fps on a 90-px short side, median over
    pairs).

A clip of n frames gives its non-overlapping windows of num_frames frames, every `stride`-th frame
(span = (num_frames - 1) * stride + 1), at most `max_windows` of them, starting at frame 0. With stride s a
window's frame rate is fps / s and its motion per frame s times the clip's.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import torch

from minisvd.curation.outputs import VIDEO_EXT, list_sources


def window_starts(n: int, num_frames: int, stride: int, max_windows: int) -> list[int]:
    """Starts of the non-overlapping windows of a clip of n frames (at most max_windows)."""
    span = (num_frames - 1) * stride + 1
    return list(range(0, n - span + 1, span))[:max_windows]


def _curated_clips(folder: Path, height: int, width: int, num_frames: int, stride: int):
    """(clip_id, frames uint8 (T, 3, H, W), fps, motion px/frame of these frames) of a curate output folder."""
    from minisvd.data.curated import CuratedClips, as_float

    cc = CuratedClips(folder, size=(height, width), num_frames=num_frames, filters=None, stride=stride,
                      sample="first", progress=True)  # fmt: skip
    for row, first, n, scale in cc.clips:
        fps = as_float(row.get("n_frames")) / as_float(row.get("duration_s"))
        motion = as_float(row.get("motion")) * scale
        yield row["clip_id"], cc.frames[first : first + n], fps, motion


def _video_files(files: list[tuple[str, Path]], height: int, width: int):
    """(relative path, frames, fps, measured motion) of each video file."""
    from minisvd.curation.video_io import probe
    from minisvd.data.curated import decode_clip
    from minisvd.data.motion_bucket import measure_motion

    for rel, path in files:
        try:
            fps = probe(path).fps
            frames, _ = decode_clip(path, height, width, max_frames=None)
        except Exception as e:  # noqa: BLE001 - an unreadable file is skipped with one line
            print(f"skipped {path}: {type(e).__name__}: {e}"[:300])
            continue
        frames = torch.from_numpy(frames)
        yield rel, frames, fps, measure_motion(frames, fps)


def load_windows(
    folder: Path, height: int, width: int, num_frames: int, stride: int = 1, max_windows: int = 4
) -> dict:
    """All training windows of `folder`: frames (N, F, 3, H, W) uint8, fps (N,), motion (N,) px / frame of the
    window's frames, ids ["clip@start"], and `key` (identifies the data and settings, for caches)."""
    if not folder.is_dir():
        raise FileNotFoundError(f"--data {folder} is not a folder")
    table = folder / "clips.csv"
    if table.exists():  # the data's identity (for caches): the table's bytes, or each file's size and mtime
        clips = _curated_clips(folder, height, width, num_frames, stride)
        data_key = [hashlib.sha1(table.read_bytes()).hexdigest()]
    else:
        files = list_sources(folder, folder / "minisvd_cache")  # as curate finds them: sub-folders too
        if not files:
            raise FileNotFoundError(
                f"{folder} holds no clips.csv and no video files ({', '.join(sorted(VIDEO_EXT))}): pass a curate "
                "output folder (`python -m minisvd curate VIDEOS --out DIR`) or a folder of videos"
            )
        clips = _video_files(files, height, width)
        data_key = [[rel, p.stat().st_size, p.stat().st_mtime_ns] for rel, p in files]
    frames, fps, motion, ids = [], [], [], []
    for clip_id, clip, clip_fps, clip_motion in clips:
        for s in window_starts(len(clip), num_frames, stride, max_windows):
            frames.append(clip[s : s + (num_frames - 1) * stride + 1 : stride])
            fps.append(clip_fps / stride if math.isfinite(clip_fps) else float("nan"))
            motion.append(clip_motion * stride)
            ids.append(f"{clip_id}@{s}")
    if not frames:
        span = (num_frames - 1) * stride + 1
        raise ValueError(f"no clip in {folder} has {span} frames ({num_frames} frames at stride {stride})")
    key = hashlib.sha1(json.dumps([data_key, ids]).encode()).hexdigest()[:16]
    fps_t = torch.tensor(fps, dtype=torch.float32)
    fps_t = torch.where(torch.isfinite(fps_t), fps_t.round().clamp(min=1), torch.full_like(fps_t, 7.0))
    return {
        "frames": torch.stack(frames),  # (N, F, 3, H, W) uint8
        "fps": fps_t,  # unknown frame rate -> 7, SVD's default
        "motion": torch.tensor(np.asarray(motion, dtype=np.float64)),  # NaN -> bucket 127 downstream
        "ids": ids,
        "key": key,
    }
