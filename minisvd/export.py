"""Save and show generated videos: frames (F, 3, H, W) in [0, 1] -> MP4, GIF, or an inline Jupyter player."""

from __future__ import annotations

import base64
from pathlib import Path

import numpy as np
import torch


def to_uint8(frames: torch.Tensor) -> np.ndarray:
    """(F, 3, H, W) float in [0, 1] -> (F, H, W, 3) uint8, the layout video writers take."""
    if frames.ndim != 4 or frames.shape[1] != 3:
        raise ValueError(f"frames must be (F, 3, H, W) in [0, 1], got shape {tuple(frames.shape)}")
    x = (frames.detach().float().cpu().clamp(0, 1) * 255).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).numpy()


def save_mp4(frames: torch.Tensor, path: str | Path, fps: int = 7, crf: int = 18) -> Path:
    """H.264 MP4 via PyAV (yuv420p, so H and W are padded to even sizes by the encoder's rules)."""
    import av

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    video = to_uint8(frames)
    H, W = video.shape[1:3]
    H2, W2 = H + H % 2, W + W % 2  # yuv420p needs even sizes
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = W2, H2, "yuv420p"
        stream.options = {"crf": str(crf)}
        for img in video:
            if (H2, W2) != (H, W):
                img = np.pad(img, ((0, H2 - H), (0, W2 - W), (0, 0)), mode="edge")
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():  # flush
            container.mux(packet)
    return path


def save_gif(frames: torch.Tensor, path: str | Path, fps: int = 7, loop: int = 0) -> Path:
    """Animated GIF (Pillow), `loop=0` repeats forever."""
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    images = [Image.fromarray(f) for f in to_uint8(frames)]
    images[0].save(path, save_all=True, append_images=images[1:], duration=round(1000 / fps), loop=loop)
    return path


def save_video(frames: torch.Tensor, path: str | Path, fps: int = 7) -> Path:
    """MP4 or GIF by the file's extension."""
    suffix = Path(path).suffix.lower()
    if suffix == ".gif":
        return save_gif(frames, path, fps)
    if suffix in (".mp4", ".mov", ".mkv"):
        return save_mp4(frames, path, fps)
    raise ValueError(f"unknown video extension {suffix!r}: use .mp4 or .gif")


def show_video(frames: torch.Tensor, fps: int = 7, width: int | None = None):
    """An inline, looping GIF for Jupyter (works offline and in exported notebooks); returns an HTML object."""
    import io

    from IPython.display import HTML
    from PIL import Image

    buf = io.BytesIO()
    images = [Image.fromarray(f) for f in to_uint8(frames)]
    images[0].save(
        buf, format="GIF", save_all=True, append_images=images[1:], duration=round(1000 / fps), loop=0
    )
    w = f' width="{width}"' if width else ""
    return HTML(f'<img src="data:image/gif;base64,{base64.b64encode(buf.getvalue()).decode()}"{w}/>')
