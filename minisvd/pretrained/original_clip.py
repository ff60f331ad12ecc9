"""SVD's image conditioner in an original single file (open_clip ViT-H/14) -> transformers' CLIP vision model.

The reference code (Stability-AI/generative-models, `FrozenOpenCLIPImageEmbedder`) builds open_clip's
`ViT-H-14`, deletes its text transformer and keeps the rest, so `svd.safetensors` / `svd_xt.safetensors` hold:

    conditioner.embedders.0.open_clip.model.visual.*      the image tower SVD uses (open_clip VisionTransformer)
    conditioner.embedders.0.open_clip.model.{token_embedding, positional_embedding, ln_final, text_projection,
        logit_scale}                                       leftovers of the deleted text tower: never called
    conditioner.embedders.3.encoder.*                      a second copy of the VAE (AutoencoderKLModeOnly) that
                                                           encodes the conditioning frame: see original_vae.py

The image embedding is `ln_post(x[:, 0]) @ proj` after `ln_pre` and the residual blocks: exactly what
transformers' `CLIPVisionModelWithProjection` computes as `image_embeds`, the class the diffusers release of SVD
ships in `image_encoder/`. The conversion is the table below; three entries are not plain renames:

  - open_clip's attention is `nn.MultiheadAttention`, whose q, k, v projections are one fused
    `in_proj_weight` (3 C, C) and `in_proj_bias` (3 C): split into q_proj, k_proj, v_proj in that order;
  - `proj` is a bare (C, D) matrix used as `x @ proj`; `visual_projection` is a Linear (D, C): transposed;
  - `class_embedding` and `positional_embedding` are bare tensors there, an Embedding's weight here.

The config comes from the shapes (width, depth, patch, image size, MLP width, projection width) except the
number of heads, which no shape holds: open_clip's model configs fix the head width (80 for ViT-H/14, 64 for
most others), so the heads are looked up by width with an override. The activation is exact GELU (open_clip's
`nn.GELU`; OpenAI's original CLIPs use QuickGELU, SVD's LAION ViT-H/14 does not), LayerNorm eps 1e-5.
"""

from __future__ import annotations

import re

import torch

PREFIX = "conditioner.embedders.0.open_clip.model."
VISUAL = PREFIX + "visual."

# open_clip's head width per tower width (its model configs: ViT-B 768/64, ViT-L 1024/64, ViT-H 1280/80,
# ViT-g 1408/88, ViT-bigG 1664/104); other widths fall back to open_clip's default head width, 64.
HEAD_WIDTH = {768: 64, 1024: 64, 1280: 80, 1408: 88, 1664: 104}

# Top-level tensors of the visual tower: open_clip name -> transformers name
TOP_LEVEL = {
    "conv1.weight": "vision_model.embeddings.patch_embedding.weight",  # (C, 3, p, p), no bias
    "class_embedding": "vision_model.embeddings.class_embedding",  # (C,)
    "positional_embedding": "vision_model.embeddings.position_embedding.weight",  # (1 + (S/p)^2, C)
    "ln_pre.weight": "vision_model.pre_layrnorm.weight",  # sic: transformers' spelling
    "ln_pre.bias": "vision_model.pre_layrnorm.bias",
    "ln_post.weight": "vision_model.post_layernorm.weight",
    "ln_post.bias": "vision_model.post_layernorm.bias",
    "proj": "visual_projection.weight",  # (C, D) -> (D, C): transposed
}

# Inside `transformer.resblocks.{i}` -> `vision_model.encoder.layers.{i}`
BLOCK_LEAVES = {
    "ln_1": "layer_norm1",
    "attn.out_proj": "self_attn.out_proj",
    "ln_2": "layer_norm2",
    "mlp.c_fc": "mlp.fc1",
    "mlp.c_proj": "mlp.fc2",
}
FUSED_QKV = ("q_proj", "k_proj", "v_proj")  # the order of nn.MultiheadAttention's in_proj rows

# What the single file carries under the conditioner that SVD never uses, by name (a key matching none of
# these and none of the tables is an error, not silently dropped).
TEXT_LEFTOVERS = re.compile(
    re.escape(PREFIX) + r"(token_embedding\.weight|positional_embedding|ln_final\.(weight|bias)|"
    r"text_projection|logit_scale|attn_mask|transformer\..+)"
)


def convert_clip_key(key: str) -> str | None:
    """transformers' name for one open_clip visual key (without `VISUAL`); None if the table cannot place it.
    (The fused in_proj keys map to three names: see `convert_clip_state_dict`.)"""
    if key in TOP_LEVEL:
        return TOP_LEVEL[key]
    m = re.fullmatch(r"transformer\.resblocks\.(\d+)\.(.+)\.(weight|bias)", key)
    if m and m.group(2) in BLOCK_LEAVES:
        return f"vision_model.encoder.layers.{m.group(1)}.{BLOCK_LEAVES[m.group(2)]}.{m.group(3)}"
    return None


