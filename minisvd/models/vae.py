"""The video autoencoder of SVD: the SD 2.1 image encoder and a decoder with temporal layers.

SVD runs diffusion in the latent space of the LDM autoencoder (Rombach et al. 2022, Sec. 3): an image
x (3, H, W) in [-1, 1] is encoded to a latent z (4, H/8, W/8). SVD keeps the image *encoder* as it is, but
"finetunes the decoder with temporal layers" so that decoded videos do not flicker (Blattmann et al. 2023,
arXiv 2311.15127, Sec. 4 and App. D.1, following Video LDM, Blattmann et al. 2023b, Sec. 3.1.1):

- every decoder ResBlock gets a temporal ResBlock (3x1x1 convolutions across frames) blended with the
  spatial one by a learned scalar, here the *reversed* way: sigmoid(m) * temporal + (1 - sigmoid(m)) * spatial,
  with m initialised to 0;
- after the last convolution a 3x1x1 Conv3d (`time_conv_out`) smooths the RGB output across frames.

State-dict keys and shapes are identical to diffusers' `AutoencoderKLTemporalDecoder`, so weights load
both ways with `strict=True`. `minisvd.pretrained.original_vae` maps the original single-file checkpoint onto them.

Latent scaling: like diffusers, `encode`/`decode` work on *unscaled* latents. The diffusion model sees
`z * config.scaling_factor` (0.18215, LDM Sec. 4.3.2), so a pipeline multiplies after `encode` and divides
before `decode`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from minisvd.models.distributions import DiagonalGaussian
from minisvd.models.inflate import is_temporal_key, zero_init_temporal_
from minisvd.models.resnet import ResBlock, SpatioTemporalResBlock, Upsample


@dataclass
class VAEConfig:
    """Sizes of the video VAE; the field names follow diffusers' `AutoencoderKLTemporalDecoder` config."""

    in_channels: int = 3  # image channels (RGB)
    out_channels: int = 3  # decoded channels
    block_out_channels: tuple[int, ...] = (128, 256, 512, 512)  # width per resolution level (encoder order)
    layers_per_block: int = 2  # ResBlocks per encoder level (the decoder has one more)
    latent_channels: int = 4  # C of the latent z
    norm_num_groups: int = 32  # GroupNorm groups everywhere (fixed at 32 in SVD, and in diffusers)
    scaling_factor: float = 0.18215  # the pipeline feeds the UNet z * scaling_factor (LDM Sec. 4.3.2)
    sample_size: int = 768  # nominal training resolution (informative only, as in diffusers)
    extra: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)  # unused diffusers keys

    def __post_init__(self):
        self.block_out_channels = tuple(int(c) for c in self.block_out_channels)
        if self.norm_num_groups != 32:
            raise ValueError(
                f"norm_num_groups must be 32 (SVD's and diffusers' VAE), got {self.norm_num_groups}"
            )
        bad = [c for c in self.block_out_channels if c % self.norm_num_groups]
        if bad:
            raise ValueError(
                f"block_out_channels {self.block_out_channels} must be multiples of 32 (GroupNorm)"
            )

    @property
    def downsample_factor(self) -> int:
        """Pixels per latent pixel along H and W: 2^(levels-1) (8 for SVD)."""
        return 2 ** (len(self.block_out_channels) - 1)

    @classmethod
    def svd(cls, **kw) -> VAEConfig:
        """The VAE of SVD and SVD-XT (stabilityai/stable-video-diffusion-img2vid[-xt]/vae): 97,742,847 params."""
        return cls(**kw)

    @classmethod
    def tiny(cls, **kw) -> VAEConfig:
        """A CPU-sized VAE for tests and notebooks: 2 levels (latents 2x smaller), the original-code fixture's size."""
        return cls(**{**dict(block_out_channels=(32, 64), layers_per_block=2, sample_size=32), **kw})

    @classmethod
    def from_diffusers(cls, config: dict[str, Any]) -> VAEConfig:
        """Build from an `AutoencoderKLTemporalDecoder` config dict (its vae/config.json, or `vae.config`)."""
        config = dict(config)
        types = config.pop("down_block_types", ["DownEncoderBlock2D"])
        if any(t != "DownEncoderBlock2D" for t in types):
            raise ValueError(f"only DownEncoderBlock2D encoder blocks are supported, got {list(types)}")
        ours = {k: config.pop(k) for k in list(config) if k in cls.__dataclass_fields__ and k != "extra"}
        ours.setdefault("block_out_channels", (64,))  # diffusers' defaults where the dict is silent
        ours.setdefault("layers_per_block", 1)
        return cls(**ours, extra=config)

    def to_diffusers(self) -> dict[str, Any]:
        """The equivalent `AutoencoderKLTemporalDecoder(**kwargs)` config."""
        return dict(
            in_channels=self.in_channels,
            out_channels=self.out_channels,
            down_block_types=["DownEncoderBlock2D"] * len(self.block_out_channels),
            block_out_channels=list(self.block_out_channels),
            layers_per_block=self.layers_per_block,
            latent_channels=self.latent_channels,
            sample_size=self.sample_size,
            scaling_factor=self.scaling_factor,
        )


