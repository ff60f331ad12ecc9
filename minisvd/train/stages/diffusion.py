"""The shared base of the UNet stages I (image), II (video), III (hires) and image-to-video.

Every UNet stage of the course (Blattmann et al. 2023, Sec. 3) trains the same EDM denoiser (Karras et al.
2022, Eq. 2 and 8, with SVD's v-scaling, App. D) in the latent space of the frozen VAE of stage 0, and
differs only in its data, its starting weights and what the UNet is conditioned on. This module holds what
they share:

    setup(init)        the frozen parts of an earlier stage's final/ (chain.py): VAE, CLIP and its towers
    latents            every training clip encoded ONCE (VAE mode x scaling_factor) and kept in one tensor,
                       cached on disk by (VAE weights, data): measured 3x cheaper than encoding each batch
                       on the fly (a B8 x 8-frame batch costs about as much to encode as to train on, on a
                       CPU; docs/training.md)
    loss               EDM loss per sample at sigma ~ lognormal(P_mean, P_std), text dropout (10%, paper)
    sample             a fixed-seed GIF of `TextToVideo` samples (minisvd/pipelines/text_to_video.py)
    save_final         final/unet (diffusers layout), final/vae and final/clip carried, final/stage.json

Conventions kept across the whole chain, so each stage can start from the one before:
  - the UNet is `UNetConfig.tiny` with in_channels = out_channels = the latent channels (4), cross-attention
    width = CLIP's projection_dim, 3 added time ids (zero for images), `diffusers_resnet_eps=True`: the
    GroupNorm eps diffusers uses, so the exported i2v model computes in diffusers what we trained;
  - context = ONE token, the projected CLIP embedding (text for I-III, image for i2v; models/clip.py).
    Cross-attention over one key returns V, so its to_q/to_k get no gradient: `find_unused_parameters`.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import Dataset

from minisvd import edm
from minisvd.conditioning.batch import Conditioning, conditioned_network
from minisvd.conditioning.micro import micro_conditioning
from minisvd.models.unet import UNetConfig
from minisvd.train.stage import Stage
from minisvd.train.stages.chain import carry, final_folder, load_clip, load_vae

CACHE_VERSION = 1


def cache_root() -> Path:
    """Where rendered toy clips and encoded latents are kept between runs: $MINISVD_CACHE or ~/.cache/minisvd."""
    return Path(os.environ.get("MINISVD_CACHE") or Path.home() / ".cache" / "minisvd")


def digest(*parts) -> str:
    """A short hash of files (their bytes) and json-able values: names a cache entry."""
    h = hashlib.sha1()
    for p in parts:
        h.update(Path(p).read_bytes() if isinstance(p, Path) else json.dumps(p, sort_keys=True).encode())
    return h.hexdigest()[:16]


# ----------------------------------------------------------------------------------------------------------
# The frozen parts and what they compute once


@dataclass
class Frozen:
    """The parts a UNet stage uses but does not train, from an earlier stage's final/ folder."""

    final: Path  # the init's final/ folder
    vae: nn.Module  # minisvd VideoVAE, eval, frozen
    clip: nn.Module  # transformers CLIPModel, frozen
    tokenizer: object
    text: nn.Module  # CLIPTextModelWithProjection (the same weights)
    vision: nn.Module  # CLIPVisionModelWithProjection

    @property
    def scaling_factor(self) -> float:
        return float(self.vae.config.scaling_factor)

    def vae_file(self) -> Path:
        return next((self.final / "vae").glob("diffusion_pytorch_model*.safetensors"))


def read_stage_json(final: Path) -> dict:
    """final/stage.json: which UNet stage wrote the folder, with its recipe fields ({} if none)."""
    path = final / "stage.json"
    return json.loads(path.read_text()) if path.exists() else {}


def load_frozen(init: Path, stage: str) -> Frozen:
    """VAE + CLIP of the run (or final/ folder) `init`; errors name the stage that makes a missing part."""
    from minisvd.models.clip import split_towers

    final = final_folder(init)
    vae = load_vae(final, stage).eval().requires_grad_(False)
    clip, tokenizer = load_clip(final, stage)
    vision, text = split_towers(clip)
    return Frozen(final, vae, clip, tokenizer, text.requires_grad_(False), vision.requires_grad_(False))


@torch.no_grad()
def encode_frames(vae: nn.Module, frames: torch.Tensor, scale: float, chunk: int = 128) -> torch.Tensor:
    """uint8 frames (N, 3, H, W) -> scaled latents (N, C_z, H/f, W/f): VAE mode x scaling_factor, in fixed
    chunks (so the same frames always give the same bits, whatever the batch they are trained in)."""
    out = []
    for i in range(0, len(frames), chunk):
        x = frames[i : i + chunk].float() / 127.5 - 1.0  # [-1, 1]
        out.append(vae.encode(x).mode() * scale)
    return torch.cat(out)


