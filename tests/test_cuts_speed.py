"""The faster cut-detection path (issue 12.3) computes exactly what the previous one did.

The speed itself is measured by `benchmarks/bench_curation.py`, not here (load from other processes
would make a timed test flaky). Here: on a small generated H.264 video with a hard cut and a dissolve,
the byte-buffer decoding with frame threading gives the same small frames as the previous per-frame
`np.stack` decoding (tolerance: none, they are equal byte for byte), also when decoded ahead in a thread
chunk by chunk; the 2-D `cv2.calcHist` histograms equal the `np.bincount` ones, the chunked consecutive
residual equals `gain_residual` bit for bit, features added chunk by chunk equal the whole-video ones,
and so `detect_cuts` finds the same transitions (same scores) as the previous code on the previous frames.
"""

from __future__ import annotations

import threading

import av
import cv2
import numpy as np
import pytest
from av.video.reformatter import VideoReformatter
from skimage import data as skdata

from minisvd.curation import cuts
from minisvd.curation.video_io import (
    decode_small_yuv,
    decode_small_yuv_ahead,
    decode_small_yuv_until_error,
    plane_array,
    write_video,
)
from minisvd.data.raw import dissolve


def previous_decode(path, size=(64, 36)) -> np.ndarray:
    """The decoding before issue 12.3: PyAV's default threading, one np.stack per frame."""
    w, h = size
    scaler, out = VideoReformatter(), []
    with av.open(str(path)) as container:
        for frame in container.decode(container.streams.video[0]):
            small = scaler.reformat(frame, w, h, "yuv444p", interpolation="AREA", threads=1)
            out.append(np.stack([plane_array(p, h, w) for p in small.planes]))
    return np.stack(out)