# ---------------------------------------------------------------------------------------------------------
# Building blocks
# ---------------------------------------------------------------------------------------------------------


class VAEAttention(nn.Module):
    """Single-head self-attention over all pixels of a feature map, with GroupNorm and a residual (LDM App. G).

    Only used at the lowest resolution (the mid blocks). q, k, v are per-pixel linear maps (1x1 convs in
    the original code).
    """

    def __init__(self, channels: int, eps: float = 1e-6):
        super().__init__()
        self.group_norm = nn.GroupNorm(32, channels, eps=eps)
        self.to_q = nn.Linear(channels, channels)
        self.to_k = nn.Linear(channels, channels)
        self.to_v = nn.Linear(channels, channels)
        self.to_out = nn.ModuleList([nn.Linear(channels, channels), nn.Dropout(0.0)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (N, C, h, w)
        h = x.shape[2]
        tokens = rearrange(self.group_norm(x), "n c h w -> n (h w) c")  # (N, h*w, C)
        q, k, v = self.to_q(tokens), self.to_k(tokens), self.to_v(tokens)
        out = F.scaled_dot_product_attention(q[:, None], k[:, None], v[:, None])  # one head: (N, 1, h*w, C)
        out = self.to_out[0](out[:, 0])
        return x + rearrange(out, "n (h w) c -> n c h w", h=h)


class EncoderDownsample(nn.Module):
    """Stride-2 3x3 conv after padding only right and bottom by one pixel, as the LDM encoder does.

    (The UNet's Downsample pads 1 on every side instead; the two give different pixels.)
    """

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))  # (N, C, H, W) -> (N, C, H/2, W/2)