@torch.no_grad()
def text_contexts(text_model: nn.Module, tokenizer, captions: list[str], chunk: int = 256) -> torch.Tensor:
    """Captions -> one projected CLIP text token each, (N, 1, D), computing each distinct caption once."""
    from minisvd.models.clip import encode_text

    unique = sorted(set(captions))
    emb = torch.cat(
        [encode_text(text_model, tokenizer, unique[i : i + chunk]) for i in range(0, len(unique), chunk)]
    )
    row = {c: i for i, c in enumerate(unique)}
    return emb[torch.tensor([row[c] for c in captions], dtype=torch.long)].float().cpu()  # (N, 1, D)


@torch.no_grad()
def image_contexts(vision: nn.Module, frames: torch.Tensor, chunk: int = 64) -> torch.Tensor:
    """Clean uint8 frames (N, 3, H, W) -> CLIP image tokens (N, 1, D), prepared as SVD does (clip_image.py)."""
    from minisvd.conditioning.clip_image import clip_embed

    return torch.cat(
        [clip_embed(vision, frames[i : i + chunk].float() / 255) for i in range(0, len(frames), chunk)]
    )


def cached(path: Path, build) -> dict[str, torch.Tensor]:
    """The tensors in `path` if it exists, else `build()`, saved there (atomically) for the next run."""
    from safetensors.torch import load_file, save_file

    if path.exists():
        return load_file(str(path))
    tensors = build()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp))
    tmp.replace(path)
    return tensors


class TensorDataset(Dataset):
    """Item i = {name: tensor[i]} over tensors of equal length: latents, contexts, ids, first frames."""

    def __init__(self, tensors: dict[str, torch.Tensor], captions: list[str] | None = None):
        lengths = {len(v) for v in tensors.values()}
        if len(lengths) != 1:
            raise ValueError(f"tensors of different lengths: { {k: len(v) for k, v in tensors.items()} }")
        self.tensors, self.captions = tensors, captions or []

    def __len__(self) -> int:
        return len(next(iter(self.tensors.values())))

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {k: v[i] for k, v in self.tensors.items()}


# ----------------------------------------------------------------------------------------------------------
# The base stage


