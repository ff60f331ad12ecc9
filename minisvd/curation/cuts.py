"""Cut detection: a cascade of three detectors at three frame rates (Blattmann et al. 2023, Sec. 3.1, App. C).

The paper splits long videos with "a cut detection pipeline in a cascaded manner at three different
FPS levels" (PySceneDetect with three thresholds), because a detector comparing neighbouring frames at
full rate sees a hard cut as one huge jump but a slow fade as many tiny steps. Here we write our own:

* **hard** (full rate, stride 1): the residual between frame t-1 and t after the best per-channel
  gain and offset (so brightness changes of fades cost nothing), divided by the median residual
  around t (so a fast pan that changes every frame does not fire). A cut must also separate the
  frames before it from the frames after it; a flash (one or two odd frames) fails that test.
* **medium** (fps / 4) and **slow** (fps / 12, i.e. 2 fps at 24 fps): the colour-histogram distance
  between frames s apart, on histograms median-filtered over 5 frames (flash suppression). A dissolve
  or fade makes a bump of width ~ its length + s; we keep bumps above a high threshold, extended down
  to a low one (hysteresis).

The cascade adds detections coarse-to-fine only where no finer detector already found a transition,
enforces a minimum scene length, and `snap_to_keyframes` turns the scenes into clips that start and
end on keyframes without crossing any transition, so they can be cut by packet copy.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from minisvd.curation.video_io import decode_small_yuv_ahead


@dataclass
class Transition:
    """A detected (or true) transition; `frame` is the first frame of the new shot (its midpoint if gradual)."""

    frame: int
    start: int  # first frame that may belong to the transition
    end: int  # last frame that may belong to the transition
    kind: str  # "cut" | "gradual"
    detector: str = ""  # which detector of the cascade found it
    score: float = 0.0


@dataclass
class GradualConfig:
    """One histogram detector of the cascade, looking at the video at fps / stride."""

    stride: int  # compare frames this far apart
    high: float  # a bump must reach this histogram distance (0..1) ...
    low: float  # ... and extends while above this one


@dataclass
class CutConfig:
    """Settings of the cut cascade. Defaults tuned at 24 fps; strides scale with fps (see `detect_cuts`)."""

    size: tuple[int, int] = (64, 36)  # analysis resolution (width, height); libswscale scales while decoding
    hard_ratio: float = 4.0  # residual(t) / local median residual needed for a hard cut
    hard_min: float = 2.0  # and at least this residual (grey levels, 0..255)
    hard_window: int = 12  # half-width of the local median window (frames)
    flash_ratio: float = 0.5  # a cut is a flash if frames around it match within flash_ratio * residual
    medium: GradualConfig = field(default_factory=lambda: GradualConfig(4, 0.20, 0.10))
    slow: GradualConfig = field(default_factory=lambda: GradualConfig(12, 0.20, 0.12))
    hist_median: int = 5  # temporal median over this many frames before the gradual detectors
    min_scene_len: int = 15  # frames; detections closer than this to a kept one are dropped
    reference_fps: float = 24.0  # the frame rate the strides above are meant for


# ----------------------------------------------------------------------------- per-frame features
# Frames are kept planar, (T, 3, n) with n = h * w pixels per plane, so that every per-frame sum below
# runs along the last, contiguous axis: numpy reduces that in one vectorised sweep, whereas reducing
# over the pixels of an interleaved (T, n, 3) array strides through memory and is ~10x slower.
def frame_features(frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(T, 3, h, w) uint8 small Y, Cb, Cr planes -> float planes (T, 3, h*w) and colour histograms (T, 3, 16).

    Histograms have 16 bins per channel, lightly smoothed across bins so that a brightness drift
    does not flip a whole image from one bin into the next. They come from `plane_histograms`.
    """
    return frames.reshape(len(frames), 3, -1).astype(np.float32), colour_histograms(frames)


def colour_histograms(frames: np.ndarray) -> np.ndarray:
    """(T, 3, h, w) uint8 -> (T, 3, 16) float32 histograms, smoothed across bins, each summing to 1."""
    T = len(frames)
    hist = plane_histograms(frames.reshape(T * 3, -1))
    hist = cv2.GaussianBlur(hist, (5, 1), 0.8).reshape(T, 3, 16)  # smooth across bins
    return hist / hist.sum(-1, keepdims=True)


@functools.lru_cache(maxsize=4)
def _row_labels(n: int) -> np.ndarray:
    """(256, n) uint8: row k is all k (the second image of `plane_histograms`' 2-D histogram)."""
    return np.repeat(np.arange(256, dtype=np.uint8), n).reshape(256, n)


