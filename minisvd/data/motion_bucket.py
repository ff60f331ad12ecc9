"""Motion buckets: from the curation motion score to SVD's `motion_bucket_id` (0..255), and back.

SVD conditions its UNet on `motion_bucket_id` (Blattmann et al. 2023, Sec. 4.1 and App. D; see
`minisvd.conditioning.micro`), an integer in 0..255 that is "more motion when higher" and 127 by
default. The paper computes an optical-flow motion score per clip (App. C) but Stability never
published how scores were turned into buckets, so we define our own mapping, plainly:

1. **The score** is the curation score of `minisvd.curation.motion.motion_score`: the mean Farneback
   flow magnitude in pixels per frame, between frame pairs sampled at 2 fps (median over pairs), in
   pixels of the clip's own resolution. `measure_motion(frames, fps)` computes exactly that score for a
   tensor clip (same sampling, same resize to a 90-px short side, same Farneback settings).
2. **Resolution.** A clip shown at twice the size moves twice as many pixels per frame, so the score is
   first rescaled to a reference short side of 64 px: `m64 = score * 64 / short_side`. The same clip at
   32 or 64 px (or a 256-px curated clip resized to 32) then gets the same bucket.
3. **The curve.** `bucket = 255 * log(1 + m64 / knee) / log(1 + full / knee)`, rounded and clipped to
   0..255: linear for small motion (below `knee`), logarithmic above (each doubling of a fast motion adds
   about the same number of buckets), 255 at `full`. It is strictly increasing in the score.

**Constants, measured on the toy world** (`WorldConfig()` at 32 and at 64 px, 600 clips each, the real
score from `measure_motion`, rescaled to 64 px; `scripts/make_toy_world.py calibrate`): fully static
clips score at most 0.011 px/frame, the 25th percentile is 0.23-0.24, the median 0.74, the 95th
percentile 3.2-3.3, the 99th 4.5 and the largest 4.8. We set `knee = 0.25` (about the 25th percentile;
below it motion is barely visible at 64 px) and `full = 5.0` (just above the largest toy motion), so toy
clips fill the buckets: 25th / 50th / 75th / 95th percentile at buckets 55 / 116 / 164 / 220, the median
clip near SVD's default of 127.

**The score of a generated toy clip without running Farneback.** Measuring costs ~5-15 ms per clip, too
slow for clips made on the fly (the budget is ~1 ms per clip). `predict_score` predicts it from the
exact flow field, which the renderer knows: Farneback fits one motion per window by least squares, so
the flow it reports at a pixel is roughly the average of the true flow in a window around it, weighted
by the texture (squared image gradient) there. Averaging over a box half the frame wide, with no gain
factor, gives Spearman 0.958 (32 px) and 0.950 (64 px) against the measured score on 600 clips each, and
a median ratio measured / predicted of 0.99 / 1.00 (`tests/test_data.py` checks Spearman >= 0.9 and a
median ratio within 0.75..1.33 on 64 other clips). The plain mean of the exact flow ranks clips worse
(Spearman 0.86): Farneback spreads a small object's motion over its window, and misses it over busy
textures. Cached datasets (`ToyClips(cache=True)`) store the real measured score instead.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch

from minisvd.curation.motion import MotionConfig, flow_size, motion_score, sample_indices

REFERENCE_SIDE = 64  # scores are compared at this short side (pixels per frame at 64 px)
KNEE = 0.25  # px / frame at 64 px: below this the bucket grows linearly with the score
FULL = 5.0  # px / frame at 64 px: bucket 255 (the fastest toy clips)


def motion_bucket_id(
    motion_score,  # float, numpy array or tensor: the curation score, px / frame at `short_side`
    short_side: float = REFERENCE_SIDE,  # short side (px) of the frames the score was measured on
    knee: float = KNEE,
    full: float = FULL,
    reference_side: float = REFERENCE_SIDE,
):
    """Our motion bucket 0..255 (int, or an integer array / long tensor like the input); NaN -> 127."""
    as_tensor = isinstance(motion_score, torch.Tensor)
    m = np.asarray(motion_score.detach().cpu() if as_tensor else motion_score, dtype=np.float64)
    m64 = np.maximum(m, 0) * reference_side / short_side
    b = 255 * np.log1p(m64 / knee) / np.log1p(full / knee)
    b = np.clip(np.round(np.nan_to_num(b, nan=127.0)), 0, 255).astype(np.int64)
    if as_tensor:
        return torch.from_numpy(b)
    return int(b) if b.ndim == 0 else b


def motion_from_bucket(
    bucket, short_side: float = REFERENCE_SIDE, knee: float = KNEE, full: float = FULL,
    reference_side: float = REFERENCE_SIDE,
) -> float | np.ndarray:  # fmt: skip
    """The score (px / frame at `short_side`) at the centre of a bucket: the inverse of `motion_bucket_id`."""
    b = np.asarray(bucket, dtype=np.float64)
    m64 = knee * np.expm1(b / 255 * np.log1p(full / knee))
    out = m64 * short_side / reference_side
    return float(out) if out.ndim == 0 else out


# ----------------------------------------------------------------------------- measuring a tensor clip
def to_uint8_frames(frames, value_range: str = "auto") -> np.ndarray:
    """(F, 3, H, W) tensor or array -> (F, H, W, 3) uint8 RGB.

    uint8 is taken as 0..255. For floats `value_range` is "0,1", "-1,1" or "auto" ("-1,1" if any value is
    negative, else "0,1"; a [-1, 1] clip with no negative value, i.e. every pixel at least mid-grey,
    would be misread, so pass the range when you know it).
    """
    x = torch.as_tensor(frames).detach().cpu()
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"frames must be (F, 3, H, W), got shape {tuple(x.shape)}")
    if x.dtype != torch.uint8:
        x = x.float()
        if value_range == "auto":
            value_range = "-1,1" if float(x.min()) < 0 else "0,1"
        if value_range == "-1,1":
            x = (x + 1) / 2
        elif value_range != "0,1":
            raise ValueError(f"value_range must be 'auto', '0,1' or '-1,1', got {value_range!r}")
        x = (x.clamp(0, 1) * 255).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).contiguous().numpy()


def measure_motion(
    frames, fps: float, config: MotionConfig | None = None, value_range: str = "auto"
) -> float:
    """The curation motion score of a clip (F, 3, H, W) at `fps`: px / frame at the clip's resolution.

    The same steps as `minisvd.curation.curate.score_clip` on a decoded clip file: frames sampled at
    2 fps (each with the frame after it), RGB -> grey, INTER_AREA resize to a 90-px short side,
    Farneback, mean magnitude, median over pairs. Clips shorter than one pair give NaN.
    """
    cfg = config or MotionConfig()
    rgb = to_uint8_frames(frames, value_range)  # (F, H, W, 3)
    F, H, W = rgb.shape[:3]
    fw, fh = flow_size(W, H, cfg.flow_short_side)
    grey = {
        i: cv2.resize(cv2.cvtColor(rgb[i], cv2.COLOR_RGB2GRAY), (fw, fh), interpolation=cv2.INTER_AREA)
        for i in sample_indices(0, F, fps, cfg)
    }
    return motion_score(grey, min(H, W), cfg).score


# ----------------------------------------------------------------------------- predicting it from the true flow
def score_pairs(num_frames: int, fps: float) -> list[int]:
    """First frames i of the pairs (i, i + 1) that the curation score compares (see `sample_indices`)."""
    idx = set(sample_indices(0, num_frames, fps))
    return sorted(i for i in idx if i + 1 in idx)


def predict_score(rgb: np.ndarray, flow: np.ndarray, window: float = 0.5) -> float:
    """Predict the Farneback score of one frame pair from the exact flow: px / frame.

    rgb: (H, W, 3) uint8, the first frame of the pair; flow: (H, W, 2) its true motion to the next frame.
    Farneback's reported flow at a pixel ~ the texture-weighted mean of the true flow over a box of
    `window` x the short side around it (weight |grad I|^2 + 1); the score is its mean magnitude.
    """
    g = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY).astype(np.float32)
    gx = cv2.Sobel(g, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(g, cv2.CV_32F, 0, 1, ksize=3)
    w = gx * gx + gy * gy + 1  # (H, W) texture weight
    k = max(1, round(window * min(g.shape)))
    num = cv2.blur(w[..., None] * flow.astype(np.float32), (k, k))  # (H, W, 2)
    den = cv2.blur(w, (k, k))[..., None]
    return float(np.linalg.norm(num / den, axis=-1).mean())
