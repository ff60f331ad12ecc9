"""The conditioning frame's VAE branch of SVD: the first frame, noise-augmented, encoded to a latent.

SVD concatenates the latent of the conditioning frame to the noisy video latent on channels, repeated
over all frames (Blattmann et al. 2023, Sec. 4 "image-to-video", App. D; 4 + 4 = 8 UNet input channels).
Before encoding, the frame is corrupted with Gaussian noise of strength cond_aug ("conditioning
augmentation"): x_aug = x + cond_aug * n. Training draws cond_aug ~ lognormal(-3.0, 0.5)
(`minisvd.edm.sample_cond_aug`); sampling uses a fixed value (0.02 by default). The same cond_aug value
also reaches the UNet as the third micro-conditioning id (`minisvd.conditioning.micro`).

The latent is taken at the posterior's mode and is *not* multiplied by the VAE scaling factor (as in the
original code and diffusers: the UNet learned that scale).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from minisvd.edm import append_dims

_RANGE_TOL = 1e-3  # float images a rounding error outside [0, 1] are clamped, not refused
_DTYPE_FIX = "use uint8 (0..255) or float values in [0, 1] (a 16-bit image: divide it by 65535.0)"


def image_to_tensor(image) -> torch.Tensor:
    """One RGB image -> (1, 3, H, W) float32 in [0, 1]. Accepted, with their real value ranges:

      - a PIL image (any mode, converted to RGB);
      - uint8 (0..255, divided by 255): numpy (H, W, 3) or (3, H, W); torch (3, H, W) (what
        `torchvision.io.read_image` returns) or (H, W, 3); either with a leading batch dim of 1;
      - float numpy arrays / torch tensors of those shapes with values in [0, 1].

    Anything else raises, naming what it got: other dtypes and types (TypeError), float values outside
    [0, 1] such as a 0..255 or -1..1 image, NaN, wrong shapes (ValueError, with the fix)."""
    import PIL.Image

    if isinstance(image, PIL.Image.Image):
        image = np.asarray(image.convert("RGB"))
    if isinstance(image, np.ndarray):
        kind, channels_last = "numpy array", True  # numpy images are (H, W, 3) by convention
        if image.dtype != np.uint8 and not np.issubdtype(image.dtype, np.floating):
            raise TypeError(f"image {kind} has dtype {image.dtype}: {_DTYPE_FIX}")
        image = torch.from_numpy(np.array(image))  # a writable copy (PIL arrays are read-only)
    elif torch.is_tensor(image):
        kind, channels_last = "tensor", False  # torch images are (3, H, W) by convention
        if image.dtype != torch.uint8 and not image.is_floating_point():
            raise TypeError(f"image tensor has dtype {image.dtype}: {_DTYPE_FIX}")
    else:
        hint = "; open the file first, e.g. PIL.Image.open(path)" if isinstance(image, (str, Path)) else ""
        raise TypeError(
            f"image must be a PIL image, a numpy array or a torch tensor, got {type(image).__name__}{hint}"
        )
    x = image.detach()
    if x.ndim == 4 and x.shape[0] == 1:
        x = x[0]
    order = (2, 0, 1) if channels_last else (0, 1, 2)  # the permutation to (3, H, W)
    if x.ndim == 3 and x.shape[order[0]] != 3:  # the other layout, if that one fits
        order = (0, 1, 2) if channels_last else (2, 0, 1)
    if x.ndim != 3 or x.shape[order[0]] != 3:
        fix = ""
        if x.ndim == 2:
            fix = " (grayscale: convert it to RGB)"
        elif x.ndim == 3 and 4 in (x.shape[0], x.shape[-1]):
            fix = " (RGBA: drop the alpha channel)"
        raise ValueError(
            f"image {kind} must be RGB, (H, W, 3) or (3, H, W) with an optional batch dim of 1, "
            f"got shape {tuple(image.shape)}{fix}"
        )
    x = x.permute(*order)[None]  # (1, 3, H, W)
    if x.shape[-1] == 0 or x.shape[-2] == 0:
        raise ValueError(f"image {kind} is empty: shape {tuple(image.shape)}")
    if x.dtype == torch.uint8:
        return x.float() / 255.0
    x = x.float()
    lo, hi = x.amin().item(), x.amax().item()
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise ValueError(f"image {kind} holds NaN or infinite values")
    if lo < -_RANGE_TOL or hi > 1 + _RANGE_TOL:
        if lo >= 0 and hi <= 255:
            fix = "it looks like a 0..255 image: divide it by 255 (or pass it as uint8)"
        elif lo >= -1 - _RANGE_TOL and hi <= 1 + _RANGE_TOL:
            fix = "it looks like a -1..1 image: pass (image + 1) / 2"
        else:
            fix = "rescale it to [0, 1]"
        raise ValueError(
            f"float image values must be in [0, 1], found {kind} values in [{lo:.4g}, {hi:.4g}]; {fix}"
        )
    return x.clamp(0, 1)


def resize_for_vae(image, height: int, width: int) -> torch.Tensor:
    """The VAE branch's frame: resized to (height, width) (Lanczos for PIL, as diffusers), in [-1, 1]: (1, 3, H, W)."""
    import PIL.Image

    if isinstance(image, PIL.Image.Image):
        # the same PIL call as diffusers' VaeImageProcessor, so parity holds to the last bit
        image = image.convert("RGB").resize((width, height), resample=PIL.Image.Resampling.LANCZOS)
        x = image_to_tensor(image)
    else:
        x = image_to_tensor(image)
        if x.shape[-2:] != (height, width):
            x = F.interpolate(x, size=(height, width), mode="bicubic", align_corners=False, antialias=True)
    return x * 2.0 - 1.0


def noise_augment(
    frames: torch.Tensor,  # (B, 3, H, W) in [-1, 1]
    cond_aug: float | torch.Tensor,  # scalar or (B,): the noise strength per video
    noise: torch.Tensor,  # (B, 3, H, W) standard Gaussian noise
) -> torch.Tensor:
    """Conditioning augmentation x + cond_aug * n (SVD App. D), per video."""
    cond_aug = torch.as_tensor(cond_aug, dtype=frames.dtype, device=frames.device)
    if cond_aug.ndim == 1:
        cond_aug = append_dims(cond_aug, frames.ndim)  # (B, 1, 1, 1)
    return frames + cond_aug * noise


@torch.no_grad()
def encode_latent(vae: torch.nn.Module, frames: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) in [-1, 1] -> the VAE posterior's mode, unscaled, (B, C_z, H/f, W/f).

    fp16 encoding overflows in the SD encoder; like diffusers (`force_upcast`) an fp16 VAE encodes in fp32
    and is cast back afterwards, also when encoding fails.
    """
    vae_dtype = next(vae.parameters()).dtype
    if vae_dtype != torch.float16:
        return vae.encode(frames.to(vae_dtype)).mode()
    vae.float()
    try:
        return vae.encode(frames.float()).mode()
    finally:
        vae.to(vae_dtype)