class DecoderResBlock(SpatioTemporalResBlock):
    """A decoder ResBlock of SVD: spatial ResBlock, temporal ResBlock, reversed learned blend, no time embedding.

    out = sigmoid(m) * temporal + (1 - sigmoid(m)) * spatial with m = 0 at init (Blattmann et al. 2023,
    App. D.1; diffusers' `switch_spatial_to_temporal_mix=True`). The spatial norms use eps 1e-6 (the
    image VAE), the temporal ones 1e-5 (the UNet-style ResBlock the original code reuses).
    `image_only=True` skips the temporal path: the image decoder SVD started from.
    """

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(
            in_channels, out_channels, None, eps=1e-6, merge_factor=0.0, switch_spatial_to_temporal_mix=True
        )
        self.temporal_res_block.norm1.eps = 1e-5
        self.temporal_res_block.norm2.eps = 1e-5

    def forward(self, x: torch.Tensor, num_frames: int, image_only: bool = False) -> torch.Tensor:
        if image_only:
            return self.spatial_res_block(x)  # (B*F, C, H, W)
        # The decoder's blend ignores the image/video indicator ("learned", not "learned_with_images").
        indicator = x.new_zeros(x.shape[0] // num_frames, num_frames)  # (B, F)
        return super().forward(x, None, indicator)


# ---------------------------------------------------------------------------------------------------------
# Encoder and temporal decoder
# ---------------------------------------------------------------------------------------------------------


class EncoderDownBlock(nn.Module):
    """`layers_per_block` ResBlocks, then (except at the last level) a 2x downsampling."""

    def __init__(self, in_channels: int, out_channels: int, num_layers: int, downsample: bool):
        super().__init__()
        c_ins = [in_channels] + [out_channels] * (num_layers - 1)
        self.resnets = nn.ModuleList([ResBlock(c, out_channels, None, eps=1e-6) for c in c_ins])
        self.downsamplers = nn.ModuleList([EncoderDownsample(out_channels)]) if downsample else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for resnet in self.resnets:
            x = resnet(x)
        if self.downsamplers is not None:
            x = self.downsamplers[0](x)
        return x


class EncoderMidBlock(nn.Module):
    """ResBlock, attention, ResBlock at the lowest resolution."""

    def __init__(self, channels: int):
        super().__init__()
        self.attentions = nn.ModuleList([VAEAttention(channels)])
        self.resnets = nn.ModuleList([ResBlock(channels, channels, None, eps=1e-6) for _ in range(2)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.resnets[1](self.attentions[0](self.resnets[0](x)))


class Encoder(nn.Module):
    """The SD 2.1 image encoder: x (N, 3, H, W) -> moments (N, 2*C_z, H/f, W/f), f = 2^(levels-1)."""

    def __init__(self, config: VAEConfig):
        super().__init__()
        ch = config.block_out_channels
        self.conv_in = nn.Conv2d(config.in_channels, ch[0], 3, padding=1)
        n, layers = len(ch), config.layers_per_block
        self.down_blocks = nn.ModuleList(
            [EncoderDownBlock(ch[max(i - 1, 0)], ch[i], layers, downsample=i < n - 1) for i in range(n)]
        )
        self.mid_block = EncoderMidBlock(ch[-1])
        self.conv_norm_out = nn.GroupNorm(32, ch[-1], eps=1e-6)
        self.conv_out = nn.Conv2d(ch[-1], 2 * config.latent_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_in(x)  # (N, ch0, H, W)
        for block in self.down_blocks:
            x = block(x)
        x = self.mid_block(x)  # (N, ch[-1], h, w)
        return self.conv_out(F.silu(self.conv_norm_out(x)))  # (N, 2*C_z, h, w): mean | logvar


class DecoderMidBlock(nn.Module):
    """Video ResBlock, attention (per frame), video ResBlock at the lowest resolution.

    Like diffusers, it holds `layers_per_block` video ResBlocks and runs resnets[0], attention, resnets[1].
    With SVD's layers_per_block=2 that is exactly the original block_1, attn_1, block_2. (Quirk kept for
    identical keys: with 1 layer diffusers skips the attention, with 3+ the extra ResBlocks go unused.)
    """

    def __init__(self, channels: int, num_layers: int):
        super().__init__()
        self.attentions = nn.ModuleList([VAEAttention(channels)])
        self.resnets = nn.ModuleList([DecoderResBlock(channels, channels) for _ in range(num_layers)])

    def forward(self, x: torch.Tensor, num_frames: int, image_only: bool = False) -> torch.Tensor:
        x = self.resnets[0](x, num_frames, image_only)
        for attention, resnet in zip(self.attentions, self.resnets[1:]):
            x = resnet(attention(x), num_frames, image_only)
        return x


class DecoderUpBlock(nn.Module):
    """`layers_per_block + 1` video ResBlocks, then (except at the last level) a 2x nearest upsampling + conv."""

    def __init__(self, in_channels: int, out_channels: int, num_layers: int, upsample: bool):
        super().__init__()
        c_ins = [in_channels] + [out_channels] * (num_layers - 1)
        self.resnets = nn.ModuleList([DecoderResBlock(c, out_channels) for c in c_ins])
        self.upsamplers = nn.ModuleList([Upsample(out_channels)]) if upsample else None

    def forward(self, x: torch.Tensor, num_frames: int, image_only: bool = False) -> torch.Tensor:
        for resnet in self.resnets:
            x = resnet(x, num_frames, image_only)
        if self.upsamplers is not None:
            x = self.upsamplers[0](x)
        return x


class TemporalDecoder(nn.Module):
    """z (B*F, C_z, h, w) -> frames (B*F, 3, H, W), mixing information across the F frames of each video."""

    def __init__(self, config: VAEConfig):
        super().__init__()
        ch = tuple(reversed(config.block_out_channels))  # decoder order: widest first
        self.conv_in = nn.Conv2d(config.latent_channels, ch[0], 3, padding=1)
        self.mid_block = DecoderMidBlock(ch[0], config.layers_per_block)
        n, layers = len(ch), config.layers_per_block + 1
        self.up_blocks = nn.ModuleList(
            [DecoderUpBlock(ch[max(i - 1, 0)], ch[i], layers, upsample=i < n - 1) for i in range(n)]
        )
        self.conv_norm_out = nn.GroupNorm(32, ch[-1], eps=1e-6)
        self.conv_out = nn.Conv2d(ch[-1], config.out_channels, 3, padding=1)
        self.time_conv_out = nn.Conv3d(config.out_channels, config.out_channels, (3, 1, 1), padding=(1, 0, 0))

    def forward(self, z: torch.Tensor, num_frames: int, image_only: bool = False) -> torch.Tensor:
        x = self.conv_in(z)  # (B*F, ch0, h, w)
        x = self.mid_block(x, num_frames, image_only)
        for block in self.up_blocks:
            x = block(x, num_frames, image_only)
        x = self.conv_out(F.silu(self.conv_norm_out(x)))  # (B*F, 3, H, W)
        if image_only:
            return x
        x = rearrange(x, "(b f) c h w -> b c f h w", f=num_frames)
        x = self.time_conv_out(x)  # 3x1x1 conv across frames
        return rearrange(x, "b c f h w -> (b f) c h w")


# ---------------------------------------------------------------------------------------------------------
# The autoencoder
# ---------------------------------------------------------------------------------------------------------


class VideoVAE(nn.Module):
    """SVD's autoencoder: per-frame image encoder, temporal decoder (diffusers `AutoencoderKLTemporalDecoder`)."""

    def __init__(self, config: VAEConfig | None = None):
        super().__init__()
        self.config = config or VAEConfig.svd()
        self.encoder = Encoder(self.config)
        self.decoder = TemporalDecoder(self.config)
        c2 = 2 * self.config.latent_channels
        self.quant_conv = nn.Conv2d(c2, c2, 1)  # 1x1 conv on the moments (identity in the original SVD file)

    def encode(self, images: torch.Tensor) -> DiagonalGaussian:
        """Images (N, 3, H, W) in [-1, 1] -> q(z|x) over unscaled latents (N, C_z, H/f, W/f).

        Frames of a video are independent images here: flatten them first, `"b f c h w -> (b f) c h w"`.
        Multiply `.mode()` or `.sample()` by `config.scaling_factor` before handing latents to the UNet.
        """
        cfg = self.config
        if images.ndim != 4:
            raise ValueError(
                f"encode expects images (N, {cfg.in_channels}, H, W), got shape {tuple(images.shape)} "
                f"(rank {images.ndim}); flatten video frames into N first"
            )
        if images.shape[1] != cfg.in_channels:
            raise ValueError(
                f"encode expects {cfg.in_channels} channels, got {images.shape[1]} ({tuple(images.shape)})"
            )
        f = cfg.downsample_factor
        if images.shape[2] % f or images.shape[3] % f:
            raise ValueError(
                f"image height and width must be divisible by {f} (2^(levels-1) for {len(cfg.block_out_channels)} "
                f"levels), got {images.shape[2]}x{images.shape[3]}"
            )
        moments = self.quant_conv(self.encoder(images))  # (N, 2*C_z, h, w)
        return DiagonalGaussian(moments)

    def decode(
        self,
        latents: torch.Tensor,
        num_frames: int | None = None,
        chunk_size: int | None = None,
        image_only: bool = False,
    ) -> torch.Tensor:
        """Unscaled latents -> frames in about [-1, 1].

        Layouts:
        - (B*F, C_z, h, w) with `num_frames=F`: frames of each video consecutive, video-major (diffusers'
          layout: index b*F + f). Returns (B*F, 3, H, W).
        - (B, F, C_z, h, w): `num_frames` may be omitted. Returns (B, F, 3, H, W).

        `chunk_size=k` decodes k frames of every video at a time (diffusers' `decode_chunk_size`; SVD's
        sampling script uses 14) to save memory. It CHANGES the pixels: the temporal layers only see the
        frames of one chunk. For B=1 it matches diffusers' pipeline chunking exactly; for B>1 we chunk
        each video along its frames, whereas diffusers' pipeline chunks the flattened B*F axis.
        `image_only=True` switches the temporal layers off (spatial path only, no `time_conv_out`): every
        frame is decoded as an image, as the SD image decoder that SVD starts from would.
        """
        cfg = self.config
        video_input = latents.ndim == 5
        if latents.ndim not in (4, 5):
            raise ValueError(
                f"decode expects latents (B*F, {cfg.latent_channels}, h, w) or (B, F, {cfg.latent_channels}, h, w), "
                f"got shape {tuple(latents.shape)} (rank {latents.ndim})"
            )
        if latents.shape[-3] != cfg.latent_channels:
            raise ValueError(
                f"decode expects {cfg.latent_channels} latent channels, got {latents.shape[-3]} ({tuple(latents.shape)})"
            )
        if video_input:
            if num_frames is not None and num_frames != latents.shape[1]:
                raise ValueError(f"num_frames={num_frames} but latents have F={latents.shape[1]} frames")
            z = latents  # (B, F, C, h, w)
        else:
            if num_frames is None or num_frames < 1:
                raise ValueError("decode of (B*F, C, h, w) latents needs num_frames=F (a positive int)")
            if latents.shape[0] % num_frames:
                raise ValueError(
                    f"the batch of {latents.shape[0]} latent frames is not a whole number of videos of "
                    f"num_frames={num_frames}"
                )
            z = rearrange(latents, "(b f) c h w -> b f c h w", f=num_frames)
        if chunk_size is not None and chunk_size < 1:
            raise ValueError(f"chunk_size must be a positive int or None, got {chunk_size}")

        frames = z.shape[1]
        step = chunk_size or frames
        chunks = []
        for start in range(0, frames, step):
            zc = z[:, start : start + step]  # (B, k, C, h, w)
            k = zc.shape[1]
            xc = self.decoder(rearrange(zc, "b k c h w -> (b k) c h w"), num_frames=k, image_only=image_only)
            chunks.append(rearrange(xc, "(b k) c h w -> b k c h w", k=k))
        x = torch.cat(chunks, dim=1)  # (B, F, 3, H, W)
        return x if video_input else rearrange(x, "b f c h w -> (b f) c h w")

    def forward(
        self,
        images: torch.Tensor,
        num_frames: int,
        sample_posterior: bool = False,
        generator: torch.Generator | None = None,
        chunk_size: int | None = None,
        image_only: bool = False,
    ) -> tuple[torch.Tensor, DiagonalGaussian]:
        """Reconstruct (B*F, 3, H, W) frames: encode, take the mean (or a sample), decode. Returns (x_hat, q)."""
        posterior = self.encode(images)
        z = posterior.sample(generator) if sample_posterior else posterior.mode()
        return self.decode(z, num_frames, chunk_size=chunk_size, image_only=image_only), posterior

    @torch.no_grad()
    def init_temporal_as_identity(self) -> VideoVAE:
        """Make the temporal layers pass frames through unchanged, so the video decoder starts as the image decoder.

        Zeroes the last conv of every temporal ResBlock (it then returns its input, so the blend returns
        the spatial path whatever the mix factor) and sets `time_conv_out` to the identity (middle tap 1).
        A safe starting point for finetuning the temporal layers on video, as SVD does (App. D.1).
        """
        zero_init_temporal_(self)
        conv = self.decoder.time_conv_out
        nn.init.zeros_(conv.weight)
        nn.init.zeros_(conv.bias)
        conv.weight[:, :, 1, 0, 0] = torch.eye(conv.out_channels, conv.in_channels)
        return self

    def temporal_parameters(self) -> list[nn.Parameter]:
        """The parameters SVD adds to the image decoder: temporal ResBlocks, their mix factors, time_conv_out."""
        return [p for n, p in self.named_parameters() if is_temporal_key(n)]
