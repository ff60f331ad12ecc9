"""The Python API refuses what cannot work, up front and by name (issue 12.2): images of every common type
with their real value range, sampling settings, dtype names, empty UNet inputs, and where the weights are."""

from __future__ import annotations

import numpy as np
import PIL.Image
import pytest
import torch

from minisvd import UNet, UNetConfig
from minisvd.conditioning.frame import image_to_tensor
from minisvd.pipelines import load_pipeline, tiny_random_pipeline
from minisvd.pretrained.load import DTYPES, load_components, resolve_dtype

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def tiny():
    return tiny_random_pipeline(seed=0, num_frames=2)


@pytest.fixture(scope="module")
def folder(tmp_path_factory, tiny):
    path = tmp_path_factory.mktemp("tiny_weights")
    tiny.save_pretrained(path)
    return path


def uint8_chw(h=24, w=40, seed=0) -> torch.Tensor:
    """What torchvision.io.read_image returns: (3, H, W) uint8 in 0..255."""
    return torch.from_numpy(np.random.RandomState(seed).randint(0, 256, (3, h, w), dtype=np.uint8))


# ----- images: every common type, with its real range ------------------------------------------------------
def test_uint8_images_are_divided_by_255_in_every_layout():
    chw = uint8_chw()
    expected = chw.float()[None] / 255
    hwc = chw.permute(1, 2, 0).numpy()
    for image in (
        chw,
        chw[None],
        chw.numpy(),
        hwc,
        hwc[None],
        torch.from_numpy(hwc),
        PIL.Image.fromarray(hwc),
    ):
        assert torch.equal(image_to_tensor(image), expected)


def test_float_images_must_be_in_0_1():
    x = torch.rand(3, 8, 8)
    assert torch.equal(image_to_tensor(x), x[None])
    assert torch.equal(image_to_tensor(x.permute(1, 2, 0).numpy()), x[None])
    for image in (x * 255, (x * 255).permute(1, 2, 0).numpy().astype(np.float64)):
        with pytest.raises(
            ValueError, match=r"must be in \[0, 1\], found .* values in \[.*\]; .*divide it by 255"
        ):
            image_to_tensor(image)
    with pytest.raises(ValueError, match=r"-1\.\.1 image: pass \(image \+ 1\) / 2"):
        image_to_tensor(x * 2 - 1)
    with pytest.raises(ValueError, match="NaN"):
        image_to_tensor(torch.full((3, 8, 8), float("nan")))


@pytest.mark.parametrize(
    "image, error, match",
    [
        (torch.zeros(3, 8, 8, dtype=torch.int64), TypeError, "dtype torch.int64: use uint8"),
        (np.zeros((8, 8, 3), np.uint16), TypeError, "dtype uint16: .*65535"),
        ("cat.png", TypeError, r"got str; open the file first, e.g. PIL.Image.open\(path\)"),
        ([[0.0]], TypeError, "got list"),
        (np.zeros((8, 8), np.uint8), ValueError, "grayscale"),
        (np.zeros((8, 8, 4), np.uint8), ValueError, "RGBA"),
        (torch.zeros(2, 3, 8, 8), ValueError, r"got shape \(2, 3, 8, 8\)"),
    ],
)
def test_other_images_are_refused_by_name(image, error, match):
    with pytest.raises(error, match=match):
        image_to_tensor(image)


def test_pipeline_reads_uint8_tensors_as_0_255(tiny):
    kw = dict(height=16, width=16, num_frames=2, num_inference_steps=1)
    chw = uint8_chw()
    a = tiny(chw, generator=torch.Generator().manual_seed(0), **kw)
    b = tiny(chw.float() / 255, generator=torch.Generator().manual_seed(0), **kw)
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match="divide it by 255"):
        tiny(chw.float(), **kw)


@pytest.mark.parametrize("size", [(1, 1), (1, 64)])
def test_pipeline_refuses_tiny_images(tiny, size):
    f = tiny.vae.config.downsample_factor
    image = PIL.Image.new("RGB", size)
    with pytest.raises(
        ValueError, match=f"the image is {size[0]}x{size[1]} pixels; at least {f}x{f} is needed"
    ):
        tiny(image, height=16, width=16, num_frames=2, num_inference_steps=1)


# ----- sampling settings ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "setting, match",
    [
        (dict(num_inference_steps=0), r"num_inference_steps must be >= 1 \(got 0\)"),
        (dict(num_frames=0), r"num_frames must be >= 1 \(got 0\)"),
        (dict(fps=0), r"fps must be >= 1 \(got 0\)"),
        (dict(decode_chunk_size=0), r"decode_chunk_size must be >= 1 \(got 0\)"),
        (dict(height=0), r"height must be a multiple of 4, at least 4 \(got 0\); nearest valid: 4"),
        (dict(noise_aug_strength=-0.1), r"noise_aug_strength must be >= 0 \(got -0.1\)"),
    ],
)
def test_pipeline_refuses_settings_that_cannot_work(tiny, setting, match):
    assert tiny.size_multiple == 4  # VAE 2 x UNet 2
    kw = dict(height=16, width=16, num_frames=2, num_inference_steps=1) | setting
    with pytest.raises(ValueError, match=match):
        tiny("not even an image", **kw)  # settings are checked before the image


# ----- UNet inputs --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("B, F", [(0, 2), (1, 0)])
def test_unet_refuses_empty_batches_and_videos(B, F):
    cfg = UNetConfig.tiny(num_frames=2)
    unet = UNet(cfg)
    sample = torch.zeros(B, F, cfg.in_channels, 8, 8)
    ids = torch.zeros(B, 3)
    with pytest.raises(ValueError, match=rf"sample \(B, F, C, H, W\) = \({B}, {F}, .*\) is empty"):
        unet(sample, 0.0, torch.zeros(B, 1, cfg.cross_attention_dim), ids)


# ----- dtype names ------------------------------------------------------------------------------------------
def test_dtype_aliases(folder):
    for name in ("half", "fp16", "float16", "HALF", "torch.float16", torch.float16):
        assert resolve_dtype(name) is torch.float16
    for name in ("float", "fp32", "float32"):
        assert resolve_dtype(name) is torch.float32
    for name in ("bf16", "bfloat16"):
        assert resolve_dtype(name) is torch.bfloat16
    assert load_pipeline(folder, dtype="half").dtype == torch.float16


@pytest.mark.parametrize("dtype", ["fp8", "double16", torch.int8])
def test_unknown_dtypes_list_the_names(tmp_path, dtype):
    with pytest.raises(ValueError, match=f"unknown dtype .*one of {', '.join(DTYPES)}"):
        load_components(tmp_path / "absent", dtype=dtype)  # checked before the weights are looked for


# ----- MINISVD_SVD_WEIGHTS, as the download help says ---------------------------------------------------------
def test_load_pipeline_without_a_path_reads_minisvd_svd_weights(folder, tmp_path, monkeypatch):
    monkeypatch.setenv("MINISVD_SVD_WEIGHTS", str(folder))
    assert load_pipeline().unet.config.num_frames == 2
    monkeypatch.setenv("MINISVD_SVD_WEIGHTS", str(tmp_path / "gone"))
    with pytest.raises(FileNotFoundError, match="MINISVD_SVD_WEIGHTS=.*gone does not exist"):
        load_pipeline()
    monkeypatch.delenv("MINISVD_SVD_WEIGHTS")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))  # an empty cache
    with pytest.raises(FileNotFoundError, match="no weights given, MINISVD_SVD_WEIGHTS is not set"):
        load_pipeline()
