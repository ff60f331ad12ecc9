"""Fine-tune a pretrained SVD on your own clips: `python -m minisvd train finetune --init SVD --data CLIPS`.

The same engine as the course's stages (engine.py: AdamW, warm-up, clipping, EMA, bf16 autocast, gradient
checkpointing, DDP, atomic checkpoints, exact resume, the NaN guard) and the same image-to-video objective
as stage i2v (Blattmann et al. 2023, Sec. 4 and App. D), at the size of the weights given:

    --init     a diffusers SVD / SVD-XT folder, a repo id in the Hugging Face cache, or an original single
               file (svd.safetensors, svd_xt.safetensors): `minisvd.load_pipeline`'s sources
    --data     a `python -m minisvd curate` output folder (its clips.csv: motion scores, fps), or any folder
               of video files (their motion is measured with the curation's own score)
    trainable  "all" (every UNet weight), "temporal" (only the layers SVD added to the image model:
               temporal ResBlocks, temporal transformers, their position embeddings and the AlphaBlender mix
               factors; `is_temporal_key`), or "lora" (LoRA adapters through `peft`, the library diffusers
               uses, on every attention projection to_q / to_k / to_v / to_out.0; `lora_rank`, alpha = rank)

What is computed once: every training window's VAE latents (mode x scaling factor) and the CLIP image token
of its clean first frame are encoded before training and cached on disk beside the data
(DATA/minisvd_cache/), keyed by the weights and the settings. The CLIP image encoder and the VAE decoder are
then never used by the loss: they stay on the CPU. Only the VAE *encoder* runs in the loss, because the
conditioning frame is noise-augmented in pixel space before it is encoded (a fresh cond_aug each step);
`offload=True` keeps it on the CPU too.

Conditioning, as the paper and stage i2v: cond_aug ~ lognormal(-3.0, 0.5); the noise level
ln(sigma) ~ N(P_mean, P_std^2) of the paper for the resolution (1.0 / 1.6 at 576x1024, 0.7 / 1.6 below,
`edm.lognormal_params`); fps_id = the window's frame rate - 1; motion_bucket_id from the window's motion score
by `minisvd.data.motion_bucket_id` (our mapping: Stability's is not public; docs/finetuning.md); the image
token and the frame latent dropped independently with p = 0.1 each (the paper gives no rates; stage i2v's
reasoning: each guidance branch is trained on ~10% of samples, 81% train the fully conditioned model).

Windows: each clip gives its non-overlapping windows of `num_frames` frames at `stride` (up to
`max_windows_per_clip`), each a fixed training item (the engine's rule: item i depends on i only).

`save_final` writes the diffusers layout (`StableVideoDiffusionPipeline.from_pretrained` and
`minisvd.load_pipeline` read it), with LoRA merged into the UNet's weights, and for LoRA also
final/lora/ (peft's adapter_config.json + adapter_model.safetensors) on its own.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import Dataset

from minisvd import edm
from minisvd.models.inflate import is_temporal_key
from minisvd.train.stage import register_stage
from minisvd.train.stages.diffusion import DiffusionStage, TensorDataset, cached, digest, encode_frames
from minisvd.train.stages.finetune_data import load_windows
from minisvd.train.stages.i2v import i2v_conditioning

TRAINABLE = ("all", "temporal", "lora")
LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]  # every attention projection, spatial and temporal


def lora_config(rank: int):
    """peft's LoraConfig of our adapters: rank r, alpha = r (scale 1), on every attention projection."""
    from peft import LoraConfig

    return LoraConfig(
        r=rank, lora_alpha=rank, target_modules=LORA_TARGETS, lora_dropout=0.0, init_lora_weights=True
    )


def select_trainable(unet: nn.Module, trainable: str, lora_rank: int = 16) -> nn.Module:
    """The UNet with only the chosen parameters trainable (LoRA: adapters injected by peft, base frozen)."""
    if trainable not in TRAINABLE:
        raise ValueError(f"trainable must be one of {TRAINABLE}, got {trainable!r}")
    unet.train()
    if trainable == "all":
        return unet.requires_grad_(True)
    if trainable == "temporal":
        for name, p in unet.named_parameters():
            p.requires_grad_(is_temporal_key(name))
        return unet
    try:
        from peft import inject_adapter_in_model
    except ImportError:
        raise ValueError("--trainable lora needs peft: pip install peft") from None
    unet.requires_grad_(False)
    return inject_adapter_in_model(lora_config(lora_rank), unet)  # new lora_A / lora_B trainable, B = 0


