"""The spatio-temporal UNet of Stable Video Diffusion (Blattmann et al. 2023, Sec. 3 and App. D).

An image latent-diffusion UNet (Rombach et al. 2022) "inflated" with temporal layers: every ResBlock is a
SpatioTemporalResBlock and every transformer a SpatioTemporalTransformer (see resnet.py, attention.py).
It predicts F_theta in D(x; sigma) = c_skip x + c_out F_theta(c_in x; c_noise) (EDM, Karras et al. 2022,
Eq. 7), conditioned on
  - c_noise = 0.25 ln(sigma), through a sinusoidal embedding and an MLP;
  - the added time ids (fps_id, motion_bucket_id, cond_aug), each embedded the same way, concatenated,
    through an MLP and added to the time embedding ("micro-conditioning", Sec. 4.1 / App. D);
  - one CLIP image token per video, by cross-attention;
  - the conditioning frame's latent, concatenated to the noisy latent on channels (4 + 4 = 8 in).

State-dict names and shapes equal diffusers' `UNetSpatioTemporalConditionModel`, so weights move between
the two with `load_state_dict(strict=True)`. Differences from diffusers (all tested in tests/test_unet.py):
  1. ResBlock GroupNorm eps: the original SVD code uses 1e-5 everywhere; diffusers uses 1e-6 in the
     ResBlocks of the cross-attention down blocks and of all up blocks (72 norms in SVD). We follow the
     original; `UNetConfig(diffusers_resnet_eps=True)` reproduces diffusers.
  2. GroupNorms run in float32 whatever the model dtype (as the original code; diffusers norms in the
     input dtype). Identical in fp32.
  3. H and W must be divisible by 2^(levels-1); diffusers silently interpolates odd sizes, we raise.

UNetConfig (sizes, presets, diffusers config round trip) lives in unet_config.py and is re-exported here.
For training: `UNetConfig(dropout=p)` and `UNet.enable_gradient_checkpointing()` (tests/test_models_training.py).
"""

from __future__ import annotations

import math

import torch
from einops import rearrange, repeat
from torch import nn
from torch.utils.checkpoint import checkpoint

from minisvd.models.attention import SpatioTemporalTransformer
from minisvd.models.embeddings import TimestepEmbedding, sinusoidal_embedding
from minisvd.models.inflate import is_temporal_key
from minisvd.models.resnet import Downsample, GroupNorm32, SpatioTemporalResBlock, Upsample
from minisvd.models.unet_config import UNetConfig

__all__ = ["UNet", "UNetConfig", "nearest_multiple"]


def nearest_multiple(v: int, m: int = 64) -> int:
    """The multiple of m nearest to v (at least m): the closest size the UNet (and the VAE) can take."""
    return max(m, int(math.floor(v / m + 0.5)) * m)


class UNetBlock(nn.Module):
    """Base of the down, mid and up blocks: runs their ResBlocks and transformers, with activation
    checkpointing when `gradient_checkpointing` is set (UNet.enable_gradient_checkpointing) and training."""

    gradient_checkpointing = False

    def run(self, layer: nn.Module, x: torch.Tensor, *args) -> torch.Tensor:
        if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
            # keep only the layer's input; recompute its activations in the backward pass (same RNG state)
            return checkpoint(layer, x, *args, use_reentrant=False)
        return layer(x, *args)