class DiffusionStage(Stage):
    """EDM training of the course's UNet on latents of the frozen VAE, conditioned on one CLIP token."""

    name = "diffusion"  # not registered: the stages subclass it
    find_unused_parameters = True  # one-token cross-attention: to_q/to_k get no gradient (module doc)
    uses_curated_data = False  # the demo passes its curated folder as --data when True
    PRESETS = ("tiny",)
    size = 32  # frame side in pixels (latents are size / VAE factor)
    num_frames = 8  # frames per training clip (1: images)
    P_mean, P_std = -0.4, 1.2  # ln(sigma) ~ N(P_mean, P_std^2); each stage says why it chose its own
    p_drop_context = 0.1  # text dropout: the paper's 10% (App. D); the dropped context is a zero token
    sample_steps = 16  # Euler steps of the periodic samples
    schedule: dict = {}  # this stage's TrainConfig for the tiny preset (default_config)
    previous: str | None = None  # the stage whose final/unet this one starts from (None: a new UNet)

    def __init__(self, preset: str = "tiny", **fields):
        super().__init__(preset)
        if preset not in self.PRESETS:
            raise ValueError(
                f"unknown preset {preset!r} for stage {self.name}; choose one of {list(self.PRESETS)}"
            )
        for k, v in fields.items():  # e.g. ImageToVideoStage(p_drop_latent=0.2): stage fields, recorded
            if not hasattr(self, k) or callable(getattr(self, k)):
                raise ValueError(f"stage {self.name} has no field {k!r}")
            setattr(self, k, v)
        self.frozen: Frozen | None = None
        self.train_data: TensorDataset | None = None

    def fields(self) -> dict:
        """The stage's recipe fields (written to final/stage.json)."""
        names = ("size", "num_frames", "P_mean", "P_std", "p_drop_context", "sample_steps")
        return {k: getattr(self, k) for k in names + tuple(getattr(self, "extra_fields", ()))}

    def default_config(self, **overrides):
        from minisvd.train.config import preset_config

        return preset_config(self.preset, **{**self.schedule, **overrides})

    # ----- setup: the frozen parts ----------------------------------------------------------------------
    def setup(self, init: Path | None) -> None:
        if init is None:
            raise ValueError(
                f"stage {self.name} needs --init: the run folder of the stage before it "
                f"(chain: vae -> clip -> image -> video -> hires -> i2v)"
            )
        self.frozen = load_frozen(init, self.name)
        if int(os.environ.get("RANK", 0)) == 0:  # the recipe on the command line (final/stage.json keeps it)
            print(
                f"stage {self.name}: " + ", ".join(f"{k}={v}" for k, v in self.fields().items()), flush=True
            )
        if self.previous is not None:  # the UNet must come from the stage right before this one
            made_by = read_stage_json(self.frozen.final).get("stage")
            if made_by != self.previous:
                found = f"the UNet of stage {made_by!r}" if made_by else "no UNet"
                raise ValueError(
                    f"stage {self.name} starts from the UNet of stage {self.previous}, and {init} holds "
                    f"{found}: run `python -m minisvd train {self.previous} --init ... --out DIR`, then pass "
                    "--init DIR"
                )

    def require_setup(self) -> Frozen:
        if self.frozen is None:
            raise RuntimeError(f"stage {self.name}: call setup(init) first (the engine does)")
        return self.frozen

    def unet_config(self) -> UNetConfig:
        """The chain's UNet: tiny, in = out = latent channels, context width = CLIP projection dim."""
        fz = self.require_setup()
        c = fz.vae.config.latent_channels
        return UNetConfig.tiny(
            in_channels=c,
            out_channels=c,
            cross_attention_dim=fz.clip.config.projection_dim,
            num_added_time_ids=3,
            num_frames=8,
            diffusers_resnet_eps=True,
        )

    def latent_cache(self, kind: str, key_parts: list) -> Path:
        fz = self.require_setup()
        key = digest(fz.vae_file(), fz.final / "clip" / "config.json", key_parts, CACHE_VERSION)
        return cache_root() / "latents" / f"{kind}_{key}.safetensors"  # shared by stages (video, i2v)

    def cached_tensors(self, kind: str, key_parts: list, build) -> dict[str, torch.Tensor]:
        """`build()`'s tensors, kept on disk under a key of (VAE weights, CLIP config, kind, key_parts)."""
        return cached(self.latent_cache(kind, key_parts), build)

    # ----- loss -----------------------------------------------------------------------------------------
    def conditioning(self, batch: dict, generator: torch.Generator) -> Conditioning:
        """Text token (dropped to zero with p_drop_context) and (fps - 1, motion_bucket_id, 0)."""
        ctx = batch["context"]
        ids = micro_conditioning(batch["fps"], batch["motion_bucket_id"], 0.0, device=ctx.device)
        return Conditioning(context=ctx, added_time_ids=ids).dropout(self.p_drop_context, 0.0, generator)

    def image_only_indicator(self, x0: torch.Tensor) -> torch.Tensor | None:
        return None  # video stages: temporal layers on (0); the image stage sets 1

    def loss(self, model: nn.Module, batch: dict, generator: torch.Generator):
        x0 = batch["latents"]  # (B, F, C_z, h, w), unit variance
        B, dev = x0.shape[0], generator.device
        sigma = edm.sample_sigmas(B, self.P_mean, self.P_std, generator=generator, device=dev).to(x0.device)
        noise = torch.randn(x0.shape, generator=generator, device=dev).to(x0.device)
        cond = self.conditioning(batch, generator)
        per_sample = edm.edm_loss(
            conditioned_network(model),
            x0,
            sigma,
            noise,
            reduction="none",
            image_only_indicator=self.image_only_indicator(x0),
            **cond.unet_inputs(x0.shape[1]),
        )  # (B,)
        return per_sample, {"sigma": sigma}

    # ----- samples and the final folder ------------------------------------------------------------------
    def sample_prompts(self) -> list[dict]:
        """Fixed sample inputs: caption, fps and motion bucket of the first items of the training set."""
        data = self.train_data
        idx = range(min(4, len(data))) if data is not None else []
        caps = data.captions if data is not None else []
        return [
            {
                "caption": caps[i],
                "fps": int(data.tensors["fps"][i]),
                "motion_bucket_id": int(data.tensors["motion_bucket_id"][i]),
            }
            for i in idx
        ]

    @torch.no_grad()
    def sample(self, model: nn.Module, out_dir: Path, step: int) -> Path | None:
        """One GIF, one tile per fixed prompt (guidance 2, seed k for prompt k) -> out_dir/step_XXXXXX.gif."""
        from minisvd.export import save_gif
        from minisvd.pipelines.text_to_video import TextToVideo, tile

        prompts = self.sample_prompts()
        if not prompts:
            return None
        fz = self.require_setup()
        pipe = TextToVideo(model, fz.vae, fz.text, fz.tokenizer)
        videos = [
            pipe([p["caption"]], num_frames=self.num_frames, height=self.size, width=self.size, fps=p["fps"],
                 motion_bucket_id=p["motion_bucket_id"], steps=self.sample_steps, guidance=2.0,
                 generator=torch.Generator().manual_seed(k))[0]
            for k, p in enumerate(prompts)
        ]  # fmt: skip
        path = out_dir / f"step_{step:06d}.gif"
        save_gif(tile(videos, ncol=len(videos)), path, fps=4)
        (out_dir / "prompts.json").write_text(json.dumps(prompts, indent=2) + "\n")
        return path

    def save_final(self, model: nn.Module, ema: nn.Module | None, out_dir: Path) -> Path:
        """final/unet (the EMA weights, diffusers layout), final/vae and final/clip carried, final/stage.json."""
        from minisvd.pretrained.save import save_model_folder

        fz = self.require_setup()
        out_dir.mkdir(parents=True, exist_ok=True)
        save_model_folder(out_dir / "unet", ema if ema is not None else model)
        carry(fz.final, out_dir, ("vae", "clip"))
        (out_dir / "stage.json").write_text(
            json.dumps({"stage": self.name, **self.fields()}, indent=2) + "\n"
        )
        return out_dir
