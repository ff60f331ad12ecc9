"""Turning an image model into a video model ("inflation", Blattmann et al. 2023, Sec. 3; Video LDM Sec. 3.1).

SVD starts from Stable Diffusion 2.1: the spatial layers keep the image weights, the new temporal layers
are added so that at initialisation the video model computes exactly what the image model computed:
  - the last convolution of every temporal ResBlock starts at zero, so the temporal path returns its input
    and alpha*x + (1-alpha)*x = x whatever alpha is;
  - for images (`image_only_indicator` = 1) alpha is exactly 1, so every temporal layer is bypassed.
"""

from __future__ import annotations

import torch
from torch import nn

from minisvd.models.resnet import TemporalResBlock


def zero_init_temporal_(model: nn.Module) -> nn.Module:
    """Zero the output convolution of every temporal ResBlock (the original code's `zero_module`)."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, TemporalResBlock):
                m.conv2.weight.zero_()
                m.conv2.bias.zero_()
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