class DownBlock(UNetBlock):
    """One resolution level going down: ResBlocks (each followed by a transformer if `attention`), then a
    stride-2 conv. Every intermediate output is kept for the skip connections."""

    def __init__(
        self, c_in, c_out, temb, n_layers, attention, heads, context_dim, depth, eps, downsample, dropout=0.0
    ):
        super().__init__()
        ins = [c_in] + [c_out] * (n_layers - 1)
        self.resnets = nn.ModuleList(
            [SpatioTemporalResBlock(c, c_out, temb, eps=eps, dropout=dropout) for c in ins]
        )
        self.attentions = nn.ModuleList(
            [SpatioTemporalTransformer(c_out, heads, context_dim, depth, dropout) for _ in range(n_layers)]
            if attention
            else []
        )
        self.downsamplers = nn.ModuleList([Downsample(c_out)] if downsample else [])

    def forward(self, x, temb, context, image_only_indicator):
        skips = []
        for i, resnet in enumerate(self.resnets):
            x = self.run(resnet, x, temb, image_only_indicator)
            if self.attentions:
                x = self.run(self.attentions[i], x, context, image_only_indicator)
            skips.append(x)
        for down in self.downsamplers:
            x = down(x)
            skips.append(x)
        return x, skips


class MidBlock(UNetBlock):
    """ResBlock, transformer, ResBlock at the lowest resolution."""

    def __init__(self, c, temb, heads, context_dim, depth, eps=1e-5, dropout=0.0):
        super().__init__()
        self.resnets = nn.ModuleList(
            [SpatioTemporalResBlock(c, c, temb, eps=eps, dropout=dropout) for _ in range(2)]
        )
        self.attentions = nn.ModuleList([SpatioTemporalTransformer(c, heads, context_dim, depth, dropout)])

    def forward(self, x, temb, context, image_only_indicator):
        x = self.run(self.resnets[0], x, temb, image_only_indicator)
        x = self.run(self.attentions[0], x, context, image_only_indicator)
        return self.run(self.resnets[1], x, temb, image_only_indicator)


class UpBlock(UNetBlock):
    """One resolution level going up: each ResBlock takes [x, skip] concatenated on channels."""

    def __init__(
        self, c_prev, c_out, skips, temb, attention, heads, context_dim, depth, eps, upsample, dropout=0.0
    ):
        super().__init__()
        ins = [(c_prev if i == 0 else c_out) + s for i, s in enumerate(skips)]  # skips: channels of each
        self.resnets = nn.ModuleList(
            [SpatioTemporalResBlock(c, c_out, temb, eps=eps, dropout=dropout) for c in ins]
        )
        self.attentions = nn.ModuleList(
            [SpatioTemporalTransformer(c_out, heads, context_dim, depth, dropout) for _ in ins]
            if attention
            else []
        )
        self.upsamplers = nn.ModuleList([Upsample(c_out)] if upsample else [])

    def forward(self, x, skips, temb, context, image_only_indicator):
        """`skips`: this level's skip activations, one per ResBlock, the first one used last (a stack)."""
        for i, resnet in enumerate(self.resnets):
            x = torch.cat([x, skips[-1 - i]], dim=1)  # (B*F, C + C_skip, H, W)
            x = self.run(resnet, x, temb, image_only_indicator)
            if self.attentions:
                x = self.run(self.attentions[i], x, context, image_only_indicator)
        for up in self.upsamplers:
            x = up(x)
        return x