def previous_features(frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`frame_features` before issue 12.3: all histograms from one np.bincount."""
    T = len(frames)
    planes = frames.reshape(T * 3, -1)
    bins = (planes >> 4).astype(np.intp) + 16 * np.arange(T * 3)[:, None]
    hist = np.bincount(bins.ravel(), minlength=T * 48).reshape(T * 3, 16).astype(np.float32)
    hist = cv2.GaussianBlur(hist, (5, 1), 0.8).reshape(T, 3, 16)
    return planes.reshape(T, 3, -1).astype(np.float32), hist / hist.sum(-1, keepdims=True)


def previous_cascade(frames: np.ndarray, fps: float) -> list[tuple]:
    """`detect_cuts_in_frames` before issue 12.3: whole-video features, pairwise `gain_residual`, median on axis 0."""
    cfg = cuts.scaled(cuts.CutConfig(), fps)
    imgs, hist = previous_features(frames)
    r = np.zeros(len(imgs), np.float32)
    r[1:] = cuts.gain_residual(imgs[:-1], imgs[1:])
    ratio = cuts.hard_ratio(r, cfg)
    found = cuts.detect_hard(imgs, r, ratio, cfg)
    for name, c in (("medium", cfg.medium), ("slow", cfg.slow)):
        k = cfg.hist_median // 2
        padded = np.concatenate([hist[:1].repeat(k, 0), hist, hist[-1:].repeat(k, 0)])
        med = np.median(np.stack([padded[i : i + len(hist)] for i in range(cfg.hist_median)]), 0)
        g = np.zeros(len(hist), np.float32)
        g[c.stride :] = cuts.hist_distance(med[: -c.stride], med[c.stride :])
        for tr in cuts.detect_gradual(g, c, name):
            if not any(
                o.start - 2 <= tr.end and tr.start <= o.end + 2 for o in found if o.kind == "cut"
            ) and not any(o.kind == "gradual" and o.start <= tr.end and tr.start <= o.end for o in found):
                found.append(tr)
    kept = cuts.enforce_min_scene_len(found, cfg.min_scene_len)
    return [(t.frame, t.start, t.end, t.kind, t.detector, t.score) for t in kept]


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    """80 frames at 200x112 (not a multiple of 16), 24 fps: coffee pans, hard cut at 30 to chelsea, a
    12-frame dissolve (frames 56..67) to the astronaut."""
    rng = np.random.default_rng(0)
    W, H = 200, 112

    def shot(img, n, dx):
        img = cv2.resize(img, (2 * W, 2 * H), interpolation=cv2.INTER_AREA).astype(np.float32)
        out = []
        for t in range(n):
            m = np.float32([[1, 0, -40 - dx * t], [0, 1, -50]])
            f = cv2.warpAffine(img, m, (W, H), borderMode=cv2.BORDER_REFLECT) + rng.normal(0, 1.5, (H, W, 3))
            out.append(np.clip(f, 0, 255).astype(np.uint8))
        return np.stack(out)

    a, b, c = (
        shot(skdata.coffee(), 30, 2.0),
        shot(skdata.chelsea(), 38, 1.0),
        shot(skdata.astronaut(), 24, 0.0),
    )
    frames = np.concatenate([a, b[:-12], dissolve(b, c, 12), c[12:]])
    path = tmp_path_factory.mktemp("cutspeed") / "cut_and_dissolve.mp4"
    write_video(path, frames, fps=24, gop=24)
    return path


@pytest.mark.parametrize("size", [(64, 36), (50, 28)])  # 50: rows padded past the width (line_size 64)
def test_fast_decoding_gives_the_same_small_frames(video, size):
    before = previous_decode(video, size)
    for thread_type in ("AUTO", None):
        now, fps = decode_small_yuv(video, size, thread_type=thread_type)
        assert fps == 24 and now.shape == before.shape == (80, 3, size[1], size[0])
        assert np.array_equal(now, before)  # tolerance 0: the same bytes
        assert now.flags.writeable
    frames, _, error = decode_small_yuv_until_error(video, size)
    assert error is None and np.array_equal(frames, before)


def test_truncated_video_keeps_the_frames_before_the_break(video, tmp_path):
    fast = tmp_path / "faststart.mp4"  # index first, so that a file cut short still opens
    with av.open(str(video)) as src, av.open(str(fast), "w", options={"movflags": "+faststart"}) as dst:
        out = dst.add_stream_from_template(src.streams.video[0])
        for packet in src.demux(src.streams.video[0]):
            if packet.dts is not None:
                packet.stream = out
                dst.mux(packet)
    data = fast.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) * 2 // 3])
    frames, _, _ = decode_small_yuv_until_error(cut)  # (FFmpeg may just see the end of the file)
    assert 0 < len(frames) < 80 and np.array_equal(frames, previous_decode(video)[: len(frames)])


def test_faster_features_are_bit_identical(video):
    frames, _ = decode_small_yuv(video)
    imgs, hist = cuts.frame_features(frames)
    imgs0, hist0 = previous_features(frames)
    assert np.array_equal(imgs, imgs0) and np.array_equal(hist, hist0)
    for T in (1, 2, 31, 33, 80):  # around the 32-frame chunks
        x = imgs[:T]
        assert np.array_equal(cuts.consecutive_residual(x), cuts.gain_residual(x[:-1], x[1:]))
    odd = np.random.default_rng(1).integers(0, 256, (300, 77), np.uint8)  # > 256 rows, odd width
    counts = np.stack([np.bincount(r >> 4, minlength=16) for r in odd]).astype(np.float32)
    assert np.array_equal(cuts.plane_histograms(odd), counts)
    # Features added chunk by chunk (as `detect_cuts` does while decoding) = all at once.
    whole = cuts.detect_cuts_in_frames(frames)
    for sizes in ([1, 79], [7, 13, 60], [40, 40]):
        f = cuts.CutFeatures()
        for a, b in zip(np.cumsum([0] + sizes[:-1]), np.cumsum(sizes)):
            f.add(frames[a:b])
        res = f.cascade(24.0)
        assert res.transitions == whole.transitions
        assert all(np.array_equal(res.curves[k], whole.curves[k]) for k in whole.curves)


def test_decoding_ahead_in_a_thread(video, tmp_path):
    frames, fps = decode_small_yuv(video)
    chunks = list(decode_small_yuv_ahead(video, chunk=24))
    assert [len(c) for c, _ in chunks] == [24, 24, 24, 8] and {f for _, f in chunks} == {fps}
    assert np.array_equal(np.concatenate([c for c, _ in chunks]), frames)
    early = decode_small_yuv_ahead(video, chunk=8)
    assert len(next(early)[0]) == 8
    early.close()  # leaving early stops the thread and joins it
    assert not any(t.name == "decode_small_yuv_ahead" for t in threading.enumerate())
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video at all" * 100)
    with pytest.raises(av.error.FFmpegError):
        list(decode_small_yuv_ahead(bad))
    with pytest.raises(av.error.FFmpegError):
        cuts.detect_cuts(bad)


def test_fast_path_finds_the_same_cuts_as_before(video):
    now = cuts.detect_cuts(video)
    got = [(t.frame, t.start, t.end, t.kind, t.detector, t.score) for t in now.transitions]
    assert got == previous_cascade(previous_decode(video), 24.0)
    kinds = {t.kind: t for t in now.transitions}
    assert (
        set(kinds) == {"cut", "gradual"} and kinds["cut"].frame == 30 and 56 <= kinds["gradual"].frame <= 67
    )
