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

import numpy as np
import torch
import torch.nn.functional as F

from minisvd.edm import append_dims


def image_to_tensor(image) -> torch.Tensor:
    """PIL image, HxWx3 uint8/float numpy array, or (3, H, W) / (1, 3, H, W) tensor in [0, 1] -> (1, 3, H, W) float32."""
    try:
        import PIL.Image

        if isinstance(image, PIL.Image.Image):
            image = np.asarray(image.convert("RGB"))
    except ImportError:  # pragma: no cover - Pillow is a dependency
        pass
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[-1] != 3:
            raise ValueError(f"numpy images must be (H, W, 3), got shape {image.shape}")
        scale = 255.0 if image.dtype == np.uint8 else 1.0
        image = torch.from_numpy(image.astype(np.float32) / scale).permute(2, 0, 1)
    if not torch.is_tensor(image):
        raise TypeError(
            f"image must be a PIL image, a numpy array or a torch tensor, got {type(image).__name__}"
        )
    if image.ndim == 3:
        image = image[None]
    if image.ndim != 4 or image.shape[:2] != (1, 3):
        raise ValueError(
            f"image tensors must be (3, H, W) or (1, 3, H, W) in [0, 1], got {tuple(image.shape)}"
        )
    return image.float()


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
