"""Architecture figures of the course, drawn with matplotlib from the code's own names.

- `spatiotemporal_block()`: the two spatio-temporal layers every UNet level is made of (Blattmann et al.
  2023, Sec. 3): a spatial ResBlock followed by a temporal ResBlock (`SpatioTemporalResBlock`,
  models/resnet.py), a spatial transformer followed by a temporal transformer
  (`SpatioTemporalTransformer`, models/attention.py), each pair mixed by an `AlphaBlender`.
- `unet_overview()`: the whole UNet (models/unet.py) with its three conditioning paths: the conditioning
  frame's latent concatenated at `conv_in`, the CLIP image token read by cross-attention, and the
  micro-conditioning (fps, motion bucket, noise augmentation) added to the time embedding.

Both return a `matplotlib.figure.Figure` (made with pyplot: `plt.show()` shows it in a notebook, and
`figure_labels(fig)` lists the texts in its boxes, which tests/test_figures.py checks).
"""

from __future__ import annotations

import matplotlib.pyplot as plt
from matplotlib.figure import Figure
from matplotlib.patches import FancyBboxPatch

__all__ = ["spatiotemporal_block", "unet_overview", "figure_labels", "COLORS"]

COLORS = {
    "spatial": "#cfe2f3",  # the image model's layers (weights from Stable Diffusion 2.1)
    "temporal": "#f9cb9c",  # the layers inflation adds (zero-initialised residual branches)
    "blend": "#d9ead3",  # AlphaBlender
    "cond": "#ead1dc",  # conditioning inputs
    "io": "#eeeeee",  # tensors in and out, reshapes
}


def _box(ax, x: float, y: float, w: float, h: float, label: str, kind: str, note: str = "") -> None:
    """A rounded box centred at (x, y) with a bold label and an optional smaller note below it."""
    ax.add_patch(
        FancyBboxPatch(
            (x - w / 2, y - h / 2), w, h, boxstyle="round,pad=0.02,rounding_size=0.08",
            facecolor=COLORS[kind], edgecolor="0.3", lw=1.0,
        )
    )  # fmt: skip
    if note:
        ax.text(x, y + h * 0.16, label, ha="center", va="center", fontsize=9, fontweight="bold", gid="label")
        ax.text(x, y - h * 0.2, note, ha="center", va="center", fontsize=7, color="0.25", gid="note")
    else:
        ax.text(x, y, label, ha="center", va="center", fontsize=9, fontweight="bold", gid="label")


def _arrow(ax, start: tuple[float, float], end: tuple[float, float], text: str = "", **kw) -> None:
    """An arrow from `start` to `end`, with an optional small text at its middle."""
    style = dict(arrowstyle="-|>", color=kw.pop("color", "0.2"), lw=kw.pop("lw", 1.1), **kw)
    ax.annotate("", xy=end, xytext=start, arrowprops=style)
    if text:
        mx, my = (start[0] + end[0]) / 2, (start[1] + end[1]) / 2
        ax.text(mx + 0.08, my, text, fontsize=7, color="0.3", ha="left", va="center", gid="arrow")


def _canvas(width: float, height: float, xlim: tuple[float, float], ylim: tuple[float, float], ncols=1):
    fig, axes = plt.subplots(1, ncols, figsize=(width, height), squeeze=False)
    for ax in axes[0]:
        ax.set_xlim(*xlim)
        ax.set_ylim(*ylim)
        ax.set_aspect("equal")
        ax.axis("off")
    return fig, list(axes[0])


def figure_labels(fig: Figure, kind: str = "label") -> list[str]:
    """The texts of `fig` of one kind: "label" (box titles), "note" (box details), "arrow", or "all"."""
    texts = [t for ax in fig.axes for t in ax.texts]
    return [t.get_text() for t in texts if kind == "all" or t.get_gid() == kind]


# ----------------------------------------------------------------------------------------------------------


