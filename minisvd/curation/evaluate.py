"""Scoring detectors against ground truth: precision, recall, F1 per transition type, rank correlation.

Matching rules (the same for our cascade and for PySceneDetect, which reports only a cut frame):
a true **hard cut** at frame f is found by a detected boundary within `cut_tol` frames of f (1 frame);
a true **gradual** transition covering frames [a, b] is found by a boundary inside [a - tol, b + tol].
Each true transition takes at most one detection, each detection explains at most one transition.
When scoring one type, detections that matched a transition of the *other* type are set aside (they are
neither hits nor false alarms for this type); every unmatched detection is a false alarm for both.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class PRF:
    """Counts and the usual ratios."""

    tp: int
    fp: int
    fn: int

    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else 1.0

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else 1.0

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r else 0.0

    def __add__(self, o: PRF) -> PRF:
        return PRF(self.tp + o.tp, self.fp + o.fp, self.fn + o.fn)


def match_transitions(
    detected: list[int], truth: list[dict], cut_tol: int = 1, gradual_tol: int = 2
) -> dict[str, PRF]:
    """`detected`: boundary frames; `truth`: dicts with type (cut | dissolve | fade), start, end.

    Returns {"cut": PRF, "gradual": PRF}. Greedy matching, closest pairs first.
    """
    kinds = ["cut" if t["type"] == "cut" else "gradual" for t in truth]
    cands = []
    for j, t in enumerate(truth):
        tol = cut_tol if kinds[j] == "cut" else gradual_tol
        lo, hi = t["start"] - tol, t["end"] + tol
        centre = (t["start"] + t["end"]) / 2
        for i, d in enumerate(detected):
            if lo <= d <= hi:
                cands.append((abs(d - centre), i, j))
    used_d, used_t = {}, {}
    for _, i, j in sorted(cands):
        if i not in used_d and j not in used_t:
            used_d[i], used_t[j] = j, i
    out = {}
    for kind in ("cut", "gradual"):
        tp = sum(1 for j in used_t if kinds[j] == kind)
        fn = sum(1 for j, k in enumerate(kinds) if k == kind and j not in used_t)
        fp = sum(1 for i in range(len(detected)) if i not in used_d)
        out[kind] = PRF(tp, fp, fn)
    return out


def spearman(x: list[float] | np.ndarray, y: list[float] | np.ndarray) -> float:
    """Spearman rank correlation (average ranks for ties)."""

    def ranks(a: np.ndarray) -> np.ndarray:
        order = np.argsort(a, kind="stable")
        r = np.empty(len(a))
        r[order] = np.arange(len(a), dtype=float)
        for v in np.unique(a):  # ties share their mean rank
            m = a == v
            r[m] = r[m].mean()
        return r

    rx, ry = ranks(np.asarray(x, float)), ranks(np.asarray(y, float))
    return float(np.corrcoef(rx, ry)[0, 1])
