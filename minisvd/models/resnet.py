"""Residual blocks of the video UNet and the video VAE decoder, and the AlphaBlender that mixes them.

SVD "inflates" an image ResBlock into a video one (Blattmann et al. 2023, Sec. 3; the construction of
Video LDM, Blattmann et al. 2023b, Eq. 2): the spatial ResBlock runs on every frame independently, a
temporal ResBlock with 3x1x1 convolutions then mixes information across frames, and a learned scalar
blends the two paths:  out = alpha * spatial + (1 - alpha) * temporal,  alpha = sigmoid(mix_factor).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn


class GroupNorm32(nn.GroupNorm):
    """GroupNorm computed in float32 whatever the input dtype, as the original SVD code does.

    diffusers computes its norms in the input dtype; in fp32 the two are identical, in fp16/bf16 this is
    the more accurate (and original) behaviour.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float32:
            return super().forward(x)
        return F.group_norm(x.float(), self.num_groups, self.weight.float(), self.bias.float(), self.eps).to(
            x.dtype
        )


class ResBlock(nn.Module):
    """Image ResBlock (Ho et al. 2020 / LDM): norm-SiLU-conv, + time embedding, norm-SiLU-conv, + skip.

    Works for 2-D (B*F, C, H, W) with `dims=2` and for the temporal variant (B, C, F, H, W) with
    `dims=3` and 3x1x1 kernels, which only mixes along frames.
    """

    def __init__(
        self,
        in_channels: int,  # C_in
        out_channels: int,  # C_out
        temb_channels: int | None,  # width of the time embedding (None: no time embedding)
        eps: float = 1e-5,  # GroupNorm eps (the original uses 1e-5; see UNetConfig.diffusers_resnet_eps)
        dims: int = 2,  # 2: spatial 3x3 convs; 3: temporal 3x1x1 convs
        dropout: float = 0.0,  # before the second conv (UNetConfig.dropout)
    ):
        super().__init__()
        Conv = nn.Conv2d if dims == 2 else nn.Conv3d
        k, pad = (3, 1) if dims == 2 else ((3, 1, 1), (1, 0, 0))
        self.norm1 = GroupNorm32(32, in_channels, eps=eps)
        self.conv1 = Conv(in_channels, out_channels, k, padding=pad)
        self.time_emb_proj = nn.Linear(temb_channels, out_channels) if temb_channels else None
        self.norm2 = GroupNorm32(32, out_channels, eps=eps)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = Conv(out_channels, out_channels, k, padding=pad)
        self.conv_shortcut = Conv(in_channels, out_channels, 1) if in_channels != out_channels else None
        self.dims = dims

    def forward(self, x: torch.Tensor, temb: torch.Tensor | None = None) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        if self.time_emb_proj is not None and temb is not None:
            e = self.time_emb_proj(F.silu(temb))  # (N, C_out) or (B, F, C_out)
            if self.dims == 2:
                h = h + e[:, :, None, None]  # (B*F, C, H, W)
            else:
                h = h + rearrange(e, "b f c -> b c f 1 1")  # (B, C, F, H, W)
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        skip = x if self.conv_shortcut is None else self.conv_shortcut(x)
        return skip + h


class TemporalResBlock(ResBlock):
    """The temporal ResBlock: 3x1x1 convolutions over (B, C, F, H, W), mixing only across frames."""

    def __init__(self, channels: int, temb_channels: int | None, eps: float = 1e-5, dropout: float = 0.0):
        super().__init__(channels, channels, temb_channels, eps=eps, dims=3, dropout=dropout)


class AlphaBlender(nn.Module):
    """Learned blend of the spatial and temporal paths: alpha*spatial + (1-alpha)*temporal.

    alpha = sigmoid(mix_factor) for video frames and exactly 1 for images (`image_only_indicator` = 1),
    so a video model run on images *is* the image model ("learned_with_images" in the original code).
    `switch=True` reverses the roles (the VAE decoder: sigmoid(m)*temporal + (1-sigmoid(m))*spatial).
    """

    def __init__(self, alpha: float = 0.5, switch: bool = False):
        super().__init__()
        self.mix_factor = nn.Parameter(torch.tensor([float(alpha)]))
        self.switch = switch

    def spatial_only(self, image_only_indicator: torch.Tensor | None) -> bool:
        """True when every frame is an image: alpha is exactly 1, so the blend returns the spatial path whatever
        the temporal one computes, and the caller skips the temporal layers (the image model at its cost).
        The temporal parameters then get no gradient (None) instead of an exact zero."""
        return not self.switch and image_only_indicator is not None and bool(image_only_indicator.all())

    def get_alpha(self, image_only_indicator: torch.Tensor | None) -> torch.Tensor:
        """alpha per (batch, frame): (B, F); 1 where the frame is an image."""
        a = torch.sigmoid(self.mix_factor)
        if image_only_indicator is None:
            return a.reshape(1, 1)
        return torch.where(image_only_indicator.bool(), torch.ones_like(a), a)

    def forward(
        self, x_spatial: torch.Tensor, x_temporal: torch.Tensor, image_only_indicator: torch.Tensor | None
    ) -> torch.Tensor:
        alpha = self.get_alpha(image_only_indicator).to(x_spatial.dtype)  # (B, F)
        if x_spatial.ndim == 5:  # (B, C, F, H, W)
            alpha = rearrange(alpha, "b f -> b 1 f 1 1")
        else:  # (B*F, S, C) tokens
            alpha = rearrange(alpha, "b f -> (b f) 1 1")
        if self.switch:
            alpha = 1.0 - alpha
        return alpha * x_spatial + (1.0 - alpha) * x_temporal


class SpatioTemporalResBlock(nn.Module):
    """Spatial ResBlock on each frame, then a temporal ResBlock across frames, blended by an AlphaBlender."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        temb_channels: int | None,
        eps: float = 1e-5,
        merge_factor: float = 0.5,  # initial mix_factor (0.5 in the UNet, 0 in the VAE decoder)
        switch_spatial_to_temporal_mix: bool = False,  # True in the VAE decoder
        dropout: float = 0.0,  # of both ResBlocks
    ):
        super().__init__()
        self.spatial_res_block = ResBlock(in_channels, out_channels, temb_channels, eps=eps, dropout=dropout)
        self.temporal_res_block = TemporalResBlock(out_channels, temb_channels, eps=eps, dropout=dropout)
        self.time_mixer = AlphaBlender(merge_factor, switch=switch_spatial_to_temporal_mix)

    def forward(
        self, x: torch.Tensor, temb: torch.Tensor | None, image_only_indicator: torch.Tensor
    ) -> torch.Tensor:
        num_frames = image_only_indicator.shape[-1]
        x = self.spatial_res_block(x, temb)  # (B*F, C, H, W)
        if self.time_mixer.spatial_only(image_only_indicator):
            return x  # images only: alpha = 1, the temporal path would be multiplied by 0
        x_spatial = rearrange(x, "(b f) c h w -> b c f h w", f=num_frames)
        if temb is not None:
            temb = rearrange(temb, "(b f) c -> b f c", f=num_frames)
        x_temporal = self.temporal_res_block(x_spatial, temb)  # (B, C, F, H, W)
        x = self.time_mixer(x_spatial, x_temporal, image_only_indicator)
        return rearrange(x, "b c f h w -> (b f) c h w")


class Downsample(nn.Module):
    """3x3 convolution with stride 2 (halves H and W)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Nearest-neighbour x2 upsampling, then a 3x3 convolution."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))
