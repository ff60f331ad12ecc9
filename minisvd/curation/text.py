"""Text scores with a real text detector (Blattmann et al. 2023, App. C, "text detection").

The paper runs CRAFT on the first, middle and last frame of each clip and scores the clip by the area
of the text boxes over the frame area; clips with more than 7% text, and the 25% with most text, are
dropped (captions, logos and title cards teach the model to write garbled text). We use DBNet
(PP-OCRv4 detector), which `rapidocr-onnxruntime` ships inside its wheel, so it runs offline.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np


@lru_cache(maxsize=4)
def text_engine(limit_side_len: int = 256, threads: int = 1):
    """The RapidOCR engine, built once per process (about 0.7 s); we only use its detector."""
    from rapidocr_onnxruntime import RapidOCR

    return RapidOCR(
        det_limit_side_len=limit_side_len,  # the short side is scaled to this before DBNet
        det_limit_type="min",
        intra_op_num_threads=threads,  # one thread: the pipeline runs one process per core
        inter_op_num_threads=threads,
    )


def detect_text_boxes(rgb: np.ndarray, limit_side_len: int = 256) -> np.ndarray:
    """Text boxes (N, 4, 2) as quadrilaterals in pixels of `rgb` (H, W, 3) uint8."""
    boxes, _ = text_engine(limit_side_len).text_det(np.ascontiguousarray(rgb[..., ::-1]))  # engine wants BGR
    return (
        np.zeros((0, 4, 2), np.float32) if boxes is None or len(boxes) == 0 else np.asarray(boxes, np.float32)
    )


def box_area_fraction(boxes: np.ndarray, height: int, width: int) -> float:
    """Area covered by the boxes (their union) divided by the frame area."""
    if len(boxes) == 0:
        return 0.0
    mask = np.zeros((height, width), np.uint8)
    cv2.fillPoly(mask, [np.round(b).astype(np.int32) for b in boxes], 1)
    return float(mask.mean())


@dataclass
class TextResult:
    """Score of a clip and what it was made of."""

    score: float  # mean text-area fraction over the frames looked at
    per_frame: list[float]
    boxes: list[np.ndarray]


def text_score(frames: list[np.ndarray], limit_side_len: int = 256) -> TextResult:
    """Text-area fraction of each frame (first, middle, last in the paper) and their mean."""
    boxes = [detect_text_boxes(f, limit_side_len) for f in frames]
    per = [box_area_fraction(b, *f.shape[:2]) for b, f in zip(boxes, frames)]
    return TextResult(float(np.mean(per)) if per else float("nan"), per, boxes)
