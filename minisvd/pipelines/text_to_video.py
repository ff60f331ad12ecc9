"""Text-to-image and text-to-video with the course's UNet stages I-III: captions in, frames out.

The samplers of the stages that come before image-to-video (Blattmann et al. 2023, Sec. 3). The UNet is
conditioned on one projected CLIP text token per caption (models/clip.py: one token in CLIP's joint space)
and on the micro-conditioning (fps - 1, motion_bucket_id, cond_aug = 0); there is no conditioning frame.

    1. context: each caption -> the CLIP text tower's projected embedding, (B, 1, D); unconditional: zeros
       (what 10% text dropout trained, SVD App. D);
    2. x ~ N(0, (1 + sigma_0^2) I) over Karras sigmas (EDM Eq. 5);
    3. deterministic Euler steps (EDM Alg. 1) on the guided denoiser D_u + w (D_c - D_u) (Ho & Salimans
       2022). `guidance` is one scale for all frames (text-to-video: every frame is generated alike), or
       (min, max) for SVD's scale growing linearly across frames;
    4. images (`num_frames=1`) run with `image_only_indicator` = 1 and all-zero added time ids, as stage I
       trained: the temporal layers are bypassed exactly, the UNet is the image model;
    5. decode latents / scaling_factor with the VAE -> frames in [0, 1].

`load_text_to_video(final)` builds one from a stage's final/ folder (unet/, vae/, clip/).
"""

from __future__ import annotations

from pathlib import Path

import torch
from einops import rearrange
from torch import nn

from minisvd import edm
from minisvd.conditioning.batch import Conditioning, conditioned_network
from minisvd.conditioning.micro import micro_conditioning


class TextToVideo:
    """`pipe(captions, num_frames=8) -> (B, F, 3, H, W)` in [0, 1]. Build it with `load_text_to_video`."""

    def __init__(
        self,
        unet: nn.Module,  # minisvd UNet, in_channels = latent channels
        vae: nn.Module,  # minisvd VideoVAE
        text_model: nn.Module,  # transformers CLIPTextModelWithProjection
        tokenizer,  # its tokenizer
        sigma_min: float = 0.002,  # EDM sampling range (Eq. 5)
        sigma_max: float = 80.0,  # EDM's; our small latents need no more (SVD's 700 works too)
    ):
        self.unet, self.vae, self.text_model, self.tokenizer = unet, vae, text_model, tokenizer
        self.sigma_min, self.sigma_max = sigma_min, sigma_max

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @torch.no_grad()
    def encode_text(self, captions: list[str]) -> torch.Tensor:
        """Step 1: captions -> (B, 1, D) projected CLIP text tokens."""
        from minisvd.models.clip import encode_text

        return encode_text(self.text_model, self.tokenizer, list(captions), device=self.device).float()

    def conditioning(self, captions, fps, motion_bucket_id, image: bool = False) -> Conditioning:
        """Text tokens and the added time ids: (fps - 1, motion_bucket_id, 0), all zero for images (stage I)."""
        ctx = self.encode_text(captions)
        ids = micro_conditioning(fps, motion_bucket_id, 0.0, batch_size=len(captions), device=self.device)
        if image:
            ids = torch.zeros_like(ids)
        return Conditioning(context=ctx, added_time_ids=ids)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Step 5: scaled latents (B, F, C_z, h, w) -> frames (B, F, 3, H, W) in [0, 1]."""
        x = self.vae.decode(latents / self.vae.config.scaling_factor)
        return (x.float() / 2 + 0.5).clamp(0, 1)

    @torch.no_grad()
    def __call__(
        self,
        captions: list[str] | str,
        num_frames: int = 1,  # 1: text-to-image (stage I's model, temporal layers bypassed)
        height: int = 32,
        width: int = 32,
        fps: float = 8,  # reaches the UNet as fps - 1
        motion_bucket_id: float = 127,
        steps: int = 16,  # Euler steps
        guidance: float | tuple[float, float] = 2.0,  # one scale, or (first frame, last frame); <= 1: off
        generator: torch.Generator | None = None,
        latents: torch.Tensor | None = None,  # (B, F, C_z, h, w) unit-variance initial noise
        return_latents: bool = False,
    ) -> torch.Tensor:
        captions = [captions] if isinstance(captions, str) else list(captions)
        B, dev = len(captions), self.device
        f = self.vae.config.downsample_factor
        if height % f or width % f:
            raise ValueError(
                f"height and width must be multiples of the VAE factor {f}, got {height}x{width}"
            )
        cond = self.conditioning(captions, fps, motion_bucket_id, image=num_frames == 1)
        ioi = torch.ones(B, num_frames, device=dev) if num_frames == 1 else None  # images: image model
        c = {**cond.unet_inputs(num_frames), "image_only_indicator": ioi}
        u = {**cond.unconditional().unet_inputs(num_frames), "image_only_indicator": ioi}

        sigmas = edm.karras_sigmas(steps, self.sigma_min, self.sigma_max).to(dev)  # (steps + 1,)
        shape = (B, num_frames, self.vae.config.latent_channels, height // f, width // f)
        if latents is None:
            latents = torch.randn(shape, generator=generator)
        x = latents.to(dev).float() * edm.init_noise_sigma(sigmas[0])
        network = conditioned_network(self.unet)
        lo, hi = guidance if isinstance(guidance, tuple) else (guidance, guidance)
        if hi > 1:
            scale = edm.guidance_scale(num_frames, lo, hi).to(dev)  # (1, F, 1, 1, 1)
            denoiser = edm.cfg_denoiser(network, scale, c, u)
        else:

            def denoiser(x, sigma):
                return edm.denoise(network, x, sigma, **c)

        z = edm.sample_euler(denoiser, x, sigmas)
        return z if return_latents else self.decode(z)


def load_text_to_video(final: str | Path, device: str | torch.device | None = None) -> TextToVideo:
    """A `TextToVideo` from a stage's final/ folder (unet/, vae/, clip/), or a run folder holding final/."""
    from minisvd.models.clip import load_clip_folder, split_towers
    from minisvd.models.unet import UNet
    from minisvd.models.vae import VideoVAE
    from minisvd.pretrained.load import load_model_folder
    from minisvd.train.stages.chain import final_folder, require

    final = final_folder(final)
    unet = load_model_folder(require(final, "unet", "text-to-video"), UNet, diffusers_resnet_eps=True)
    vae = load_model_folder(require(final, "vae", "text-to-video"), VideoVAE)
    clip, tokenizer = load_clip_folder(require(final, "clip", "text-to-video"))
    _, text = split_towers(clip)
    pipe = TextToVideo(unet.eval(), vae.eval(), text.eval(), tokenizer)
    if device is not None:
        for m in (unet, vae, text):
            m.to(device)
    return pipe


def tile(videos: list[torch.Tensor], ncol: int | None = None) -> torch.Tensor:
    """Videos (F, 3, H, W) of one size -> one video (F, 3, rows * H, ncol * W), row-major; blanks pad."""
    ncol = ncol or len(videos)
    rows = -(-len(videos) // ncol)
    blank = torch.zeros_like(videos[0])
    cells = list(videos) + [blank] * (rows * ncol - len(videos))
    grid = torch.stack(cells).reshape(rows, ncol, *videos[0].shape)  # (R, C, F, 3, H, W)
    return rearrange(grid, "r c f ch h w -> f ch (r h) (c w)")
