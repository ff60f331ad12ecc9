"""The course's architecture figures (minisvd/figures.py): they draw, and every part the notebooks name is boxed."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from minisvd.figures import figure_labels, spatiotemporal_block, unet_overview  # noqa: E402


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def test_spatiotemporal_block_boxes():
    fig = spatiotemporal_block()
    assert isinstance(fig, Figure) and len(fig.axes) == 2
    labels = figure_labels(fig)
    for name in ["spatial ResBlock", "temporal ResBlock", "spatial transformer", "temporal transformer"]:
        assert labels.count(name) == 1, (name, labels)
    assert labels.count("AlphaBlender") == 2  # one per pair
    assert "frame-position emb." in labels
    notes = " ".join(figure_labels(fig, "note"))
    assert "α = 1 for images" in notes and "3x1x1" in notes and "CLIP" in notes
    assert [ax.get_title() for ax in fig.axes] == ["SpatioTemporalResBlock", "SpatioTemporalTransformer"]


def test_unet_overview_boxes_and_conditioning_paths():
    fig = unet_overview()
    assert isinstance(fig, Figure)
    labels = figure_labels(fig)
    for name in ["noisy latent", "conditioning latent", "concat", "conv_in", "down blocks", "mid block",
                 "up blocks", "conv_out", "CLIP image token", "cross-attention", "time embedding",
                 "micro-conditioning"]:  # fmt: skip
        assert name in labels, (name, labels)
    notes = " ".join(figure_labels(fig, "note"))
    details = ["4 + 4 = 8", "fps_id", "motion_bucket_id", "cond_aug", "¼ ln σ", "added in every ResBlock"]
    for detail in details:
        assert detail in notes, detail
    assert "skip connections" in figure_labels(fig, "arrow")
    fig.canvas.draw()  # the whole figure renders