def spatiotemporal_block() -> Figure:
    """The spatio-temporal ResBlock (left) and transformer (right) of SVD's UNet, with their AlphaBlenders."""
    fig, (left, right) = _canvas(13, 7.2, (0, 6), (0, 10), ncols=2)
    bw, bh = 3.4, 1.05  # box size

    # --- SpatioTemporalResBlock (models/resnet.py) ---
    ax = left
    ax.set_title("SpatioTemporalResBlock", fontsize=11)
    _box(ax, 3, 9.3, bw, 0.7, "x  (B·F, C, H, W)", "io")
    _box(
        ax, 3, 7.8, bw, bh, "spatial ResBlock", "spatial", "each frame alone: 3x3 convs\n+ time emb. (B·F, C)"
    )
    _box(ax, 1.5, 5.9, 2.4, bh, "x_spatial", "io", "(B, C, F, H, W)")
    _box(ax, 4.1, 4.4, 3.0, bh + 0.25, "temporal ResBlock", "temporal",
         "3x1x1 convs across frames\n+ time embedding; conv2 = 0\nat init: returns its input")  # fmt: skip
    _box(ax, 3, 2.3, bw + 0.9, bh + 0.3, "AlphaBlender", "blend",
         "α·x_spatial + (1-α)·x_temporal\nα = sigmoid(mix_factor), α = 1 for images")  # fmt: skip
    _box(ax, 3, 0.7, bw, 0.7, "out  (B·F, C, H, W)", "io")
    _arrow(ax, (3, 8.95), (3, 8.35))
    _arrow(ax, (2.6, 7.25), (1.7, 6.45), "to frames")
    _arrow(ax, (2.5, 5.9), (3.6, 5.05))
    _arrow(ax, (1.5, 5.35), (2.0, 3.0), "x_spatial")
    _arrow(ax, (4.1, 3.7), (3.7, 3.0), "x_temporal")
    _arrow(ax, (3, 1.6), (3, 1.05))

    # --- SpatioTemporalTransformer (models/attention.py) ---
    ax = right
    ax.set_title("SpatioTemporalTransformer", fontsize=11)
    _box(ax, 3, 9.3, bw, 0.7, "x  (B·F, C, H, W)", "io")
    _box(ax, 3, 8.15, bw, 0.75, "GroupNorm, proj_in", "spatial", "tokens (B·F, H·W, C)")
    _box(ax, 3, 6.75, bw, bh, "spatial transformer", "spatial",
         "self-attention over H·W pixels\ncross-attention to the CLIP token")  # fmt: skip
    _box(ax, 4.8, 5.65, 2.25, 0.6, "frame-position emb.", "temporal")
    _box(ax, 4.1, 4.4, 3.2, bh + 0.25, "temporal transformer", "temporal",
         "attention over the F frames\nat each pixel (B·H·W, F, C)\n+ CLIP cross-attention")  # fmt: skip
    _box(ax, 3, 2.3, bw + 0.9, bh + 0.3, "AlphaBlender", "blend",
         "α·x_spatial + (1-α)·x_temporal\nα = sigmoid(mix_factor), α = 1 for images")  # fmt: skip
    _box(ax, 3, 0.7, bw, 0.7, "proj_out + residual", "spatial")
    _arrow(ax, (3, 8.95), (3, 8.55))
    _arrow(ax, (3, 7.75), (3, 7.3))
    _arrow(ax, (3.2, 6.2), (3.2, 5.1), "+")
    _arrow(ax, (4.8, 5.35), (4.6, 5.1))
    _arrow(ax, (1.8, 6.2), (1.9, 3.0), "x_spatial")
    _arrow(ax, (4.1, 3.7), (3.7, 3.0), "x_temporal")
    _arrow(ax, (3, 1.6), (3, 1.05))

    fig.suptitle(
        "The spatio-temporal block (Blattmann et al. 2023, Sec. 3): blue = image layers (SD 2.1), "
        "orange = temporal layers added by inflation, green = learned blend",
        fontsize=10,
    )
    fig.tight_layout()
    return fig


