"""Quantile filters and the data funnel (Blattmann et al. 2023, Sec. 3.1, Table 1, App. C).

The paper sets its thresholds from the data's own score distribution: drop the 25% most static clips,
the 25% with the most text (and any clip with more than 7% text), the bottom 25% by aesthetics and the
bottom 50% by CLIP score. Table 1 reports the funnel as clips, total duration and mean clip length
before and after filtering (LVD 577M clips / 212 years -> LVD-F 152M / 50.6 years).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass
class Filter:
    """Drop the `fraction` of clips with the lowest (keep="high") or highest (keep="low") `column`."""

    column: str
    fraction: float  # quantile to drop; 0 with `limit` for an absolute rule
    keep: str = "high"  # "high": drop the lowest scores; "low": drop the highest
    limit: float | None = None  # absolute threshold instead of / as well as the quantile
    label: str = ""


PAPER_FILTERS = [
    Filter("motion", 0.25, "high", label="drop 25% most static (optical flow)"),
    Filter("text_area", 0.0, "low", limit=0.07, label="drop text area > 7%"),
    Filter("text_area", 0.25, "low", label="drop 25% most text"),
    Filter("clip_aesthetic", 0.25, "high", label="drop bottom 25% aesthetics (CLIP + LAION MLP)"),
    Filter("clip_score", 0.50, "high", label="drop bottom 50% CLIP image-text similarity"),
]
STANDIN_FILTERS = PAPER_FILTERS[:3] + [
    Filter("standin_aesthetic", 0.25, "high", label="drop bottom 25% stand-in aesthetics (not CLIP)"),
]


def score_choice(clip_dir: str | None) -> tuple[list[str], list[Filter]]:
    """The score columns a run must fill, and the filters that read them.

    With a CLIP model folder: `clip_score` and the paper's filters; without one: the offline stand-in's
    columns (`standin_*`, not CLIP) and `STANDIN_FILTERS`. See `clip_scores.make_scorer`.
    """
    if clip_dir:
        return ["clip_score"], PAPER_FILTERS
    return ["standin_aesthetic", "standin_consistency"], STANDIN_FILTERS


def finite(x) -> float:
    """A manifest cell as a float; NaN where it is empty or not a number."""
    try:
        return float(x)
    except (TypeError, ValueError):
        return float("nan")


def column(rows: list[dict], name: str) -> np.ndarray:
    """A numeric column of the manifest (NaN where missing)."""
    return np.array([finite(r.get(name)) for r in rows])


def threshold(values: np.ndarray, f: Filter) -> float:
    """The cut-off value: the quantile of the scores (taken over all clips), or the absolute limit."""
    v = values[np.isfinite(values)]
    if f.fraction > 0 and len(v):
        q = float(np.quantile(v, f.fraction if f.keep == "high" else 1 - f.fraction))
        return q if f.limit is None else (max(q, f.limit) if f.keep == "high" else min(q, f.limit))
    return f.limit if f.limit is not None else (-math.inf if f.keep == "high" else math.inf)


def passes(values: np.ndarray, f: Filter, thr: float) -> np.ndarray:
    """Which clips survive: missing scores (NaN) do not pass; ties at the cut-off survive (when most clips
    have no text at all, "drop the 25% with most text" must not drop the text-free ones)."""
    ok = np.isfinite(values)
    return ok & ((values >= thr) if f.keep == "high" else (values <= thr))


@dataclass
class FunnelRow:
    """One line of the Table-1-style funnel."""

    stage: str
    clips: int
    hours: float
    mean_seconds: float
    threshold: float = float("nan")


def apply_filters(rows: list[dict], filters: list[Filter]) -> tuple[np.ndarray, list[FunnelRow]]:
    """Apply filters in order (each threshold from all clips, like the paper); returns kept mask and funnel."""
    dur = np.array([float(r.get("duration_s") or 0) for r in rows])
    keep = np.ones(len(rows), bool)

    def row(stage: str, thr: float = float("nan")) -> FunnelRow:
        d = dur[keep]
        return FunnelRow(
            stage, int(keep.sum()), float(d.sum() / 3600), float(d.mean()) if len(d) else 0.0, thr
        )

    funnel = [row("all clips")]
    for f in filters:
        vals = column(rows, f.column)
        if not np.isfinite(vals).any():
            continue  # this score was not computed (e.g. no CLIP weights): the filter is skipped
        thr = threshold(vals, f)
        keep &= passes(vals, f, thr)
        funnel.append(row(f.label or f.column, thr))
    return keep, funnel


def format_funnel(funnel: list[FunnelRow]) -> str:
    """Plain-text table in the form of the paper's Table 1."""
    lines = [f"{'stage':<48} {'clips':>7} {'hours':>9} {'mean clip (s)':>14} {'threshold':>10}"]
    for r in funnel:
        thr = "" if math.isnan(r.threshold) else f"{r.threshold:.4g}"
        lines.append(f"{r.stage:<48} {r.clips:>7} {r.hours:>9.4f} {r.mean_seconds:>14.2f} {thr:>10}")
    return "\n".join(lines)
