"""Three captions per clip (Blattmann et al. 2023, App. C, "captioning").

The paper captions the middle frame with CoCa, the whole clip with V-BLIP, and summarises both with an
LLM; training samples one of the three (0.5 / 0.25 / 0.25). Each role here is a small interface so a real
model can be dropped in (`TransformersImageCaptioner` loads any local image-to-text model). The offline
defaults only say what is measurably there: colours, brightness, detected text, camera motion.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import cv2
import numpy as np

COLOURS = [
    (0, "red"),
    (15, "orange"),
    (30, "yellow"),
    (45, "green"),
    (80, "cyan"),
    (100, "blue"),
    (130, "purple"),
    (160, "pink"),
    (175, "red"),
]  # fmt: skip  (OpenCV hue 0..180 -> name)


class FrameCaptioner(Protocol):
    """Captions one RGB frame (the paper's CoCa on the middle frame)."""

    def __call__(self, frame: np.ndarray) -> str: ...


class ClipCaptioner(Protocol):
    """Captions a clip from a few frames and its motion (the paper's V-BLIP)."""

    def __call__(self, frames: list[np.ndarray], motion: dict) -> str: ...


class Summariser(Protocol):
    """Merges the two captions into one (the paper's LLM summary)."""

    def __call__(self, frame_caption: str, clip_caption: str) -> str: ...


def colour_words(rgb: np.ndarray, k: int = 2) -> list[str]:
    """Names of the k most common saturated hues; 'grey' if the frame is mostly unsaturated."""
    hsv = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)
    sat = hsv[..., 1] > 60
    if sat.mean() < 0.15:
        return ["grey"]
    names = np.array([name for h in hsv[..., 0][sat] for name in [max(c for c in COLOURS if c[0] <= h)[1]]])
    uniq, counts = np.unique(names, return_counts=True)
    return [str(u) for u in uniq[np.argsort(-counts)][:k]]


class DescribeFrame:
    """Offline frame captioner: brightness, dominant colours, and text if a detector found some."""

    def __call__(self, frame: np.ndarray, text_fraction: float = 0.0) -> str:
        grey = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
        light = "a dark" if grey.mean() < 60 else "a bright" if grey.mean() > 170 else "a"
        texture = "detailed" if cv2.Laplacian(grey, cv2.CV_32F).var() > 300 else "smooth"
        cap = f"{light} {texture} {' and '.join(colour_words(frame))} image"
        if text_fraction > 0.005:
            cap += f" with text covering {100 * text_fraction:.0f}% of the frame"
        return cap


class DescribeMotion:
    """Offline clip captioner: the camera motion measured from optical flow (see `describe_motion`)."""

    def __call__(self, frames: list[np.ndarray], motion: dict) -> str:
        kind = motion.get("kind", "unknown")
        if kind in ("static", "unknown"):
            return "a still shot with no camera motion"
        speed = motion.get("magnitude", 0.0)
        pace = "slow" if speed < 1 else "fast" if speed > 4 else "steady"
        return f"a {pace} camera {kind}"


class JoinSummary:
    """Offline summariser: one sentence from the two captions, without repeating words."""

    def __call__(self, frame_caption: str, clip_caption: str) -> str:
        if clip_caption.startswith("a still shot"):
            return f"{frame_caption}, filmed as a still shot"
        return f"{frame_caption}, seen in {clip_caption.removeprefix('a ')}"


class TransformersImageCaptioner:
    """A real captioning model (e.g. a local BLIP or CoCa export) through transformers' pipeline, offline."""

    def __init__(self, model_dir: str | Path):
        from transformers import pipeline

        self.pipe = pipeline("image-to-text", model=str(model_dir), model_kwargs={"local_files_only": True})

    def __call__(self, frame: np.ndarray, text_fraction: float = 0.0) -> str:
        from PIL import Image

        return self.pipe(Image.fromarray(frame))[0]["generated_text"].strip()
