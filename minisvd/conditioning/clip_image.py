"""The CLIP image branch of SVD: the conditioning frame -> one 1024-d CLIP ViT-H/14 token.

SVD conditions the UNet on the CLIP image embedding of the first frame by cross-attention (Blattmann et al.
2023, Sec. 4 "image-to-video"; App. D). The reference code (sgm `FrozenOpenCLIPImagePredictionEmbedder`) and
diffusers' `StableVideoDiffusionPipeline` prepare the frame the same way:

  1. the *clean* frame in [-1, 1] (before conditioning-augmentation noise),
  2. blurred by a Gaussian whose sigma follows the downscale factor, then resized bicubically to 224 x 224,
     without cropping (`resize_with_antialiasing`; the aspect ratio is not kept),
  3. back to [0, 1] and normalised with the CLIP mean and std,
  4. through the vision tower, whose projected pooled output (`image_embeds`) is the token.

The vision tower is transformers' `CLIPVisionModelWithProjection`, the class the real weights ship for.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # OpenAI CLIP pixel mean (RGB), used by ViT-H/14 too
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)  # OpenAI CLIP pixel std (RGB)
CLIP_SIZE = 224  # input side of ViT-H/14


def gaussian_kernel1d(size: int, sigma: float, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Normalised 1-D Gaussian taps exp(-x^2 / (2 sigma^2)) at x = -(size//2) .. size//2."""
    x = torch.arange(size, dtype=dtype) - size // 2
    g = torch.exp(-(x**2) / (2 * torch.tensor(sigma, dtype=dtype) ** 2))
    return g / g.sum()  # (size,)


def _blur_1d(x: torch.Tensor, kernel: torch.Tensor, dim: int) -> torch.Tensor:
    """Depthwise convolution of (N, C, H, W) with a 1-D kernel along H (dim=2) or W (dim=3), reflect padding."""
    C, k = x.shape[1], kernel.numel()
    pad = (k - 1) // 2
    if dim == 3:
        weight = kernel.reshape(1, 1, 1, k).expand(C, 1, 1, k)
        x = F.pad(x, (pad, k - 1 - pad, 0, 0), mode="reflect")
    else:
        weight = kernel.reshape(1, 1, k, 1).expand(C, 1, k, 1)
        x = F.pad(x, (0, 0, pad, k - 1 - pad), mode="reflect")
    return F.conv2d(x, weight.to(x), groups=C)


def resize_with_antialiasing(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Blur, then bicubic resize (align_corners=True): (N, C, H, W) -> (N, C, *size).

    Plain bicubic downscaling aliases; the reference code first blurs with a Gaussian of
    sigma = (factor - 1) / 2 per axis (scikit-image's anti-aliasing rule) over a kernel of about 4 sigma
    (made odd, at least 3 taps). Equal to diffusers' `_resize_with_antialiasing` (tested).
    """
    H, W = x.shape[-2:]
    sigma_h = max((H / size[0] - 1.0) / 2.0, 0.001)
    sigma_w = max((W / size[1] - 1.0) / 2.0, 0.001)
    k_h = int(max(4.0 * sigma_h, 3)) | 1  # odd kernel sizes: "| 1" bumps an even size up by one
    k_w = int(max(4.0 * sigma_w, 3)) | 1
    x = _blur_1d(x, gaussian_kernel1d(k_w, sigma_w, x.dtype), dim=3)  # along W first, as the reference
    x = _blur_1d(x, gaussian_kernel1d(k_h, sigma_h, x.dtype), dim=2)
    return F.interpolate(x, size=size, mode="bicubic", align_corners=True)


def clip_pixels(
    image: torch.Tensor,  # (N, 3, H, W) in [0, 1], the clean conditioning frame at its own size
    mean: tuple[float, ...] = CLIP_MEAN,
    std: tuple[float, ...] = CLIP_STD,
    size: int = CLIP_SIZE,
) -> torch.Tensor:
    """The CLIP vision tower's input: (N, 3, size, size), resized in [-1, 1] as the reference, then normalised."""
    x = resize_with_antialiasing(image * 2.0 - 1.0, (size, size))  # resized in [-1, 1], as sgm does
    x = (x + 1.0) / 2.0  # back to [0, 1]; bicubic overshoot is kept, not clipped (as the reference)
    m = torch.tensor(mean, dtype=x.dtype, device=x.device).reshape(1, -1, 1, 1)
    s = torch.tensor(std, dtype=x.dtype, device=x.device).reshape(1, -1, 1, 1)
    return (x - m) / s


@torch.no_grad()
def encode_image(image_encoder: torch.nn.Module, pixels: torch.Tensor) -> torch.Tensor:
    """CLIP image token: (N, 3, 224, 224) normalised pixels -> (N, 1, D), D = projection dim (1024 in SVD)."""
    p = next(image_encoder.parameters())
    embeds = image_encoder(pixels.to(device=p.device, dtype=p.dtype)).image_embeds  # (N, D)
    return embeds[:, None]  # (N, 1, D): one token per video


def clip_embed(
    image_encoder: torch.nn.Module,
    images: torch.Tensor,  # (B, 3, H, W) in [0, 1], the clean conditioning frames
    mean: tuple[float, ...] = CLIP_MEAN,
    std: tuple[float, ...] = CLIP_STD,
) -> torch.Tensor:
    """Steps 2-4 for a batch: clean frames -> CLIP image tokens (B, 1, D), the UNet's cross-attention context."""
    return encode_image(image_encoder, clip_pixels(images, mean, std))