def unet_overview() -> Figure:
    """SVD's UNet from input to output, with its three conditioning paths (models/unet.py)."""
    fig, (ax,) = _canvas(15, 6.6, (0, 16.2), (0, 7.6))
    ax.set_title("The SVD UNet and its three conditioning paths (image-to-video)", fontsize=11)

    # the main path: inputs -> concat -> conv_in -> down, mid, up blocks -> conv_out -> F
    level = "SpatioTemporalResBlock\n+ SpatioTemporalTransformer\nper level"
    _box(ax, 1.2, 4.4, 2.3, 0.9, "noisy latent", "io", "c_in·x  (B, F, 4, H, W)")
    _box(ax, 1.2, 2.6, 2.3, 0.9, "conditioning latent", "cond", "VAE(frame + noise),\nrepeated on F")
    _box(ax, 3.4, 3.5, 1.4, 0.9, "concat", "io", "4 + 4 = 8\nchannels")
    _box(ax, 5.0, 3.5, 1.3, 0.9, "conv_in", "spatial", "8 → C")
    _box(ax, 7.1, 3.5, 2.3, 1.2, "down blocks", "spatial", level)
    _box(ax, 9.6, 3.5, 2.3, 1.2, "mid block", "spatial", level.replace("\nper level", ""))
    _box(ax, 12.1, 3.5, 2.3, 1.2, "up blocks", "spatial", level)
    _box(ax, 14.0, 3.5, 1.2, 0.9, "conv_out", "spatial", "C → 4")
    _box(ax, 15.45, 3.5, 1.2, 0.9, "F_θ", "io", "(B, F, 4,\nH, W)")
    _arrow(ax, (2.35, 4.2), (2.7, 3.8))
    _arrow(ax, (2.35, 2.8), (2.7, 3.2))
    for a, b in [(4.1, 4.35), (5.65, 5.95), (8.25, 8.45), (10.75, 10.95), (13.25, 13.4), (14.6, 14.85)]:
        _arrow(ax, (a, 3.5), (b, 3.5))
    ax.annotate("", xy=(11.6, 4.1), xytext=(7.6, 4.1),
                arrowprops=dict(arrowstyle="-|>", ls="--", color="0.5", connectionstyle="arc3,rad=-0.25"))  # fmt: skip
    ax.text(9.6, 4.75, "skip connections", ha="center", fontsize=7, color="0.3", gid="arrow")

    # CLIP image token -> cross-attention in every transformer (spatial and temporal)
    _box(ax, 3.2, 6.6, 2.6, 0.9, "CLIP image token", "cond", "(B, 1, 1024) of the\nconditioning frame")
    _box(ax, 9.6, 6.6, 5.6, 0.9, "cross-attention", "cond", "in every spatial and temporal transformer")
    _arrow(ax, (4.5, 6.6), (6.8, 6.6))
    for x in (7.1, 9.6, 12.1):
        _arrow(ax, (x, 6.15), (x, 4.12), color="#a64d79")

    # sigma and micro-conditioning -> one embedding, added in every ResBlock
    _box(ax, 5.0, 0.8, 2.8, 0.9, "time embedding", "cond", "c_noise = ¼ ln σ → sinusoid, MLP")
    _box(ax, 14.0, 0.8, 3.0, 1.0, "micro-conditioning", "cond",
         "fps_id, motion_bucket_id, cond_aug\n→ sinusoids, MLP (add_embedding)")  # fmt: skip
    _box(ax, 9.6, 1.05, 1.9, 0.75, "+  → temb", "cond", "added in every ResBlock")
    _arrow(ax, (6.4, 0.9), (8.6, 1.0))
    _arrow(ax, (12.5, 0.9), (10.6, 1.0))
    for x in (7.1, 9.6, 12.1):
        _arrow(ax, (9.6 + (x - 9.6) * 0.3, 1.45), (x, 2.88), color="#a64d79")

    fig.tight_layout()
    return fig
