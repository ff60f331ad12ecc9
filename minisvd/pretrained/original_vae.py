"""Map the VAE of an original SVD single-file checkpoint (svd.safetensors, svd_xt.safetensors) onto our keys.

The original code (Stability-AI/generative-models) stores the autoencoder under `first_stage_model.` with
LDM names (`encoder.down.0.block.1.nin_shortcut`, `decoder.up.3.block.0.time_stack.in_layers.2`, ...). Our
`VideoVAE` uses diffusers' `AutoencoderKLTemporalDecoder` names. The tables below are the whole mapping;
three things are not plain renames:

- the decoder's `up.{i}` levels count from the lowest resolution, ours (`up_blocks.{j}`) from the highest:
  j = levels - 1 - i;
- the attention q/k/v/proj_out are 1x1 convolutions (C, C, 1, 1) there and Linear layers (C, C) here;
- the output time conv sits at `decoder.conv_out.time_mix_conv` there (diffusers' own converter misses it)
  and `decoder.time_conv_out` here;
- the original SVD autoencoder (`first_stage_model`) has no `quant_conv`; when the file has none we put in
  the identity 1x1 conv, which gives exactly the original's moments.

A real single file also holds a second copy of the autoencoder inside the conditioner,
`conditioner.embedders.3.encoder.` (sgm's `AutoencoderKLModeOnly`, with a plain image decoder and a
`quant_conv`). At sampling the reference code encodes the conditioning frame with that copy, never with
`first_stage_model.encoder`, so `svd_vae_parts` takes the encoder and `quant_conv` from it (as diffusers'
single-file loader does), the temporal decoder from `first_stage_model`, and measures how far the two encoder
copies are apart. The copy's image decoder and `post_quant_conv` are skipped by name: SVD never calls them.
"""

from __future__ import annotations

import re

import torch

# ResBlock leaves: original -> ours (the image ResBlocks of the encoder)
RESNET_LEAVES = {
    "norm1": "norm1",
    "conv1": "conv1",
    "norm2": "norm2",
    "conv2": "conv2",
    "nin_shortcut": "conv_shortcut",
}

# Video ResBlock leaves of the decoder: spatial ResBlock + `time_stack` (temporal ResBlock) + mix factor
VIDEO_RESNET_LEAVES = {
    "norm1": "spatial_res_block.norm1",
    "conv1": "spatial_res_block.conv1",
    "norm2": "spatial_res_block.norm2",
    "conv2": "spatial_res_block.conv2",
    "nin_shortcut": "spatial_res_block.conv_shortcut",
    "time_stack.in_layers.0": "temporal_res_block.norm1",  # in_layers = [GroupNorm, SiLU, Conv3d]
    "time_stack.in_layers.2": "temporal_res_block.conv1",
    "time_stack.out_layers.0": "temporal_res_block.norm2",  # out_layers = [GroupNorm, SiLU, Dropout, Conv3d]
    "time_stack.out_layers.3": "temporal_res_block.conv2",
    "mix_factor": "time_mixer.mix_factor",
}

# Mid-block attention leaves (1x1 convs there, Linear here)
ATTENTION_LEAVES = {
    "norm": "group_norm",
    "q": "to_q",
    "k": "to_k",
    "v": "to_v",
    "proj_out": "to_out.0",
}

# Module prefixes: original regex -> our prefix ({up} is the reversed decoder level), and the leaf table.
PREFIXES: list[tuple[str, str, dict[str, str] | None]] = [
    (r"encoder\.conv_in", "encoder.conv_in", None),
    (r"encoder\.down\.(\d+)\.block\.(\d+)", r"encoder.down_blocks.\1.resnets.\2", RESNET_LEAVES),
    (r"encoder\.down\.(\d+)\.downsample\.conv", r"encoder.down_blocks.\1.downsamplers.0.conv", None),
    (r"encoder\.mid\.block_1", "encoder.mid_block.resnets.0", RESNET_LEAVES),
    (r"encoder\.mid\.attn_1", "encoder.mid_block.attentions.0", ATTENTION_LEAVES),
    (r"encoder\.mid\.block_2", "encoder.mid_block.resnets.1", RESNET_LEAVES),
    (r"encoder\.norm_out", "encoder.conv_norm_out", None),
    (r"encoder\.conv_out", "encoder.conv_out", None),
    (r"quant_conv", "quant_conv", None),
    (r"decoder\.conv_in", "decoder.conv_in", None),
    (r"decoder\.mid\.block_1", "decoder.mid_block.resnets.0", VIDEO_RESNET_LEAVES),
    (r"decoder\.mid\.attn_1", "decoder.mid_block.attentions.0", ATTENTION_LEAVES),
    (r"decoder\.mid\.block_2", "decoder.mid_block.resnets.1", VIDEO_RESNET_LEAVES),
    (r"decoder\.up\.(\d+)\.block\.(\d+)", r"decoder.up_blocks.{up}.resnets.\2", VIDEO_RESNET_LEAVES),
    (r"decoder\.up\.(\d+)\.upsample\.conv", r"decoder.up_blocks.{up}.upsamplers.0.conv", None),
    (r"decoder\.norm_out", "decoder.conv_norm_out", None),
    (r"decoder\.conv_out\.time_mix_conv", "decoder.time_conv_out", None),  # missed by diffusers' converter
    (r"decoder\.conv_out", "decoder.conv_out", None),
]


