"""What a run writes about itself: OUT/metrics.jsonl (one json line per log step) and OUT/loss.png.

A line of metrics.jsonl:
    {"step": 200, "loss": 0.41, "lr": 2e-4, "grad_norm": 0.83, "steps_per_s": 7.9, "samples_per_s": 63.2,
     "loss_by_sigma": {"0.2-0.5": 0.12, "0.5-1": 0.31, ...}, ...}
`loss` is the mean over every sample of the steps since the previous line (all processes). When the stage
reports each sample's noise level ("sigma"), `loss_by_sigma` splits it into bins of sigma: in EDM's loss
weighting the middle noise levels carry the learning (Karras et al. 2022, Sec. 5, Fig. 5a), and a bin that
stops improving is the first thing to look at. The speeds count training time only (no checkpoints).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from minisvd.train.distributed import Dist, all_reduce_sum

SIGMA_EDGES = (0.05, 0.2, 0.5, 1.0, 2.0, 5.0, 20.0)  # bin edges of sigma for `loss_by_sigma`


def sigma_bin_labels(edges: tuple[float, ...] = SIGMA_EDGES) -> list[str]:
    """["<0.05", "0.05-0.2", ..., ">=20"]: one label per bin, len(edges) + 1 bins."""
    return [f"<{edges[0]:g}"] + [f"{a:g}-{b:g}" for a, b in zip(edges[:-1], edges[1:])] + [f">={edges[-1]:g}"]


class Window:
    """Sums over the steps between two log lines, reduced over all processes when a line is written."""

    def __init__(self, device: torch.device):
        self.device, self.edges = device, torch.tensor(SIGMA_EDGES, device=device)
        self.reset()

    def reset(self) -> None:
        self.steps, self.seconds, self.loss_sum, self.count = 0, 0.0, 0.0, 0
        nb = len(SIGMA_EDGES) + 1
        self.bin_sum = torch.zeros(nb, dtype=torch.float64, device=self.device)  # loss summed per sigma bin
        self.bin_count = torch.zeros(nb, dtype=torch.float64, device=self.device)
        self.extras: dict[str, torch.Tensor] = {}  # name -> sum over samples

    def add_samples(self, per_sample: torch.Tensor, extras: dict[str, torch.Tensor]) -> None:
        """This process's per-sample losses (B_micro,) and extras of one micro-batch."""
        per_sample = per_sample.detach().double()
        sigma = extras.get("sigma")
        if sigma is not None:
            b = torch.bucketize(sigma.detach().reshape(-1).to(self.edges.dtype), self.edges, right=True)
            self.bin_sum.index_add_(0, b, per_sample)
            self.bin_count.index_add_(0, b, torch.ones_like(per_sample))
        for name, v in extras.items():
            if name != "sigma":
                s = v.detach().double().sum()
                self.extras[name] = self.extras.get(name, torch.zeros_like(s)) + s

    def add_step(self, loss_sum: float, count: int, seconds: float) -> None:
        """One optimizer step: the global loss sum and sample count, its training time."""
        self.steps, self.seconds = self.steps + 1, self.seconds + seconds
        self.loss_sum, self.count = self.loss_sum + loss_sum, self.count + count

    def summary(self, d: Dist) -> dict:
        """The window's metrics, every process's samples included (a collective: all ranks call it)."""
        names = sorted(self.extras)
        packed = torch.cat([self.bin_sum, self.bin_count] + [self.extras[n].reshape(1) for n in names])
        packed = all_reduce_sum(packed, d).cpu()
        nb = len(SIGMA_EDGES) + 1
        bin_sum, bin_count, extra_sums = packed[:nb], packed[nb : 2 * nb], packed[2 * nb :]
        out = {
            "loss": self.loss_sum / max(self.count, 1),
            "steps_per_s": self.steps / max(self.seconds, 1e-9),
            "samples_per_s": self.count / max(self.seconds, 1e-9),
        }
        for name, s in zip(names, extra_sums.tolist()):
            out[name] = s / max(self.count, 1)
        if bin_count.sum() > 0:
            labels = sigma_bin_labels()
            out["loss_by_sigma"] = {
                labels[i]: bin_sum[i].item() / bin_count[i].item() for i in range(nb) if bin_count[i] > 0
            }
        return out


class MetricsFile:
    """OUT/metrics.jsonl, written by rank 0. A resumed run first drops the lines after its checkpoint's
    step (a killed run may have logged steps that the resumed run trains again)."""

    def __init__(self, path: Path, resume_step: int | None, enabled: bool):
        self.path, self.enabled = path, enabled
        if not enabled:
            return
        kept = []
        if resume_step is not None and path.exists():
            lines = [line for line in path.read_text().splitlines() if line]
            kept = [line for line in lines if json.loads(line)["step"] <= resume_step]
        path.write_text("".join(line + "\n" for line in kept))

    def write(self, record: dict) -> None:
        if self.enabled:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")


def read_metrics(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line]


def plot_loss(metrics_path: Path, png_path: Path) -> Path | None:
    """OUT/loss.png: the loss per log step (log scale), and per sigma bin when logged."""
    records = read_metrics(metrics_path) if metrics_path.exists() else []
    if not records:
        return None
    # A Figure of its own on the Agg canvas: no pyplot, so a notebook's backend and figures are untouched
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4))
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    steps = [r["step"] for r in records]
    ax.plot(steps, [r["loss"] for r in records], color="black", lw=2, label="loss")
    for label in sigma_bin_labels():
        pts = [(r["step"], r["loss_by_sigma"][label]) for r in records if label in r.get("loss_by_sigma", {})]
        if pts:
            ax.plot(*zip(*pts), lw=1, alpha=0.7, label=f"sigma {label}")
    ax.set(xlabel="step", ylabel="loss", yscale="log", title=metrics_path.parent.name)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
    return png_path
