"""Image-text similarity and aesthetic scores (Blattmann et al. 2023, App. C, "CLIP" filtering).

The paper embeds the first, middle and last frame of each clip with CLIP, scores image-text similarity
against the caption (drops the bottom 50%) and predicts a LAION aesthetic score with a small MLP on the
CLIP embedding (drops the bottom 25%). That needs CLIP weights. Every scorer here has the same shape,
`score(frames, caption) -> {column: value}`, and `make_scorer` picks one:

* `ClipScorer`: real CLIP from a local folder (transformers `CLIPModel`, `local_files_only=True`), plus the
  LAION aesthetic MLP if its weights file is given. Columns `clip_score`, `clip_aesthetic`.
* `OfflineStandInScorer`: no weights, no network. It is **not CLIP** and says so in its column names:
  `standin_aesthetic` (colourfulness, sharpness and exposure, 0..10) and `standin_consistency` (how well
  the first and last frame match the middle one that the caption describes, 0..1).
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import cv2
import numpy as np


class Scorer(Protocol):
    """Anything that maps a clip's frames (first, middle, last; RGB uint8) and its caption to scores."""

    name: str

    def score(self, frames: list[np.ndarray], caption: str) -> dict[str, float]: ...


def colourfulness(rgb: np.ndarray) -> float:
    """Hasler and Suesstrunk's colourfulness (2003): 0 grey, ~100 very colourful."""
    r, g, b = (rgb[..., i].astype(np.float32) for i in range(3))
    rg, yb = r - g, 0.5 * (r + g) - b
    return float(np.hypot(rg.std(), yb.std()) + 0.3 * np.hypot(rg.mean(), yb.mean()))


def sharpness(rgb: np.ndarray) -> float:
    """Variance of the Laplacian of the grey image (blurry frames score low)."""
    return float(cv2.Laplacian(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), cv2.CV_32F).var())


class OfflineStandInScorer:
    """Measurable image statistics standing in for CLIP when no weights are on disk. Not CLIP."""

    name = "offline stand-in (not CLIP)"

    def score(self, frames: list[np.ndarray], caption: str = "") -> dict[str, float]:
        mid = frames[len(frames) // 2]
        colour = min(colourfulness(mid) / 60, 1.0)
        sharp = min(np.log1p(sharpness(mid)) / np.log1p(1500), 1.0)
        grey = cv2.cvtColor(mid, cv2.COLOR_RGB2GRAY).astype(np.float32) / 255
        exposure = 1 - min(abs(grey.mean() - 0.5) * 2, 1.0)  # mid-grey best, black or white worst
        contrast = min(grey.std() / 0.25, 1.0)
        aesthetic = 10 * (0.3 * colour + 0.3 * sharp + 0.2 * exposure + 0.2 * contrast)

        def hist(f: np.ndarray) -> np.ndarray:
            h = cv2.calcHist([f], [0, 1, 2], None, [8, 8, 8], [0, 256] * 3).ravel()
            return h / max(h.sum(), 1)

        hm = hist(mid)
        consistency = float(np.mean([1 - 0.5 * np.abs(hist(f) - hm).sum() for f in frames]))
        return {"standin_aesthetic": float(aesthetic), "standin_consistency": consistency}


class AestheticMLP:
    """LAION improved aesthetic predictor head: 768 -> 1024 -> 128 -> 64 -> 16 -> 1 on a unit CLIP embedding."""

    def __init__(self, weights: str | Path):
        import torch

        sd = torch.load(str(weights), map_location="cpu", weights_only=True)
        sd = {k.removeprefix("layers."): v for k, v in sd.items()}
        dims = [(sd[f"{i}.weight"], sd[f"{i}.bias"]) for i in sorted({int(k.split(".")[0]) for k in sd})]
        self.layers = dims  # Linear layers only; the original's dropouts are identity at inference

    def __call__(self, emb):
        x = emb
        for w, b in self.layers:
            x = x @ w.T + b
        return x.squeeze(-1)


class ClipScorer:
    """Real CLIP (transformers) from a local folder; optional LAION aesthetic MLP weights."""

    name = "CLIP"

    def __init__(self, model_dir: str | Path, aesthetic_weights: str | Path | None = None):
        import torch
        from transformers import CLIPModel, CLIPProcessor

        self.torch = torch
        self.model = CLIPModel.from_pretrained(str(model_dir), local_files_only=True).eval()
        self.processor = CLIPProcessor.from_pretrained(str(model_dir), local_files_only=True)
        self.aesthetic = AestheticMLP(aesthetic_weights) if aesthetic_weights else None

    def score(self, frames: list[np.ndarray], caption: str) -> dict[str, float]:
        torch = self.torch
        with torch.no_grad():
            inp = self.processor(text=[caption or ""], images=list(frames), return_tensors="pt", padding=True)
            img = projected(self.model.get_image_features(pixel_values=inp["pixel_values"]))
            txt = projected(
                self.model.get_text_features(input_ids=inp["input_ids"], attention_mask=inp["attention_mask"])
            )
            img, txt = img / img.norm(dim=-1, keepdim=True), txt / txt.norm(dim=-1, keepdim=True)
            out = {"clip_score": float(100 * (img @ txt.T).mean())}  # CLIP-S: 100 x cosine, mean over frames
            if self.aesthetic is not None:
                out["clip_aesthetic"] = float(self.aesthetic(img).mean())
        return out


def projected(features):
    """The projected CLIP embedding: transformers < 5 returns the tensor, >= 5 a ModelOutput holding it."""
    return getattr(features, "pooler_output", features)


def check_clip_dir(clip_dir: str | Path | None) -> None:
    """A CLIP folder that is given must be usable: never fall back to the stand-in in silence (the CLIP
    filters would vanish from the funnel and every rerun would score again)."""
    if clip_dir is None:
        return
    path = Path(clip_dir)
    fix = "give a local transformers CLIP model folder (config.json + weights), or leave --clip-dir out for the offline stand-in scorer"
    if not path.is_dir():
        raise ValueError(f"--clip-dir {path}: no such folder; {fix}")
    if not (path / "config.json").is_file():
        raise ValueError(f"--clip-dir {path}: no config.json, not a transformers model folder; {fix}")


def make_scorer(clip_dir: str | Path | None = None, aesthetic_weights: str | Path | None = None) -> Scorer:
    """Real CLIP from `clip_dir` (checked: `check_clip_dir`), or without one the offline stand-in (not CLIP)."""
    if clip_dir:
        check_clip_dir(clip_dir)
        return ClipScorer(clip_dir, aesthetic_weights)
    return OfflineStandInScorer()
