"""The "toy" stage: EDM denoising of tiny synthetic videos with the SVD UNet. The simplest complete stage.

Data: moving squares, 4 frames of 3 x 16 x 16 (tiny preset), read directly as "latents" (no VAE).
Model: `UNet(UNetConfig.tiny(in_channels=3, out_channels=3))`, 1.3M parameters, with a zero CLIP context
and fixed micro-conditioning (`Conditioning` + `conditioned_network`, as the real stages use them).
Loss: EDM's denoising loss per sample (Karras et al. 2022, Eq. 2 and 8, with SVD's v-scaling), at
log-normal training noise levels (EDM Table 1 "Training").

It trains in a minute on a laptop CPU (`python -m minisvd train toy --out runs/toy`), and it is what the
engine's tests run. The real stages follow the same shape with their own data, model and conditioning.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from einops import rearrange
from torch import nn
from torch.utils.data import Dataset

from minisvd import edm
from minisvd.conditioning.batch import Conditioning, conditioned_network
from minisvd.models.unet import UNet, UNetConfig
from minisvd.train.data import seed_for
from minisvd.train.stage import Stage, load_init, register_stage


class MovingSquares(Dataset):
    """n videos, each (F, 3, S, S) in [-1, 1]: one coloured square sliding (and wrapping) on a black field.
    Video i is a pure function of (seed, i)."""

    def __init__(self, n: int = 256, frames: int = 4, size: int = 16, seed: int = 0):
        self.n, self.frames, self.size, self.seed = n, frames, size, seed

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> torch.Tensor:
        S, g = self.size, torch.Generator().manual_seed(seed_for(self.seed, i))
        side = int(torch.randint(S // 5, S // 3 + 1, (), generator=g))  # square side in pixels
        y, x = torch.randint(0, S - side + 1, (2,), generator=g).tolist()  # top-left corner of frame 0
        vy, vx = torch.randint(-2, 3, (2,), generator=g).tolist()  # pixels per frame
        color = torch.rand(3, generator=g) * 2 - 1  # (3,) in [-1, 1]
        first = torch.full((3, S, S), -1.0)
        first[:, y : y + side, x : x + side] = color[:, None, None]
        frames = [torch.roll(first, shifts=(f * vy, f * vx), dims=(1, 2)) for f in range(self.frames)]
        return torch.stack(frames)  # (F, 3, S, S)


@register_stage
class ToyStage(Stage):
    name = "toy"
    SIZES = {  # preset -> (videos in the dataset, frames, pixels, UNet preset)
        "tiny": (256, 4, 16, UNetConfig.tiny),
        "small": (2048, 8, 32, UNetConfig.small),
    }
    P_mean, P_std = edm.P_PRESETS["image_finetune"]  # ln(sigma) ~ N(-1.2, 1.0^2): most weight on small sigma
    # One CLIP token: cross-attention's softmax over one key is 1, its output is V, so to_q/to_k of the
    # cross-attentions never see a gradient. DDP must be told, or it waits for their gradients forever.
    find_unused_parameters = True

    def __init__(self, preset: str = "tiny"):
        super().__init__(preset)
        if preset not in self.SIZES:
            raise ValueError(f"unknown preset {preset!r} for stage toy; choose one of {sorted(self.SIZES)}")
        self.num_videos, self.frames, self.size, unet_preset = self.SIZES[preset]
        self.unet_config = unet_preset(in_channels=3, out_channels=3, num_frames=self.frames)

    # ----- the contract -------------------------------------------------------------------------------
    def build_model(self, init: Path | None) -> nn.Module:
        model = UNet(self.unet_config)
        return load_init(model, init, what=f"toy UNet ({self.preset})") if init else model

    def dataset(self, data: Path | None) -> Dataset:
        if data is not None:
            raise ValueError("the toy stage makes its own data (moving squares); drop --data")
        return MovingSquares(self.num_videos, self.frames, self.size)

    def conditioning(self, B: int, device) -> Conditioning:
        """A zero CLIP token (the unconditional branch of SVD) and fixed (fps_id, motion_bucket_id, cond_aug)."""
        context = torch.zeros(B, 1, self.unet_config.cross_attention_dim, device=device)  # (B, 1, D)
        ids = torch.tensor([[6.0, 127.0, 0.0]], device=device).expand(B, 3)  # (B, 3)
        return Conditioning(context=context, added_time_ids=ids)

    def loss(self, model: nn.Module, batch: torch.Tensor, generator: torch.Generator):
        x0 = batch  # (B, F, 3, S, S), the clean "latents"
        B, dev = x0.shape[0], generator.device
        sigma = edm.sample_sigmas(B, self.P_mean, self.P_std, generator=generator, device=dev).to(x0.device)
        noise = torch.randn(x0.shape, generator=generator, device=dev).to(x0.device)  # (B, F, 3, S, S)
        cond = self.conditioning(B, x0.device)
        per_sample = edm.edm_loss(
            conditioned_network(model), x0, sigma, noise, reduction="none", **cond.unet_inputs(x0.shape[1])
        )  # (B,)
        return per_sample, {"sigma": sigma}

    @torch.no_grad()
    def sample(self, model: nn.Module, out_dir: Path, step: int, num: int = 4, steps: int = 12) -> Path:
        """`num` videos from a fixed noise seed with SVD's Euler sampler -> out_dir/step_XXXXXX.png
        (one row per video, one column per frame)."""
        from PIL import Image

        dev = next(model.parameters()).device
        g = torch.Generator().manual_seed(0)
        sigmas = edm.karras_sigmas(steps, sigma_min=0.002, sigma_max=80.0).to(dev)
        x = edm.initial_noise((num, self.frames, 3, self.size, self.size), sigmas, generator=g).to(dev)
        network = conditioned_network(model)
        cond = self.conditioning(num, dev).unet_inputs(self.frames)
        denoiser = lambda x, s: edm.denoise(network, x, s, **cond)  # noqa: E731
        videos = edm.sample_euler(denoiser, x, sigmas)  # (N, F, 3, S, S)
        grid = videos.clamp(-1, 1).add(1).mul(127.5).round().byte().cpu()
        grid = rearrange(grid, "n f c h w -> (n h) (f w) c")  # one row per video, one column per frame
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / f"step_{step:06d}.png"
        Image.fromarray(grid.numpy()).resize((grid.shape[1] * 4, grid.shape[0] * 4), Image.NEAREST).save(path)
        return path

    def save_final(self, model: nn.Module, ema: nn.Module | None, out_dir: Path) -> Path:
        """model.safetensors (EMA weights) + raw.safetensors + the UNet's diffusers-style config.json."""
        super().save_final(model, ema, out_dir)
        (out_dir / "config.json").write_text(json.dumps(self.unet_config.to_diffusers(), indent=2) + "\n")
        return out_dir