def plane_histograms(planes: np.ndarray, bins: int = 16) -> np.ndarray:
    """Per-row histograms (value // (256 / bins)) of uint8 `planes` (P, n) -> (P, bins) float32 counts.

    One `cv2.calcHist` call counts 256 rows at once, as a 2-D histogram over (row label, value) with a
    second uint8 image that holds each pixel's row label (0..255): ~5x faster than offsetting the values
    of every row into its own range of one `np.bincount` (which first widens all values to int64).
    """
    P, n = planes.shape
    labels = _row_labels(n)
    out = np.empty((P, bins), np.float32)
    for s in range(0, P, 256):
        block = np.ascontiguousarray(planes[s : s + 256])
        k = len(block)
        out[s : s + k] = cv2.calcHist([labels[:k], block], [0, 1], None, [256, bins], [0, 256, 0, 256])[:k]
    return out


def gain_residual(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Mean |y - (a x + b)| after the least-squares gain a (kept in [0.6, 2]) and offset b, per channel.

    x, y: (..., 3, n) planes of two frames. A fade multiplies a frame by a gain, so it costs nothing here.
    """
    xc = x - x.mean(-1, keepdims=True)
    yc = y - y.mean(-1, keepdims=True)
    var = (xc * xc).mean(-1, keepdims=True)
    a = np.where(var > 1.0, (xc * yc).mean(-1, keepdims=True) / np.maximum(var, 1.0), 1.0)
    a = np.clip(a, 0.6, 2.0)  # a fade step is a gain near 1; unrelated images must not fit with a ~ 0
    return np.abs(yc - a * xc).mean((-2, -1))


def consecutive_residual(imgs: np.ndarray, chunk: int = 32) -> np.ndarray:
    """`gain_residual(imgs[:-1], imgs[1:])` (T - 1 values), bit for bit, with half the arithmetic.

    Every frame is centred and its variance taken once (not once as x and again as y), and the pairs
    go through in chunks of `chunk` frames so that the temporaries stay in cache.
    """
    return _centred_pairs_residual(*_centred(imgs), chunk)


def _centred(imgs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Float planes (T, 3, n) -> each plane minus its mean, and its variance (T, 3, 1)."""
    c = imgs - imgs.mean(-1, keepdims=True)
    return c, (c * c).mean(-1, keepdims=True)


def _centred_pairs_residual(c: np.ndarray, var: np.ndarray, chunk: int = 32) -> np.ndarray:
    """`gain_residual` of frames t-1 and t (t = 1 .. T-1) from centred planes c (T, 3, n) and their variances."""
    out = np.empty(max(len(c) - 1, 0), np.float32)
    for s in range(0, len(out), chunk):
        e = min(s + chunk, len(out))
        xc, yc, v = c[s:e], c[s + 1 : e + 1], var[s:e]
        a = np.where(v > 1.0, (xc * yc).mean(-1, keepdims=True) / np.maximum(v, 1.0), 1.0)
        d = np.multiply(np.clip(a, 0.6, 2.0), xc)
        np.subtract(yc, d, out=d)
        out[s:e] = np.abs(d, out=d).mean((-2, -1))
    return out


class CutFeatures:
    """The per-frame work of the cascade, done chunk by chunk as frames arrive (see `detect_cuts`).

    For each frame: its gain-compensated residual to the previous frame (`gain_residual`) and its colour
    histograms (`colour_histograms`). Every value is computed frame by frame (pair by pair), so any
    chunking gives the same bits as one call on the whole video.
    """

    def __init__(self) -> None:
        self.chunks: list[np.ndarray] = []
        self.residuals: list[np.ndarray] = [np.zeros(1, np.float32)]  # r(0) = 0: no previous frame
        self.histograms: list[np.ndarray] = []
        self._last: tuple[np.ndarray, np.ndarray] | None = (
            None  # centred planes and variance of the last frame
        )

    def add(self, frames: np.ndarray) -> None:
        """Add the next frames (n, 3, h, w) uint8."""
        if not len(frames):
            return
        c, var = _centred(frames.reshape(len(frames), 3, -1).astype(np.float32))
        if self._last is not None:  # the pair across the chunk boundary
            self.residuals.append(
                _centred_pairs_residual(np.concatenate([self._last[0], c[:1]]), self._last[1])
            )
        self.residuals.append(_centred_pairs_residual(c, var))
        self._last = c[-1:], var[-1:]
        self.histograms.append(colour_histograms(frames))
        self.chunks.append(frames)

    def cascade(self, fps: float = 24.0, cfg: CutConfig | None = None) -> CutResult:
        """Run the three detectors on the frames added so far (at least one)."""
        frames = self.chunks[0] if len(self.chunks) == 1 else np.concatenate(self.chunks)
        r = np.concatenate(self.residuals)[: len(frames)]
        return _cascade(frames, r, np.concatenate(self.histograms), fps, cfg)


def hist_distance(h1: np.ndarray, h2: np.ndarray) -> np.ndarray:
    """Half the L1 distance between histograms, averaged over the three channels: 0 same, 1 disjoint."""
    return 0.5 * np.abs(h1 - h2).sum(-1).mean(-1)


def nanmedian_rows(a: np.ndarray) -> np.ndarray:
    """Median of each row of `a`, ignoring NaNs (NaN for an all-NaN row); `np.nanmedian`, but vectorised."""
    s = np.sort(a, 1)  # NaNs sort last, so the k valid values of a row are s[row, :k]
    k = (~np.isnan(a)).sum(1)
    rows = np.arange(len(a))
    return 0.5 * (s[rows, (k - 1) // 2] + s[rows, k // 2])  # k = 0: index -1 and 0, both NaN


# ----------------------------------------------------------------------------- the three detectors
def hard_ratio(r: np.ndarray, cfg: CutConfig) -> np.ndarray:
    """r(t) / (local median of r around t + 0.5): the full-rate curve of the hard detector."""
    # One-sided medians over w frames, leaving out t and its neighbours; the calmer side sets the
    # baseline, so a cut from a fast pan into a still shot is measured against the still shot.
    w, T = cfg.hard_window, len(r)
    padded = np.r_[np.full(w, np.nan), np.nan, r[1:], np.full(w + 2, np.nan)]  # padded[i + w] = r[i]
    windows = np.lib.stride_tricks.sliding_window_view(padded, w - 1)  # windows[j]: frames j-w .. j-2
    left = windows[np.arange(T)]  # frames t-w .. t-2
    right = windows[np.arange(T) + w + 2]  # frames t+2 .. t+w
    base = np.nan_to_num(np.fmin(nanmedian_rows(left), nanmedian_rows(right)), nan=0.0)
    return r / (base + 0.5)


def detect_hard(imgs: np.ndarray, r: np.ndarray, ratio: np.ndarray, cfg: CutConfig) -> list[Transition]:
    """Hard cuts: peaks of the full-rate ratio curve that separate the frames before from those after.

    imgs: float planes (T, 3, n) from `frame_features`, or the uint8 frames (T, 3, h, w) themselves (then
    only the frames around peaks are converted).
    """
    planes = lambda idx: imgs[idx].reshape(len(idx), 3, -1).astype(np.float32, copy=False)  # noqa: E731
    cuts = []
    for t in range(1, len(r)):
        if ratio[t] < cfg.hard_ratio or r[t] < cfg.hard_min:
            continue
        if t + 1 < len(r) and ratio[t + 1] > ratio[t]:
            continue  # not the local peak
        # Flash suppression: a true cut separates every frame in [t-3, t-1] from every frame in [t, t+2].
        pairs = [(t - 1 - a, t + b) for a in range(3) for b in range(3) if (a, b) != (0, 0)]
        pairs = [(i, k) for i, k in pairs if i >= 0 and k < len(r)]
        if pairs:
            before, after = zip(*pairs)
            across = float(gain_residual(planes(list(before)), planes(list(after))).min())
            if across < cfg.flash_ratio * r[t]:
                continue
        cuts.append(Transition(t, t, t, "cut", "hard", float(ratio[t])))
    return cuts


def gradual_scores(hist: np.ndarray, stride: int, median: int) -> np.ndarray:
    """Histogram distance between frames `stride` apart on temporally median-filtered histograms."""
    k = median // 2
    padded = np.concatenate([hist[:1].repeat(k, 0), hist, hist[-1:].repeat(k, 0)])
    # the `median` shifted copies side by side on the last (contiguous) axis: np.median partitions it fast
    med = np.median(np.stack([padded[i : i + len(hist)] for i in range(median)], -1), -1)
    g = np.zeros(len(hist), np.float32)
    g[stride:] = hist_distance(med[:-stride], med[stride:])
    return g


def detect_gradual(g: np.ndarray, c: GradualConfig, name: str) -> list[Transition]:
    """Bumps of a gradual curve: runs above `low` that reach `high`, at least stride / 2 frames wide."""
    found, t, T = [], 0, len(g)
    while t < T:
        if g[t] <= c.low:
            t += 1
            continue
        r0 = t
        while t < T and g[t] > c.low:
            t += 1
        r1 = t - 1
        peak = float(g[r0 : r1 + 1].max())
        if peak >= c.high and r1 - r0 + 1 >= max(2, c.stride // 2):
            mid = (r0 - c.stride + r1 + 1) // 2
            found.append(Transition(max(mid, 0), max(r0 - c.stride, 0), r1, "gradual", name, peak))
    return found


# ----------------------------------------------------------------------------- the cascade
@dataclass
class CutResult:
    """Everything the cascade computed: the transitions and the curves (for plots and debugging)."""

    transitions: list[Transition]
    n_frames: int
    curves: dict[str, np.ndarray]


def scaled(cfg: CutConfig, fps: float) -> CutConfig:
    """The same detectors for another frame rate: strides and windows keep their length in seconds."""
    f = fps / cfg.reference_fps
    if abs(f - 1) < 0.1:
        return cfg
    st = lambda n: max(1, int(round(n * f)))  # noqa: E731
    return CutConfig(
        cfg.size, cfg.hard_ratio, cfg.hard_min, st(cfg.hard_window), cfg.flash_ratio,
        GradualConfig(st(cfg.medium.stride), cfg.medium.high, cfg.medium.low),
        GradualConfig(st(cfg.slow.stride), cfg.slow.high, cfg.slow.low),
        cfg.hist_median, st(cfg.min_scene_len), fps,
    )  # fmt: skip


def detect_cuts_in_frames(frames: np.ndarray, fps: float = 24.0, cfg: CutConfig | None = None) -> CutResult:
    """Run the cascade on small decoded frames (T, 3, h, w) uint8, Y, Cb, Cr planes (see `decode_small_yuv`)."""
    features = CutFeatures()
    features.add(frames)
    return features.cascade(fps, cfg)


def _cascade(
    frames: np.ndarray, r: np.ndarray, hist: np.ndarray, fps: float, cfg: CutConfig | None
) -> CutResult:
    """The detectors on the per-frame features: residual curve r (T,) and histograms (T, 3, 16)."""
    cfg = scaled(cfg or CutConfig(), fps)
    ratio = hard_ratio(r, cfg)
    found = detect_hard(frames, r, ratio, cfg)
    curves = {"hard_residual": r, "hard_ratio": ratio}
    for name, c in (("medium", cfg.medium), ("slow", cfg.slow)):
        g = gradual_scores(hist, c.stride, cfg.hist_median)
        curves[name] = g
        for tr in detect_gradual(g, c, name):
            # A bump that spans a transition already found (finer detector) is that transition seen again.
            if not any(
                o.start - 2 <= tr.end and tr.start <= o.end + 2 for o in found if o.kind == "cut"
            ) and not any(o.kind == "gradual" and o.start <= tr.end and tr.start <= o.end for o in found):
                found.append(tr)
    return CutResult(enforce_min_scene_len(found, cfg.min_scene_len), len(frames), curves)


def enforce_min_scene_len(found: list[Transition], min_len: int) -> list[Transition]:
    """Drop detections closer than `min_len` frames to one already kept (hard cuts and strong ones first)."""
    kept: list[Transition] = []
    for tr in sorted(found, key=lambda x: (x.kind != "cut", -x.score)):
        if all(abs(tr.frame - k.frame) >= min_len for k in kept):
            kept.append(tr)
    return sorted(kept, key=lambda x: x.frame)


def detect_cuts(path: str | Path, cfg: CutConfig | None = None) -> CutResult:
    """Decode `path` at the analysis size (small Y, Cb, Cr planes) and run the cascade.

    Decoding runs ahead in a background thread (`decode_small_yuv_ahead`, with FFmpeg's frame threading)
    while this thread computes the per-frame features of the chunks already decoded, so the two overlap;
    the result is the same as `detect_cuts_in_frames(decode_small_yuv(path, cfg.size)[0], fps, cfg)`.
    """
    cfg = cfg or CutConfig()
    features, fps = CutFeatures(), 0.0
    for chunk, rate in decode_small_yuv_ahead(path, cfg.size):
        features.add(chunk)
        fps = rate
    return features.cascade(fps, cfg)


# ----------------------------------------------------------------------------- scenes -> clips
def scenes(transitions: list[Transition], n_frames: int) -> list[tuple[int, int]]:
    """Frame ranges [start, end) between transitions, leaving out every frame a transition may cover."""
    out, s = [], 0
    for tr in sorted(transitions, key=lambda x: x.start):
        if tr.start > s:
            out.append((s, tr.start))
        s = max(s, tr.end + 1 if tr.kind == "gradual" else tr.frame)
    if s < n_frames:
        out.append((s, n_frames))
    return out


def snap_to_keyframes(
    scene_list: list[tuple[int, int]], keyframes: list[int], n_frames: int, min_frames: int = 1
) -> list[tuple[int, int]]:
    """Clips [start, end) that start on the first keyframe inside each scene and end on the last keyframe
    before the scene ends (or the video's end), so packet copy never crosses a transition."""
    kf = sorted(set(keyframes) | {n_frames})
    clips = []
    for s, e in scene_list:
        starts = [k for k in kf if s <= k < e]
        if not starts:
            continue
        ends = [k for k in kf if starts[0] < k <= e]
        if ends and ends[-1] - starts[0] >= min_frames:
            clips.append((starts[0], ends[-1]))
    return clips