COND_VAE = "conditioner.embedders.3.encoder."  # the conditioner's autoencoder copy
COND_VAE_UNUSED = re.compile(r"(decoder\..+|post_quant_conv\.(weight|bias))")  # under COND_VAE


def svd_vae_parts(original_sd: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], float | None]:
    """The VAE of an original SVD file in original names (no prefix) and the max abs difference between its two
    encoder copies (None when the file has no conditioner copy).

    Decoder from `first_stage_model.`; encoder and quant_conv from the conditioner's copy when the file has one
    (what encodes the conditioning frame in the reference code), else from `first_stage_model.`."""
    first = {
        k[len("first_stage_model.") :]: v
        for k, v in original_sd.items()
        if k.startswith("first_stage_model.")
    }
    copy = {k[len(COND_VAE) :]: v for k, v in original_sd.items() if k.startswith(COND_VAE)}
    if not copy:
        return first, None
    copy = {k: v for k, v in copy.items() if not COND_VAE_UNUSED.fullmatch(k)}
    enc_first = {k for k in first if k.startswith("encoder.")}
    enc_copy = {k for k in copy if k.startswith("encoder.")}
    strays = sorted(k for k in copy if not (k.startswith("encoder.") or k.startswith("quant_conv.")))
    if enc_first != enc_copy or strays:
        odd = sorted(enc_first ^ enc_copy) + strays
        raise ValueError(
            f"the conditioner's VAE copy ({COND_VAE}*) does not match first_stage_model.encoder: "
            + ", ".join(odd[:5])
            + (f" and {len(odd) - 5} more" if len(odd) > 5 else "")
        )
    diff = max((first[k].float() - copy[k].float()).abs().max().item() for k in enc_first)
    merged = {k: v for k, v in first.items() if not k.startswith(("encoder.", "quant_conv."))}
    return {**merged, **copy}, diff


def convert_vae_key(key: str, levels: int) -> str | None:
    """Our name for one original key (without `first_stage_model.`), or None if the tables cannot place it."""
    for pattern, target, leaves in PREFIXES:
        m = re.fullmatch(pattern + r"\.(?P<rest>.+)", key)
        if m is None:
            continue
        prefix = m.expand(target)
        if "{up}" in prefix:  # decoder levels are numbered the other way round
            prefix = prefix.replace("{up}", str(levels - 1 - int(m.group(1))))
        rest = m.group(
            "rest"
        )  # e.g. "weight", "nin_shortcut.bias", "time_stack.in_layers.2.weight", "mix_factor"
        if leaves is None:
            return f"{prefix}.{rest}" if rest in ("weight", "bias") else None
        if rest == "mix_factor":  # a bare parameter
            return f"{prefix}.{leaves['mix_factor']}" if "mix_factor" in leaves else None
        leaf, _, param = rest.rpartition(".")
        if leaf not in leaves or param not in ("weight", "bias"):
            return None
        return f"{prefix}.{leaves[leaf]}.{param}"
    return None


def convert_vae_state_dict(original_sd: dict[str, torch.Tensor], prefix: str = "first_stage_model.") -> dict:
    """Original SVD checkpoint (whole file or just the VAE) -> a `VideoVAE` / diffusers state dict.

    Only keys under `prefix` are read (pass prefix="" for a VAE-only dict); the input is not modified.
    Raises ValueError naming every key under `prefix` that the tables cannot place.
    """
    vae_sd = {k[len(prefix) :]: v for k, v in original_sd.items() if k.startswith(prefix)}
    if not vae_sd:
        raise ValueError(f"no VAE keys under {prefix!r} in this state dict ({len(original_sd)} keys)")
    ups = [int(m.group(1)) for k in vae_sd if (m := re.match(r"decoder\.up\.(\d+)\.", k))]
    levels = max(ups) + 1 if ups else 1

    out, unplaced = {}, []
    for key, value in vae_sd.items():
        ours = convert_vae_key(key, levels)
        if ours is None:
            unplaced.append(prefix + key)
            continue
        if ".attentions.0.to_" in ours and ours.endswith(".weight") and value.ndim == 4:
            value = value[:, :, 0, 0]  # 1x1 conv (C, C, 1, 1) -> Linear (C, C)
        out[ours] = value
    if unplaced:
        shown = "\n    ".join(sorted(unplaced))
        raise ValueError(f"{len(unplaced)} VAE key(s) that the conversion table cannot place:\n    {shown}")

    if "quant_conv.weight" not in out:  # the original SVD autoencoder has none: identity on the moments
        c2 = out["encoder.conv_out.weight"].shape[0]
        like = out["encoder.conv_out.weight"]
        out["quant_conv.weight"] = torch.eye(c2, dtype=like.dtype, device=like.device)[:, :, None, None]
        out["quant_conv.bias"] = torch.zeros(c2, dtype=like.dtype, device=like.device)
    return out