def clip_config_from_shapes(visual: dict[str, torch.Tensor], num_heads: int | None = None):
    """transformers `CLIPVisionConfig` of an open_clip visual tower, read off its shapes (heads: see above)."""
    from transformers import CLIPVisionConfig

    width, _, patch, _ = visual["conv1.weight"].shape  # (C, 3, p, p)
    n_pos = visual["positional_embedding"].shape[0]  # 1 + grid^2
    grid = round((n_pos - 1) ** 0.5)
    if grid * grid != n_pos - 1:
        raise ValueError(f"positional_embedding has {n_pos} rows: not 1 + a square grid of patches")
    layers = 1 + max(
        int(m.group(1)) for k in visual if (m := re.match(r"transformer\.resblocks\.(\d+)\.", k))
    )
    if num_heads is None:
        num_heads = max(width // HEAD_WIDTH.get(width, 64), 1)
    if width % num_heads:
        raise ValueError(f"width {width} is not divisible by num_heads={num_heads}")
    return CLIPVisionConfig(
        hidden_size=width,
        intermediate_size=visual["transformer.resblocks.0.mlp.c_fc.weight"].shape[0],
        num_hidden_layers=layers,
        num_attention_heads=num_heads,
        image_size=grid * patch,
        patch_size=patch,
        projection_dim=visual["proj"].shape[1],
        hidden_act="gelu",
        layer_norm_eps=1e-5,
    )


def convert_clip_state_dict(
    original_sd: dict[str, torch.Tensor], num_heads: int | None = None
) -> tuple[object, dict[str, torch.Tensor]]:
    """A whole original SVD file (or just its conditioner) -> (CLIPVisionConfig, CLIPVisionModelWithProjection
    state dict). Reads only `VISUAL` keys; the input is not modified. Raises ValueError naming every visual key
    that the table cannot place, and every key under the open_clip prefix that is neither visual nor a known
    text-tower leftover."""
    visual = {k[len(VISUAL) :]: v for k, v in original_sd.items() if k.startswith(VISUAL)}
    if not visual:
        raise ValueError(f"no open_clip image tower ({VISUAL}*) in this state dict")
    strays = [
        k
        for k in original_sd
        if k.startswith(PREFIX) and not k.startswith(VISUAL) and not TEXT_LEFTOVERS.fullmatch(k)
    ]
    out, unplaced = {}, list(strays)
    for key, value in visual.items():
        m = re.fullmatch(r"transformer\.resblocks\.(\d+)\.attn\.in_proj_(weight|bias)", key)
        if m:  # (3C, C) / (3C,) -> three (C, C) / (C,)
            for name, part in zip(FUSED_QKV, value.chunk(3, dim=0)):
                out[f"vision_model.encoder.layers.{m.group(1)}.self_attn.{name}.{m.group(2)}"] = part
            continue
        ours = convert_clip_key(key)
        if ours is None:
            unplaced.append(VISUAL + key)
        else:
            out[ours] = value.t() if key == "proj" else value
    if unplaced:
        shown = "\n    ".join(sorted(unplaced))
        raise ValueError(f"{len(unplaced)} CLIP key(s) that the conversion table cannot place:\n    {shown}")
    return clip_config_from_shapes(visual, num_heads), out


def convert_clip_to_original(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The inverse: a `CLIPVisionModelWithProjection` state dict -> open_clip visual keys under `VISUAL`."""
    inverse = {v: k for k, v in TOP_LEVEL.items()}
    out, fused = {}, {}
    for key, value in state_dict.items():
        m = re.fullmatch(r"vision_model\.encoder\.layers\.(\d+)\.self_attn\.([qkv]_proj)\.(weight|bias)", key)
        if m:
            fused.setdefault((m.group(1), m.group(3)), {})[m.group(2)] = value
            continue
        m = re.fullmatch(r"vision_model\.encoder\.layers\.(\d+)\.(.+)\.(weight|bias)", key)
        if m:
            leaf = {v: k for k, v in BLOCK_LEAVES.items()}[m.group(2)]
            out[f"{VISUAL}transformer.resblocks.{m.group(1)}.{leaf}.{m.group(3)}"] = value
        elif key in inverse:
            out[VISUAL + inverse[key]] = value.t() if key == "visual_projection.weight" else value
        else:
            raise ValueError(f"{key} is not a CLIPVisionModelWithProjection key this table knows")
    for (i, param), qkv in fused.items():
        out[f"{VISUAL}transformer.resblocks.{i}.attn.in_proj_{param}"] = torch.cat(
            [qkv[n] for n in FUSED_QKV]
        )
    return out


def load_original_clip(original_sd: dict[str, torch.Tensor], source=None, num_heads: int | None = None):
    """SVD's image encoder from an original file's tensors: a float32, eval, frozen
    `CLIPVisionModelWithProjection` (built on the meta device, every key and shape checked)."""
    from transformers import CLIPVisionModelWithProjection

    from minisvd.pretrained.weights import require_fit

    config, sd = convert_clip_state_dict(original_sd, num_heads)
    with torch.device("meta"):
        model = CLIPVisionModelWithProjection(config)
    require_fit(model, sd, "CLIP image encoder", source)
    model.load_state_dict({k: v.float() for k, v in sd.items()}, strict=True, assign=True)
    emb = model.vision_model.embeddings  # its one buffer is not saved (non-persistent): rebuild it
    emb.register_buffer("position_ids", torch.arange(emb.num_positions)[None], persistent=False)
    leftover = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    assert not leftover, f"CLIP tensors left on the meta device: {leftover}"
    return model.eval().requires_grad_(False)