def merged_unet(model: nn.Module) -> nn.Module:
    """A plain UNet (no peft layers) with the LoRA updates W + B A merged in; the model itself is unchanged."""
    import copy

    from minisvd.models.unet import UNet

    if not any("lora_" in n for n, _ in model.named_parameters()):
        return model
    merged = copy.deepcopy(model)
    from peft.tuners.lora import LoraLayer

    for module in merged.modules():
        if isinstance(module, LoraLayer):
            module.merge()
    clean = {}
    for k, v in merged.state_dict().items():
        if "lora_" in k:
            continue
        clean[k.replace(".base_layer.", ".")] = v
    unet = UNet(model.config)
    unet.load_state_dict(clean, strict=True)
    return unet.eval()


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    from peft import get_peft_model_state_dict

    return {k: v.detach().cpu().contiguous() for k, v in get_peft_model_state_dict(model).items()}


def fingerprint(*modules: nn.Module) -> str:
    """A short hash of the modules' weights (bytes of every tensor): names the cache of encoded windows."""
    import hashlib

    h = hashlib.sha1()
    for m in modules:
        for k, v in m.state_dict().items():
            h.update(k.encode())
            h.update(v.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


@register_stage
class FinetuneStage(DiffusionStage):
    name = "finetune"
    PRESETS = ("tiny", "small")
    find_unused_parameters = True  # one-token cross-attention: its to_q / to_k get no gradient (diffusion.py)
    trainable = "temporal"  # "all" | "temporal" | "lora"
    lora_rank = 16
    height, width = 576, 1024  # the paper's stage III / SVD resolution
    num_frames = 0  # 0: the UNet's own (14 SVD, 25 SVD-XT)
    stride = 1  # every stride-th frame: the window's fps = clip fps / stride
    max_windows_per_clip = 4
    offload = False  # True: the VAE encoder (conditioning frame) stays on the CPU as well
    p_drop_context = 0.1
    p_drop_latent = 0.1
    cond_aug = edm.P_PRESETS["cond_aug"]
    P_mean, P_std = None, None  # None: the paper's for the resolution (edm.lognormal_params)
    sample_steps = 16
    schedule = dict(steps=1000, batch_size=1, lr=1e-5, warmup_steps=100, ema=False, log_every=10,
                    ckpt_every=100, sample_every=0)  # fmt: skip

    def fields(self) -> dict:
        names = ("trainable", "lora_rank", "height", "width", "num_frames", "stride", "max_windows_per_clip",
                 "offload", "p_drop_context", "p_drop_latent", "cond_aug", "P_mean", "P_std")  # fmt: skip
        return {k: getattr(self, k) for k in names}

    def default_config(self, **overrides):
        from minisvd.train.config import preset_config

        lr = {"lora": 1e-4}.get(self.trainable, self.schedule["lr"])  # adapters start at zero: a larger step
        return preset_config(self.preset, **{**self.schedule, "lr": lr, **overrides})

    # ----- setup: the pretrained parts -----------------------------------------------------------------
    def setup(self, init: Path | None) -> None:
        from minisvd.pretrained.load import load_components

        if init is None:
            raise ValueError(
                "stage finetune needs --init: a diffusers SVD folder, a repo id in the Hugging Face cache, "
                "or an original svd.safetensors / svd_xt.safetensors"
            )
        if self.trainable not in TRAINABLE:
            raise ValueError(f"--trainable must be one of {TRAINABLE}, got {self.trainable!r}")
        self.parts = load_components(init)
        unet = self.parts["unet"]
        if unet.config.in_channels != 2 * self.parts["vae"].config.latent_channels:
            raise ValueError(
                f"{init} holds a UNet with {unet.config.in_channels} input channels: not image-to-video"
            )
        self.num_frames = self.num_frames or unet.config.num_frames
        if self.P_mean is None:
            self.P_mean, self.P_std = edm.lognormal_params((self.height, self.width))
        self.init = init
        if int(os.environ.get("RANK", 0)) == 0:
            print("stage finetune: " + ", ".join(f"{k}={v}" for k, v in self.fields().items()), flush=True)

    def require_parts(self) -> dict:
        if getattr(self, "parts", None) is None:
            raise RuntimeError("stage finetune: call setup(init) first (the engine does)")
        return self.parts

    # ----- data: windows, encoded once --------------------------------------------------------------------
    def dataset(self, data: Path | None) -> Dataset:
        from minisvd.data.motion_bucket import motion_bucket_id

        if data is None:
            raise ValueError("stage finetune needs --data: a curate output folder or a folder of video files")
        parts = self.require_parts()
        vae, vision = parts["vae"], parts["image_encoder"]
        settings = [self.height, self.width, self.num_frames, self.stride, self.max_windows_per_clip]
        windows = load_windows(Path(data), self.height, self.width, self.num_frames, self.stride,
                               self.max_windows_per_clip)  # fmt: skip
        frames = windows["frames"]  # (N, F, 3, H, W) uint8
        key = digest(fingerprint(vae.encoder, vae.quant_conv, vision), settings, windows["key"])

        def encode() -> dict[str, torch.Tensor]:
            from minisvd.train.stages.diffusion import image_contexts

            scale = float(vae.config.scaling_factor)
            latents = torch.stack([encode_frames(vae, f, scale, chunk=8) for f in frames])  # (N, F, C, h, w)
            return {"latents": latents, "context": image_contexts(vision, frames[:, 0], chunk=8)}

        enc = cached(Path(data) / "minisvd_cache" / f"finetune_{key}.safetensors", encode)
        self.train_data = TensorDataset(
            {
                "latents": enc["latents"],  # (N, F, C_z, h, w), scaled
                "context": enc["context"],  # (N, 1, D): CLIP image token of the clean first frame
                "first": frames[:, 0],  # (N, 3, H, W) uint8: the conditioning frame
                "fps": windows["fps"],
                "motion_bucket_id": motion_bucket_id(windows["motion"], min(self.height, self.width)).float(),
            }
        )
        self.window_ids = windows["ids"]
        if int(os.environ.get("RANK", 0)) == 0:  # what the model will learn each bucket and fps id means
            b, f = self.train_data.tensors["motion_bucket_id"], windows["fps"]
            q = [int(v) for v in torch.quantile(b, torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0]))]
            print(f"stage finetune: {len(b)} windows; motion buckets min/25%/median/75%/max {q}; "
                  f"fps {sorted({int(v) for v in f})}", flush=True)  # fmt: skip
        return self.train_data

    # ----- model ---------------------------------------------------------------------------------------
    def build_model(self, init: Path | None) -> nn.Module:
        parts = self.require_parts()
        unet = parts["unet"].float()
        model = select_trainable(unet, self.trainable, self.lora_rank)
        self._place_vae()
        return model

    def _place_vae(self, sampling_on: torch.device | None = None) -> None:
        """Between steps the VAE and CLIP wait on the CPU; `conditioning` brings the VAE encoder (and
        quant_conv) to the training batch's device. Sampling: the whole VAE and CLIP on `sampling_on`."""
        parts = self.require_parts()
        parts["vae"].to(sampling_on or "cpu")
        parts["image_encoder"].to(sampling_on or "cpu")

    def conditioning(self, batch: dict, generator: torch.Generator):
        vae = self.require_parts()["vae"]
        if not self.offload:  # the engine's device (the batch is on it); a no-op once the encoder is there
            vae.encoder.to(batch["first"].device)
            vae.quant_conv.to(batch["first"].device)
        return i2v_conditioning(vae, batch, generator, self.cond_aug, self.p_drop_context, self.p_drop_latent)

    # ----- samples and the final folder ------------------------------------------------------------------
    def pipeline(self, unet: nn.Module):
        from minisvd.pipelines import ImageToVideo

        p = self.require_parts()
        return ImageToVideo(unet, p["vae"], p["image_encoder"], p["feature_config"], p["scheduler_config"])

    @torch.no_grad()
    def sample(self, model: nn.Module, out_dir: Path, step: int) -> Path | None:
        """The first two training windows' first frames -> out_dir/step_XXXXXX.gif (truth, then the sample)."""
        from minisvd.export import save_gif
        from minisvd.pipelines.text_to_video import tile

        data = self.train_data
        if data is None:
            return None
        device = next(model.parameters()).device
        self._place_vae(sampling_on=device)
        pipe, videos = self.pipeline(model), []
        for i in range(min(2, len(data))):
            item = data[i]
            first = item["first"].float() / 255
            video = pipe(first, height=self.height, width=self.width, num_frames=self.num_frames,
                         num_inference_steps=self.sample_steps, fps=int(item["fps"]),
                         motion_bucket_id=int(item["motion_bucket_id"]),
                         generator=torch.Generator().manual_seed(i))  # fmt: skip
            truth = pipe.decode(item["latents"][None].to(device))
            videos += [truth.cpu(), video.cpu()]
        self._place_vae()
        path = out_dir / f"step_{step:06d}.gif"
        save_gif(tile(videos, ncol=2), path, fps=4)
        return path

    def save_final(self, model: nn.Module, ema: nn.Module | None, out_dir: Path) -> Path:
        """The diffusers layout (LoRA merged), final/lora/ for LoRA, final/stage.json."""
        trained = ema if ema is not None else model
        out_dir.mkdir(parents=True, exist_ok=True)
        self.pipeline(merged_unet(trained).to("cpu")).save_pretrained(out_dir)
        if self.trainable == "lora":
            from safetensors.torch import save_file

            (out_dir / "lora").mkdir(exist_ok=True)
            cfg = lora_config(self.lora_rank)
            cfg.save_pretrained(str(out_dir / "lora"))
            save_file(lora_state_dict(trained), str(out_dir / "lora" / "adapter_model.safetensors"))
        stage = {"stage": self.name, "init": str(self.init), **self.fields(), "windows": len(self.window_ids)}
        (out_dir / "stage.json").write_text(json.dumps(stage, indent=2, default=list) + "\n")
        return out_dir
