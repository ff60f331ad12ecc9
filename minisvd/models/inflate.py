"""Turning an image model into a video model ("inflation", Blattmann et al. 2023, Sec. 3; Video LDM Sec. 3.1).

SVD starts from Stable Diffusion 2.1: the spatial layers keep the image weights and the new temporal layers
are added. `zero_init_temporal_` then makes every temporal path return its input, so that at
initialisation the video model computes exactly what the image model computed on each frame. Every block
blends alpha * x_spatial + (1 - alpha) * x_temporal, and if x_temporal = x_spatial that is x_spatial for
any alpha. It zeroes (weight and bias):
  - `conv2` of every TemporalResBlock, the last layer of its residual branch: it returns its input
    (the original code's `zero_module` on the ResBlock output conv);
  - in every TemporalTransformerBlock, the last layer of each residual branch, `ff_in.net[2]`,
    `attn1.to_out[0]`, `attn2.to_out[0]` and `ff.net[2]`: each branch adds 0, the block returns its input;
  - `time_pos_embed.linear_2` of every SpatioTemporalTransformer: the frame-position embedding added to
    the temporal blocks' input is 0.
Zeroing only the ResBlock convs is not enough: the temporal transformers would still change the output.
The zeroed layers still receive gradients (through the nonzero layers before them), so they train.
For images (`image_only_indicator` = 1) alpha is exactly 1 and every temporal layer is bypassed anyway.
"""

from __future__ import annotations

import torch
from torch import nn

from minisvd.models.attention import SpatioTemporalTransformer, TemporalTransformerBlock
from minisvd.models.resnet import TemporalResBlock


def _last_layers(m: nn.Module) -> list[nn.Module]:
    """The layers of `m` that zero_init_temporal_ zeroes (none if m is not a temporal module)."""
    if isinstance(m, TemporalResBlock):
        return [m.conv2]
    if isinstance(m, TemporalTransformerBlock):
        return [m.ff_in.net[2], m.attn1.to_out[0], m.attn2.to_out[0], m.ff.net[2]]
    if isinstance(m, SpatioTemporalTransformer):
        return [m.time_pos_embed.linear_2]
    return []


def zero_init_temporal_(model: nn.Module) -> nn.Module:
    """Zero the last layer of every temporal residual branch (see the module doc): every temporal path
    becomes the identity and the video model equals the image model. In the VAE decoder, which has
    temporal ResBlocks and no transformers, these are the ResBlocks' conv2."""
    with torch.no_grad():
        for m in model.modules():
            for layer in _last_layers(m):
                layer.weight.zero_()
                layer.bias.zero_()
    return model


def is_temporal_key(name: str) -> bool:
    """True for parameters that the video model adds to the image model."""
    return any(
        s in name
        for s in (
            "temporal_res_block",
            "temporal_transformer_blocks",
            "time_mixer",
            "time_pos_embed",
            "time_conv_out",
        )
    )


def inflate_from_image_weights(
    video_model: nn.Module, image_state_dict: dict[str, torch.Tensor]
) -> list[str]:
    """Copy image weights into the spatial layers of `video_model`; return the temporal keys left new.

    `image_state_dict` uses the same names as the video model minus the temporal layers (what you get
    when an image-only model of the same config is saved). Raises if a spatial key is missing or mis-shaped.
    """
    own = video_model.state_dict()
    spatial = [k for k in own if not is_temporal_key(k)]
    missing = [k for k in spatial if k not in image_state_dict]
    bad = [
        f"{k}: {tuple(own[k].shape)} vs {tuple(image_state_dict[k].shape)}"
        for k in spatial
        if k in image_state_dict and own[k].shape != image_state_dict[k].shape
    ]
    if missing or bad:
        raise ValueError(
            f"image weights do not fit the video model's spatial layers: missing {missing[:10]}, "
            f"mis-shaped {bad[:10]}"
        )
    with torch.no_grad():
        for k in spatial:
            own[k].copy_(image_state_dict[k])
    return [k for k in own if is_temporal_key(k)]
