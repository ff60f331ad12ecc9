"""Original SVD UNet keys (`model.diffusion_model.*` in svd.safetensors / svd_xt.safetensors) -> ours.

Ours are diffusers' `UNetSpatioTemporalConditionModel` names. The conversion is two readable tables:
  1. block table: where each original numbered block lives in our tree (built from the config, because the
     original numbers blocks sequentially: input_blocks.{k}, output_blocks.{k});
  2. inner renames: how the layers inside a ResBlock / transformer are called on each side.
Unlike diffusers' own converter (scripts/convert_svd_to_diffusers.py, which drops
`up_blocks.0.resnets.1.time_mixer.mix_factor` on a two-level config) this keeps every `time_mixer.mix_factor`,
and it does not mutate the dict it is given.
"""

from __future__ import annotations

import torch

from minisvd.models.unet import UNetConfig

PREFIX = "model.diffusion_model."

# Layers inside an original ResBlock (`in_layers`, `emb_layers`, `out_layers`) -> our ResBlock
RESBLOCK_RENAMES = [
    ("in_layers.0.", "norm1."),
    ("in_layers.2.", "conv1."),
    ("emb_layers.1.", "time_emb_proj."),
    ("out_layers.0.", "norm2."),
    ("out_layers.3.", "conv2."),
    ("skip_connection.", "conv_shortcut."),
]

# Inside an original VideoResBlock: the spatial ResBlock is the block itself, `time_stack` the temporal one
VIDEO_RESBLOCK_RENAMES = [("time_stack.", "temporal_res_block."), ("time_mixer.", "time_mixer.")]

# Inside an original SpatialVideoTransformer
TRANSFORMER_RENAMES = [
    ("time_stack.", "temporal_transformer_blocks."),
    ("time_pos_embed.0.", "time_pos_embed.linear_1."),
    ("time_pos_embed.2.", "time_pos_embed.linear_2."),
]

# Top-level layers
TOP_LEVEL = {
    "time_embed.0.": "time_embedding.linear_1.",
    "time_embed.2.": "time_embedding.linear_2.",
    "label_emb.0.0.": "add_embedding.linear_1.",
    "label_emb.0.2.": "add_embedding.linear_2.",
    "input_blocks.0.0.": "conv_in.",
    "out.0.": "conv_norm_out.",
    "out.2.": "conv_out.",
}


def unet_key_table(config: UNetConfig) -> dict[str, tuple[str, str]]:
    """Block table: original block prefix -> (our prefix, kind), kind in {resblock, transformer, plain}."""
    L, n = config.layers_per_block, len(config.block_out_channels)
    table: dict[str, tuple[str, str]] = {k: (v, "plain") for k, v in TOP_LEVEL.items()}
    for i in range(n):  # down path: input_blocks.{1 + i*(L+1) + j}
        for j in range(L):
            k = 1 + i * (L + 1) + j
            table[f"input_blocks.{k}.0."] = (f"down_blocks.{i}.resnets.{j}.", "resblock")
            if config.attention_levels[i]:
                table[f"input_blocks.{k}.1."] = (f"down_blocks.{i}.attentions.{j}.", "transformer")
        if i < n - 1:
            table[f"input_blocks.{1 + i * (L + 1) + L}.0.op."] = (
                f"down_blocks.{i}.downsamplers.0.conv.",
                "plain",
            )
    table["middle_block.0."] = ("mid_block.resnets.0.", "resblock")
    table["middle_block.1."] = ("mid_block.attentions.0.", "transformer")
    table["middle_block.2."] = ("mid_block.resnets.1.", "resblock")
    for i in range(n):  # up path: output_blocks.{i*(L+1) + j}, level = n-1-i
        attn = config.attention_levels[n - 1 - i]
        for j in range(L + 1):
            k = i * (L + 1) + j
            table[f"output_blocks.{k}.0."] = (f"up_blocks.{i}.resnets.{j}.", "resblock")
            if attn:
                table[f"output_blocks.{k}.1."] = (f"up_blocks.{i}.attentions.{j}.", "transformer")
        if i < n - 1:
            k = i * (L + 1) + L
            table[f"output_blocks.{k}.{2 if attn else 1}.conv."] = (
                f"up_blocks.{i}.upsamplers.0.conv.",
                "plain",
            )
    return table


def _rename_inner(rest: str, kind: str) -> str:
    if kind == "transformer":
        for a, b in TRANSFORMER_RENAMES:
            if rest.startswith(a):
                return b + rest[len(a) :]
        return rest  # norm, proj_in, proj_out, transformer_blocks.*, time_mixer.* keep their names
    if kind == "resblock":
        for a, b in VIDEO_RESBLOCK_RENAMES:
            if rest.startswith(a):
                head, rest = b, rest[len(a) :]
                break
        else:
            head = "spatial_res_block."
        if head == "time_mixer.":
            return head + rest
        for a, b in RESBLOCK_RENAMES:
            if rest.startswith(a):
                return head + b + rest[len(a) :]
        raise KeyError(rest)
    return rest


def convert_unet_state_dict(original: dict[str, torch.Tensor], config: UNetConfig) -> dict[str, torch.Tensor]:
    """Convert the UNet part of an original checkpoint (keys with or without `model.diffusion_model.`)."""
    table = unet_key_table(config)
    # longest prefix first, so "input_blocks.1.0." never shadows "input_blocks.10.0."
    prefixes = sorted(table, key=len, reverse=True)
    out, unplaced = {}, []
    for key, value in original.items():
        if key.startswith(PREFIX):
            key = key[len(PREFIX) :]
        elif "." in key and key.split(".")[0] in (
            "first_stage_model",
            "conditioner",
            "model_ema",
            "denoiser",
        ):
            continue  # other parts of a full checkpoint
        for p in prefixes:
            if key.startswith(p):
                ours, kind = table[p]
                try:
                    out[ours + _rename_inner(key[len(p) :], kind)] = value
                except KeyError:
                    unplaced.append(key)
                break
        else:
            unplaced.append(key)
    if unplaced:
        raise ValueError(
            f"{len(unplaced)} original UNet key(s) have no place in a UNet with this config "
            f"(wrong size preset?): {unplaced[:10]}"
        )
    return out