class UNet(nn.Module):
    """The SVD UNet: sample (B, F, C_in, H, W) -> F_theta (B, F, C_out, H, W)."""

    def __init__(self, config: UNetConfig | None = None):
        super().__init__()
        self.config = cfg = config or UNetConfig()
        ch = cfg.block_out_channels
        n = len(ch)
        temb = ch[0] * 4  # time-embedding width
        eps_down_attn = 1e-6 if cfg.diffusers_resnet_eps else 1e-5
        eps_up = 1e-6 if cfg.diffusers_resnet_eps else 1e-5
        depth = cfg.transformer_layers_per_block

        self.conv_in = nn.Conv2d(cfg.in_channels, ch[0], 3, padding=1)
        self.time_embedding = TimestepEmbedding(ch[0], temb)  # c_noise -> (B, temb)
        self.add_embedding = TimestepEmbedding(cfg.addition_time_embed_dim * cfg.num_added_time_ids, temb)

        self.down_blocks = nn.ModuleList()
        skip_channels = [ch[0]]  # channels of every tensor pushed on the skip stack, in order
        c_prev = ch[0]
        for i, c in enumerate(ch):
            attn = cfg.attention_levels[i]
            self.down_blocks.append(
                DownBlock(
                    c_prev,
                    c,
                    temb,
                    cfg.layers_per_block,
                    attn,
                    cfg.num_attention_heads[i],
                    cfg.cross_attention_dim,
                    depth,
                    eps_down_attn if attn else 1e-5,
                    downsample=i < n - 1,
                    dropout=cfg.dropout,
                )
            )
            skip_channels += [c] * (cfg.layers_per_block + (1 if i < n - 1 else 0))
            c_prev = c

        self.mid_block = MidBlock(
            ch[-1], temb, cfg.num_attention_heads[-1], cfg.cross_attention_dim, depth, dropout=cfg.dropout
        )

        self.up_blocks = nn.ModuleList()
        for i, c in enumerate(reversed(ch)):
            level = n - 1 - i
            skips = [skip_channels.pop() for _ in range(cfg.layers_per_block + 1)]
            self.up_blocks.append(
                UpBlock(
                    c_prev,
                    c,
                    skips,
                    temb,
                    cfg.attention_levels[level],
                    cfg.num_attention_heads[level],
                    cfg.cross_attention_dim,
                    depth,
                    eps_up,
                    upsample=level > 0,
                    dropout=cfg.dropout,
                )
            )
            c_prev = c

        self.conv_norm_out = GroupNorm32(32, ch[0], eps=1e-5)
        self.conv_act = nn.SiLU()
        self.conv_out = nn.Conv2d(ch[0], cfg.out_channels, 3, padding=1)

    # ----- input checks: clear errors instead of shape errors from deep inside torch ---------------------
    def _check_inputs(self, sample, timestep, encoder_hidden_states, added_time_ids, image_only_indicator):
        cfg = self.config
        if sample.ndim != 5:
            raise ValueError(
                f"sample must be (B, F, C, H, W) = 5-D, got shape {tuple(sample.shape)}; "
                "for one video add a batch dim with sample[None]"
            )
        B, Fr, C, H, W = sample.shape
        if 0 in sample.shape:  # einops would divide by zero, torch would fail deep inside a conv
            raise ValueError(
                f"sample (B, F, C, H, W) = {tuple(sample.shape)} is empty: expected at least 1 video (B) "
                "of at least 1 frame (F), and non-empty C, H, W"
            )
        if C != cfg.in_channels:
            raise ValueError(
                f"sample has {C} channels, this UNet expects in_channels={cfg.in_channels} "
                "(noisy latent + conditioning latent, concatenated on dim 2)"
            )
        factor = 2 ** (len(cfg.block_out_channels) - 1)
        if H % factor or W % factor:
            raise ValueError(
                f"latent H, W = {H}, {W} must be divisible by {factor} (the UNet downsamples "
                f"{len(cfg.block_out_channels) - 1} times); nearest valid: "
                f"{nearest_multiple(H, factor)}x{nearest_multiple(W, factor)}"
            )
        if (
            encoder_hidden_states.ndim != 3
            or encoder_hidden_states.shape[0] != B
            or encoder_hidden_states.shape[-1] != cfg.cross_attention_dim
        ):
            raise ValueError(
                f"encoder_hidden_states must be (B={B}, tokens, {cfg.cross_attention_dim}), "
                f"got {tuple(encoder_hidden_states.shape)}"
            )
        if added_time_ids.shape != (B, cfg.num_added_time_ids):
            raise ValueError(
                f"added_time_ids must be (B={B}, {cfg.num_added_time_ids}) = (fps_id, motion_bucket_id, "
                f"cond_aug) per video, got {tuple(added_time_ids.shape)}"
            )
        if torch.is_tensor(timestep) and timestep.ndim > 0 and timestep.numel() not in (1, B):
            raise ValueError(
                f"timestep must be a scalar or have B={B} entries, got shape {tuple(timestep.shape)}"
            )
        if image_only_indicator is not None and tuple(image_only_indicator.shape) != (B, Fr):
            raise ValueError(
                f"image_only_indicator must be (B, F) = ({B}, {Fr}), got {tuple(image_only_indicator.shape)}"
            )

    def forward(
        self,
        sample: torch.Tensor,  # (B, F, C_in, H, W): c_in * noisy latent, concatenated with the cond latent
        timestep: torch.Tensor | float,  # c_noise = 0.25 ln(sigma): scalar or (B,)
        encoder_hidden_states: torch.Tensor,  # (B, L, D) CLIP image embedding (L = 1 in SVD)
        added_time_ids: torch.Tensor,  # (B, 3): fps_id, motion_bucket_id, cond_aug
        image_only_indicator: torch.Tensor | None = None,  # (B, F): 1 for images (alpha = 1), default 0
    ) -> torch.Tensor:
        self._check_inputs(sample, timestep, encoder_hidden_states, added_time_ids, image_only_indicator)
        B, Fr = sample.shape[:2]
        cfg = self.config
        dtype = sample.dtype

        # Time and micro-conditioning embeddings (sinusoids in float32, as the original code does)
        t = torch.as_tensor(timestep, device=sample.device).reshape(-1).expand(B)
        emb = self.time_embedding(sinusoidal_embedding(t, cfg.block_out_channels[0]).to(dtype))  # (B, temb)
        ids = sinusoidal_embedding(added_time_ids.flatten(), cfg.addition_time_embed_dim)  # (B*3, d)
        emb = emb + self.add_embedding(rearrange(ids, "(b n) d -> b (n d)", b=B).to(dtype))  # (B, temb)

        # Frames become batch entries; every frame gets its video's embedding. The CLIP tokens stay one row per
        # video: the transformers serve each row to the frames of its video (no copy per frame)
        x = rearrange(sample, "b f c h w -> (b f) c h w")
        emb = repeat(emb, "b c -> (b f) c", f=Fr)
        context = encoder_hidden_states  # (B, L, D)
        if image_only_indicator is None:
            image_only_indicator = torch.zeros(B, Fr, dtype=dtype, device=sample.device)

        x = self.conv_in(x)
        skips = [x]
        for block in self.down_blocks:
            x, s = block(x, emb, context, image_only_indicator)
            skips += s
        x = self.mid_block(x, emb, context, image_only_indicator)
        for block in self.up_blocks:  # each level takes the last len(resnets) skips (not mutated in place:
            n = len(block.resnets)  # FSDP and other wrappers may hand a module a copy of a list argument)
            x = block(x, skips[-n:], emb, context, image_only_indicator)
            skips = skips[:-n]
        x = self.conv_out(self.conv_act(self.conv_norm_out(x)))
        return rearrange(x, "(b f) c h w -> b f c h w", b=B)

    # ----- training ---------------------------------------------------------------------------------
    @property
    def gradient_checkpointing(self) -> bool:
        """True when every ResBlock and transformer recomputes its activations in the backward pass."""
        return self.mid_block.gradient_checkpointing

    def enable_gradient_checkpointing(self) -> None:
        """Trade compute for memory in training (diffusers' name): only the input of each ResBlock and
        transformer is stored; the rest is recomputed during backward. Same outputs and gradients."""
        self._set_gradient_checkpointing(True)

    def disable_gradient_checkpointing(self) -> None:
        self._set_gradient_checkpointing(False)

    def _set_gradient_checkpointing(self, on: bool) -> None:
        for block in [*self.down_blocks, self.mid_block, *self.up_blocks]:
            block.gradient_checkpointing = on

    # ----- convenience ------------------------------------------------------------------------------
    def num_parameters(self, temporal_only: bool = False) -> int:
        return sum(p.numel() for n, p in self.named_parameters() if not temporal_only or is_temporal_key(n))

    @property
    def dtype(self) -> torch.dtype:
        return self.conv_in.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.conv_in.weight.device
