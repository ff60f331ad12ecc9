"""Motion scores from dense optical flow (Blattmann et al. 2023, App. C, "optical flow" filtering).

The paper computes Farneback optical flow (OpenCV) at 2 fps, keeps the flow maps small (16 px on the
short side) and scores each clip by the mean flow magnitude; the 25% most static clips are dropped,
because a model trained on them learns to make still videos. We sample at 2 fps and take the flow
from each sampled frame to the frame right after it: flow across 0.5 s would move fast pans by tens
of pixels, beyond what Farneback tracks reliably at small sizes. Our score is in pixels per frame at
the clip's own resolution, so it can be compared with a known camera speed.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


@dataclass
class MotionConfig:
    """Farneback settings and the sampling rate of the paper."""

    sample_fps: float = 2.0  # flow between frames 0.5 s apart
    flow_short_side: int = 90  # frames are shrunk to this before the flow (speed; pyramids handle the rest)
    map_short_side: int = 16  # the stored flow maps, as in the paper
    pyr_scale: float = 0.5
    levels: int = 5
    winsize: int = 25  # wide windows carry the flow into flat regions (sky, walls)
    iterations: int = 3
    poly_n: int = 5
    poly_sigma: float = 1.2


def flow_size(width: int, height: int, short_side: int) -> tuple[int, int]:
    """(w, h) with the given short side and the same aspect ratio."""
    s = short_side / min(width, height)
    return max(1, round(width * s)), max(1, round(height * s))


def farneback(prev: np.ndarray, nxt: np.ndarray, cfg: MotionConfig) -> np.ndarray:
    """Dense flow (h, w, 2) from one grey frame to the next, in pixels of these frames."""
    return cv2.calcOpticalFlowFarneback(
        prev, nxt, None, cfg.pyr_scale, cfg.levels, cfg.winsize, cfg.iterations, cfg.poly_n, cfg.poly_sigma, 0
    )


@dataclass
class MotionResult:
    """Mean flow magnitude and the small flow maps it came from."""

    score: float  # mean |flow| over the frame (median over sampled pairs), source pixels per frame
    maps: np.ndarray  # (N, h16, w16, 2) flow in source pixels per frame, one map per sampled pair


def sample_indices(start: int, end: int, fps: float, cfg: MotionConfig | None = None) -> list[int]:
    """Frames to decode for [start, end): every fps / sample_fps frames, each with the frame after it."""
    step = max(1, round(fps / (cfg or MotionConfig()).sample_fps))
    return sorted({i + k for i in range(start, end - 1, step) for k in (0, 1)})


def motion_score(
    grey: dict[int, np.ndarray],  # frame index -> grey frame at the flow size (see `sample_indices`)
    source_short_side: int,  # short side of the source video, to express flow in its pixels
    cfg: MotionConfig | None = None,
) -> MotionResult:
    """Farneback flow from each sampled frame to the next frame -> mean magnitude, source px per frame."""
    cfg = cfg or MotionConfig()
    pairs = [(grey[i], grey[i + 1]) for i in sorted(grey) if i + 1 in grey]
    if not pairs:
        return MotionResult(float("nan"), np.zeros((0, 1, 1, 2), np.float32))
    h, w = pairs[0][0].shape[:2]
    to_source = source_short_side / min(h, w)  # flow px at the flow size -> source px
    mw, mh = flow_size(w, h, cfg.map_short_side)
    maps, mags = [], []
    for a, b in pairs:
        f = farneback(a, b, cfg) * to_source
        mags.append(float(np.linalg.norm(f, axis=-1).mean()))
        maps.append(cv2.resize(f, (mw, mh), interpolation=cv2.INTER_AREA))
    # Median over the sampled pairs: a flash or a single bad frame spoils one pair, not the clip.
    return MotionResult(float(np.median(mags)), np.stack(maps).astype(np.float32))


def describe_motion(maps: np.ndarray, still: float = 0.15) -> dict[str, float | str]:
    """Camera motion read off the flow maps: mean translation, zoom (divergence), rotation (curl).

    Image content flows opposite to the camera: content moving left means the camera pans right.
    """
    if len(maps) == 0:
        return {"kind": "unknown"}
    f = maps.mean(0)  # (h, w, 2)
    h, w = f.shape[:2]
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    xs, ys = xs - (w - 1) / 2, ys - (h - 1) / 2
    r2 = (xs**2 + ys**2).mean()
    tx, ty = float(f[..., 0].mean()), float(f[..., 1].mean())
    div = float(((f[..., 0] - tx) * xs + (f[..., 1] - ty) * ys).mean() / r2)  # relative scale change / frame
    curl = float(((f[..., 1] - ty) * xs - (f[..., 0] - tx) * ys).mean() / r2)  # radians / frame
    mag = float(np.linalg.norm(maps, axis=-1).mean())
    radius = float(np.sqrt(r2)) * (16 / min(h, w))
    zoom, rot = abs(div) * radius * 10, abs(curl) * radius * 10  # rough px/frame equivalents
    if mag < still:
        kind = "static"
    elif max(zoom, rot) > np.hypot(tx, ty):
        kind = ("zoom in" if div > 0 else "zoom out") if zoom >= rot else "rotation"
    elif abs(tx) >= abs(ty):
        kind = "pan right" if tx < 0 else "pan left"
    else:
        kind = "tilt down" if ty < 0 else "tilt up"
    return {"kind": kind, "tx": tx, "ty": ty, "divergence": div, "curl": curl, "magnitude": mag}
