"""Reading and writing real H.264 video with PyAV: probe, decode, encode, cut on keyframes.

Data curation (Blattmann et al. 2023, Sec. 3.1 and App. C) starts from long videos that must be
decoded once, cut into clips and written back out. Everything here goes through a real decoder
(FFmpeg via PyAV): the keyframe table comes from the container's packets, frames are decoded and
scaled by libswscale, and clips are cut by copying packets (no re-encoding), which is why clip
boundaries have to sit on keyframes (see `minisvd.curation.cuts.snap_to_keyframes`).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import av
import numpy as np
from av.video.reformatter import VideoReformatter


@dataclass
class VideoInfo:
    """What the container says about a video, read from its packets without decoding."""

    path: str
    width: int
    height: int
    fps: float
    n_frames: int
    keyframes: list[int] = field(default_factory=list)  # frame indices of the I-frames (closed GOPs)

    @property
    def duration(self) -> float:
        """Length in seconds."""
        return self.n_frames / self.fps if self.fps else 0.0


def _frame_index(pts: int | None, stream: av.video.stream.VideoStream, fps: float, start: int) -> int:
    """Frame number of a packet or frame from its presentation timestamp."""
    if pts is None:
        return -1
    return int(round(float((pts - start) * stream.time_base) * fps))


def probe(path: str | Path) -> VideoInfo:
    """Demux (but do not decode) `path`: size, frame rate, frame count and keyframe positions.

    Raises `ValueError` for files that open but hold no video frames (e.g. zero length or truncated
    before the first packet) and for still images (a PNG or JPEG renamed `.mp4` opens as a 1-frame
    video); PyAV raises its own errors for files that are not video at all.
    """
    path = str(path)
    with av.open(path) as container:
        if not container.streams.video:
            raise ValueError("no video stream")
        fmt = container.format.name
        if fmt == "image2" or fmt.endswith("_pipe"):  # e.g. a PNG renamed .mp4: FFmpeg reads it as 1 frame
            kind = fmt.removesuffix("_pipe").upper() if fmt != "image2" else "still"
            raise ValueError(f"not a video ({kind} image?)")
        stream = container.streams.video[0]
        fps = float(stream.average_rate or stream.guessed_rate or 0)
        if fps <= 0:
            raise ValueError("unknown frame rate")
        start = stream.start_time or 0
        pts_list, key_pts = [], []
        for packet in container.demux(stream):
            if packet.size == 0 or packet.pts is None:
                continue
            pts_list.append(packet.pts)
            if packet.is_keyframe:
                key_pts.append(packet.pts)
        if not pts_list:
            raise ValueError("no video packets (empty or truncated file)")
        keyframes = sorted(_frame_index(p, stream, fps, start) for p in key_pts)
        return VideoInfo(
            path, stream.codec_context.width, stream.codec_context.height, fps, len(pts_list), keyframes
        )


def iter_frames(
    path: str | Path,
    size: tuple[int, int] | None = None,  # (width, height) to scale to, done by libswscale
    step: int = 1,  # keep every step-th frame: step = fps / 2 gives the paper's 2 fps
    fmt: str = "rgb24",  # or "gray" for a single channel
) -> Iterator[tuple[int, np.ndarray]]:
    """Decode `path` and yield `(frame_index, array)`; arrays are (H, W, 3) uint8 or (H, W) for gray.

    Decoding errors in the middle of a file (truncation) end the iteration with `av.error.FFmpegError`
    raised to the caller, who decides whether the frames so far are usable.
    """
    width, height = size if size else (None, None)
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        fps = float(stream.average_rate or stream.guessed_rate)
        start = stream.start_time or 0
        n = 0
        for frame in container.decode(stream):
            idx = _frame_index(frame.pts, stream, fps, start) if frame.pts is not None else n
            n += 1
            if idx % step:
                continue
            yield idx, frame.to_ndarray(width=width, height=height, format=fmt)


def plane_array(plane: av.video.plane.VideoPlane, height: int, width: int) -> np.ndarray:
    """A (height, width) uint8 view of one plane of a frame, without copying (rows are padded to line_size)."""
    return np.frombuffer(plane, np.uint8).reshape(height, plane.line_size)[:, :width]


def decode_small_yuv(
    path: str | Path, size: tuple[int, int] = (64, 36), thread_type: str | None = "AUTO"
) -> tuple[np.ndarray, float]:
    """All frames as small Y, Cb, Cr planes (T, 3, h, w) uint8, and the frame rate.

    The fastest route to an analysis-size video that we found: libswscale shrinks the decoder's native
    YUV 4:2:0 frame straight to `size` (area filter, no conversion to RGB; the half-size chroma planes
    come out at the same size as luma, i.e. YUV 4:4:4), and the three small planes are appended to one
    byte buffer that becomes the array at the end (no numpy array per frame: `np.stack` of three plane
    views per frame cost as much as the scaling). One `VideoReformatter` serves the whole video:
    `frame.reformat(...)` would set up a new scaler (and its filter tables) for every frame, which
    costs more than the scaling itself.

    `thread_type` "AUTO" (the default here, for one video at a time) lets FFmpeg decode several frames
    at once in its own threads (frame threading: the same frames, up to ~1.5x the frames/s on 2 cores for
    5-20% more CPU); None keeps PyAV's default (slice threading, which does nothing for single-slice
    H.264), for callers that already run one process per core (the curation pipeline).
    """
    frames, fps, error = decode_small_yuv_until_error(path, size, thread_type)
    if error is not None:
        raise error
    return frames, fps


def _small_yuv_chunks(
    path: str | Path, size: tuple[int, int], thread_type: str | None, chunk: int
) -> Iterator[float | np.ndarray]:
    """Yield the frame rate, then the small frames (n, 3, h, w) uint8 in chunks of `chunk` (0: one chunk).

    A decoding error after some frames is raised after the chunk that holds them has been yielded.
    """
    w, h = size
    scaler = VideoReformatter()
    buf, n, error = bytearray(), 0, None
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        if thread_type is not None:
            stream.thread_type = thread_type
        yield float(stream.average_rate or stream.guessed_rate or 0)
        try:
            for frame in container.decode(stream):
                # tiny frames: one scaler thread
                small = scaler.reformat(frame, w, h, "yuv444p", interpolation="AREA", threads=1)
                for p in small.planes:  # rows padded past w (line_size > w) are cut off first
                    buf += p if p.buffer_size == w * h else plane_array(p, h, w).tobytes()
                n += 1
                if n == chunk:
                    yield np.frombuffer(buf, np.uint8).reshape(n, 3, h, w)
                    buf, n = bytearray(), 0
        except av.error.FFmpegError as e:
            error = e
    if n:
        yield np.frombuffer(buf, np.uint8).reshape(n, 3, h, w)
    if error is not None:
        raise error


def decode_small_yuv_until_error(
    path: str | Path, size: tuple[int, int] = (64, 36), thread_type: str | None = None
) -> tuple[np.ndarray, float, Exception | None]:
    """`decode_small_yuv` that keeps the frames decoded before a decoding error (a truncated file).

    Returns the frames, the frame rate and the error that stopped decoding (None if the whole file
    decoded). Raises `ValueError` (or the decoder's error) when not one frame decodes. `thread_type`:
    None (default) leaves PyAV's decoder threading as it is; "AUTO" adds frame threading.
    """
    chunks = _small_yuv_chunks(path, size, thread_type, 0)  # one chunk: all frames decoded
    fps, frames, error = next(chunks), [], None
    try:
        for c in chunks:
            frames.append(c)
    except av.error.FFmpegError as e:
        if not frames:
            raise
        error = e
    if not frames:
        raise ValueError("no decodable frames")
    return frames[0], fps, error


def decode_small_yuv_ahead(
    path: str | Path, size: tuple[int, int] = (64, 36), chunk: int = 32, thread_type: str | None = "AUTO"
) -> Iterator[tuple[np.ndarray, float]]:
    """`decode_small_yuv` chunk by chunk, decoded ahead in a background thread: yields (frames, fps).

    While the caller works on one chunk (numpy and OpenCV release the GIL), the thread decodes and
    scales the next ones (PyAV releases the GIL inside FFmpeg), so the caller's per-frame work overlaps
    with decoding instead of following it. The chunks, put together, are exactly `decode_small_yuv`'s
    frames; a decoding error is raised where it happens (after the chunks decoded before it), and
    `ValueError` when not one frame decodes. Leaving the loop early stops the thread.
    """
    q: queue.SimpleQueue = queue.SimpleQueue()
    stop = threading.Event()
    done = object()

    def work() -> None:
        chunks = _small_yuv_chunks(path, size, thread_type, chunk)
        try:
            for item in chunks:
                if stop.is_set():
                    return
                q.put(item)
            q.put(done)
        except BaseException as e:  # handed to the caller
            q.put(e)
        finally:
            chunks.close()  # closes the file now, also when stopped early

    thread = threading.Thread(target=work, name="decode_small_yuv_ahead", daemon=True)
    thread.start()
    try:
        fps = q.get()
        if isinstance(fps, BaseException):
            raise fps
        n = 0
        while (item := q.get()) is not done:
            if isinstance(item, BaseException):
                raise item
            n += len(item)
            yield item, fps
        if not n:
            raise ValueError("no decodable frames")
    finally:
        stop.set()
        thread.join()


def read_frames(
    path: str | Path, indices: Sequence[int], size: tuple[int, int] | None = None, fmt: str = "rgb24"
) -> dict[int, np.ndarray]:
    """Decode only as far as needed and return the frames at `indices` (missing ones are left out).

    Seeks to the keyframe before the first wanted frame, so reading three frames of a long video costs
    a few GOPs of decoding, not the whole file.
    """
    wanted = sorted(set(int(i) for i in indices))
    out: dict[int, np.ndarray] = {}
    if not wanted:
        return out
    width, height = size if size else (None, None)
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        fps = float(stream.average_rate or stream.guessed_rate)
        start = stream.start_time or 0
        for target in wanted:
            if target in out:
                continue
            seek_pts = start + int(target / fps / stream.time_base)
            container.seek(seek_pts, stream=stream, backward=True, any_frame=False)
            for frame in container.decode(stream):
                idx = _frame_index(frame.pts, stream, fps, start)
                if idx in wanted and idx not in out:
                    out[idx] = frame.to_ndarray(width=width, height=height, format=fmt)
                if idx >= target:
                    break
    return out


def write_video(
    path: str | Path,
    frames: Sequence[np.ndarray] | np.ndarray,  # (T, H, W, 3) uint8 RGB
    fps: int = 24,
    gop: int = 12,  # keyframe interval in frames (a closed GOP every gop frames)
    crf: int = 23,
) -> None:
    """Encode RGB frames to an H.264 MP4 with a fixed keyframe interval, deterministically.

    x264 runs single-threaded with scene-cut keyframes off, so the same frames give the same bytes.
    """
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=fps)
        h, w = frames[0].shape[:2]
        stream.width, stream.height = w, h
        stream.pix_fmt = "yuv420p"
        stream.codec_context.gop_size = gop
        stream.codec_context.thread_count = 1
        stream.options = {
            "crf": str(crf),
            "preset": "medium",
            "x264-params": f"keyint={gop}:min-keyint={gop}:scenecut=0:threads=1:bframes=0",
        }
        container.metadata["comment"] = "minisvd data sample"
        for img in frames:
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)


def extract_clip(src: str | Path, dst: str | Path, start: int, end: int) -> int:
    """Copy frames [start, end) of `src` into `dst` without re-encoding; returns frames written.

    `start` must be a keyframe (packet copy cannot begin mid-GOP); `end` is exclusive.
    """
    n = 0
    with av.open(str(src)) as inp, av.open(str(dst), mode="w") as out:
        in_stream = inp.streams.video[0]
        fps = float(in_stream.average_rate or in_stream.guessed_rate)
        t0 = in_stream.start_time or 0
        out_stream = out.add_stream_from_template(in_stream)
        first_pts = first_dts = None
        try:
            for packet in inp.demux(in_stream):
                if packet.pts is None or packet.size == 0:
                    continue
                idx = _frame_index(packet.pts, in_stream, fps, t0)
                if idx < start or idx >= end:
                    continue
                if first_pts is None:
                    if not packet.is_keyframe:
                        raise ValueError(f"clip start {start} is not a keyframe")
                    first_pts, first_dts = packet.pts, packet.dts if packet.dts is not None else packet.pts
                packet.pts -= first_pts
                if packet.dts is not None:
                    packet.dts -= first_dts
                packet.stream = out_stream
                out.mux(packet)
                n += 1
        except av.error.FFmpegError:
            if n < end - start:  # a broken packet past the clip (a truncated source) does not matter
                raise
    return n
