"""Image-to-video with SVD: one image in, a short video out (Blattmann et al. 2023, Sec. 4 and App. D).

`ImageToVideo` holds the three models and runs the sampling the reference code runs, step for step in the
order of diffusers' `StableVideoDiffusionPipeline` (so that the same seed gives the same frames):

  1. CLIP branch: the clean frame, antialiased to 224 x 224, through the CLIP vision tower -> 1 token;
  2. VAE branch: the frame at (H, W) in [-1, 1], plus conditioning-augmentation noise
     x + noise_aug_strength * n (n drawn FIRST from the generator), encoded and taken at the mode;
     this (unscaled) latent is repeated over the frames and concatenated to the noisy latent on channels;
  3. micro-conditioning: added_time_ids = (fps - 1, motion_bucket_id, noise_aug_strength) (App. D);
  4. initial latents x ~ N(0, (1 + sigma_0^2) I) (drawn SECOND), Karras sigmas (EDM Eq. 5);
  5. deterministic Euler steps (EDM Alg. 1) on the guided denoiser, whose guidance scale grows linearly
     across frames from `min_guidance_scale` to `max_guidance_scale` (SVD App. D); the unconditional
     branch sees a zero CLIP token and a zero conditioning latent;
  6. decode latents / scaling_factor with the temporal VAE decoder, `decode_chunk_size` frames at a time.

Memory savers for small GPUs: fp16/bf16 weights (`load_pipeline(dtype=...)`), chunked decoding,
`enable_cpu_offload()` (each model visits the GPU only while it runs), and PyTorch SDPA attention, which
our attention layers always use. The sampler state is kept in float32 whatever the model dtype
(sigma_max^2 = 490000 overflows fp16), as diffusers' scheduler does.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from minisvd import edm
from minisvd.clip_image import CLIP_MEAN, CLIP_STD, clip_pixels, encode_image, image_to_tensor, resize_for_vae

# The sampler settings of SVD as diffusers stores them (scheduler/scheduler_config.json of the real repos),
# reduced to the keys diffusers' EulerDiscreteScheduler accepts.
SVD_SCHEDULER_CONFIG = {
    "_class_name": "EulerDiscreteScheduler",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "interpolation_type": "linear",
    "num_train_timesteps": 1000,
    "prediction_type": "v_prediction",  # v-scaling (SVD App. D)
    "sigma_max": 700.0,  # EDM sampling range (SVD App. D)
    "sigma_min": 0.002,
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "timestep_type": "continuous",  # c_noise = 0.25 ln(sigma)
    "trained_betas": None,
    "use_karras_sigmas": True,  # EDM Eq. 5, rho = 7
}

# CLIPImageProcessor settings of the real feature_extractor/ folder (only mean and std matter to SVD)
CLIP_FEATURE_CONFIG = {
    "crop_size": {"height": 224, "width": 224},
    "do_center_crop": True,
    "do_convert_rgb": True,
    "do_normalize": True,
    "do_rescale": True,
    "do_resize": True,
    "image_mean": list(CLIP_MEAN),
    "image_processor_type": "CLIPImageProcessor",
    "image_std": list(CLIP_STD),
    "resample": 3,
    "rescale_factor": 0.00392156862745098,
    "size": {"shortest_edge": 224},
}


def randn(shape, generator: torch.Generator | None, device, dtype=torch.float32) -> torch.Tensor:
    """Gaussian noise drawn like diffusers' `randn_tensor`: on the generator's device, then moved to `device`."""
    rand_device = generator.device if generator is not None else device
    return torch.randn(shape, generator=generator, device=rand_device, dtype=dtype).to(device)


class ImageToVideo:
    """SVD image-to-video: `pipe(image) -> frames (F, 3, H, W) in [0, 1]`. Build it with `minisvd.load_pipeline`."""

    def __init__(
        self,
        unet: nn.Module,  # minisvd.UNet
        vae: nn.Module,  # minisvd.vae.VideoVAE
        image_encoder: nn.Module,  # transformers CLIPVisionModelWithProjection
        feature_config: dict | None = None,  # CLIPImageProcessor config (image_mean, image_std)
        scheduler_config: dict | None = None,  # EulerDiscreteScheduler config (sigma_min, sigma_max)
    ):
        self.unet, self.vae, self.image_encoder = unet, vae, image_encoder
        self.feature_config = dict(feature_config or CLIP_FEATURE_CONFIG)
        self.scheduler_config = dict(scheduler_config or SVD_SCHEDULER_CONFIG)
        sc = self.scheduler_config
        if sc.get("prediction_type", "v_prediction") != "v_prediction" or not sc.get(
            "use_karras_sigmas", True
        ):
            raise ValueError(
                "SVD samples with v-prediction over Karras sigmas; this scheduler config asks for "
                f"prediction_type={sc.get('prediction_type')}, use_karras_sigmas={sc.get('use_karras_sigmas')}"
            )
        self.offload_device: torch.device | None = None  # set by enable_cpu_offload

    # ----- devices and dtypes -----------------------------------------------------------------------------
    @property
    def models(self) -> dict[str, nn.Module]:
        return {"image_encoder": self.image_encoder, "vae": self.vae, "unet": self.unet}

    @property
    def device(self) -> torch.device:
        """Where the computation runs (the offload device when CPU offload is on)."""
        return self.offload_device or next(self.unet.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.unet.parameters()).dtype

    def to(self, device=None, dtype: torch.dtype | None = None) -> ImageToVideo:
        """Move (and cast) all three models; turns CPU offload off."""
        self.offload_device = None
        for m in self.models.values():
            m.to(device=device, dtype=dtype)
        return self

    def enable_cpu_offload(self, device: str | torch.device = "cuda") -> ImageToVideo:
        """Keep the models in CPU memory; move each to `device` only while it runs (peak GPU memory: the
        largest model, the UNet, plus activations). Slower: weights cross the bus once per call."""
        self.to("cpu")
        self.offload_device = torch.device(device)
        return self

    @contextlib.contextmanager
    def _running(self, model: nn.Module):
        """Context in which `model` sits on the execution device (moved there and back when offloading)."""
        if self.offload_device is None:
            yield model
            return
        model.to(self.offload_device)
        try:
            yield model
        finally:
            model.to("cpu")
            if self.offload_device.type == "cuda":
                torch.cuda.empty_cache()

    @property
    def size_multiple(self) -> int:
        """H and W must be multiples of this: VAE factor x UNet factor (8 x 8 = 64 for SVD)."""
        return self.vae.config.downsample_factor * 2 ** (len(self.unet.config.block_out_channels) - 1)

    # ----- the steps, each usable on its own (the notebook shows them one by one) --------------------------
    @torch.no_grad()
    def encode_clip(self, image) -> torch.Tensor:
        """Step 1: the CLIP token of the clean frame, (1, 1, D)."""
        fc = self.feature_config
        pixels = clip_pixels(
            image_to_tensor(image), fc.get("image_mean", CLIP_MEAN), fc.get("image_std", CLIP_STD)
        )
        with self._running(self.image_encoder) as enc:
            return encode_image(enc, pixels.to(self.device))

    @torch.no_grad()
    def encode_condition_frame(
        self, image, height, width, noise_aug_strength, generator=None
    ) -> torch.Tensor:
        """Step 2: the noise-augmented frame's VAE latent at the mode, unscaled, (1, C_z, H/f, W/f)."""
        x = resize_for_vae(image, height, width).to(self.device)  # (1, 3, H, W) in [-1, 1]
        noise = randn(x.shape, generator, self.device, x.dtype)  # drawn before the initial latents
        x = x + noise_aug_strength * noise  # conditioning augmentation (SVD App. D)
        with self._running(self.vae) as vae:
            vae_dtype = next(vae.parameters()).dtype
            # fp16 encoding overflows in the SD encoder; like diffusers (force_upcast) we encode in fp32
            if vae_dtype == torch.float16:
                vae.float()
            z = vae.encode(x.to(next(vae.parameters()).dtype)).mode()
            vae.to(vae_dtype)
        return z

    def added_time_ids(self, fps: int, motion_bucket_id: int, noise_aug_strength: float) -> torch.Tensor:
        """Step 3: micro-conditioning (fps_id, motion_bucket_id, cond_aug), (1, 3). SVD was trained on fps - 1."""
        return torch.tensor(
            [[fps - 1, motion_bucket_id, noise_aug_strength]], dtype=self.dtype, device=self.device
        )

    def sigmas(self, num_inference_steps: int) -> torch.Tensor:
        """Step 4: Karras sigmas from sigma_max down to sigma_min, then 0 (EDM Eq. 5), (steps + 1,)."""
        sc = self.scheduler_config
        return edm.karras_sigmas(num_inference_steps, sc.get("sigma_min", 0.002), sc.get("sigma_max", 700.0))

    def network(self, unet: nn.Module) -> Callable[..., torch.Tensor]:
        """F_theta(c_in x; c_noise, cond) for edm.denoise: concatenates the condition latent, casts to the
        model dtype and back to float32."""

        def F(x_in, c_noise, cond_latent, context, added_time_ids):
            sample = torch.cat([x_in.to(self.dtype), cond_latent], dim=2)  # (B, F, 8, h, w)
            return unet(sample, c_noise.float(), context, added_time_ids).float()

        return F

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, decode_chunk_size: int | None = None) -> torch.Tensor:
        """Step 6: scaled latents (1, F, C_z, h, w) -> frames (F, 3, H, W) in [0, 1]."""
        with self._running(self.vae) as vae:
            z = latents / vae.config.scaling_factor
            x = vae.decode(
                z.to(device=self.device, dtype=next(vae.parameters()).dtype), chunk_size=decode_chunk_size
            )
        return (x[0].float() / 2 + 0.5).clamp(0, 1)

    # ----- the whole thing --------------------------------------------------------------------------------
    @torch.no_grad()
    def __call__(
        self,
        image,  # PIL image, HxWx3 array, or (3, H, W) tensor in [0, 1]
        height: int = 576,
        width: int = 1024,
        num_frames: int | None = None,  # default: the UNet's num_frames (14 SVD, 25 SVD-XT)
        num_inference_steps: int = 25,
        min_guidance_scale: float = 1.0,  # guidance of the first frame
        max_guidance_scale: float = 3.0,  # guidance of the last frame; <= 1 switches guidance off
        fps: int = 7,  # reaches the model as fps - 1
        motion_bucket_id: int = 127,  # more motion for higher values
        noise_aug_strength: float = 0.02,  # conditioning augmentation sigma
        decode_chunk_size: int | None = None,  # frames decoded at once (default all; lower saves memory)
        generator: torch.Generator | None = None,
        latents: torch.Tensor | None = None,  # (1, F, C_z, h, w) unit-variance initial noise
        callback: Callable[[dict], None] | None = None,  # k-diffusion style: {"x", "i", "sigma", "denoised"}
        progress: bool = False,  # tqdm bar over the steps
    ) -> torch.Tensor:
        """Generate frames (F, 3, H, W) in [0, 1] from one image, as diffusers' StableVideoDiffusionPipeline."""
        m = self.size_multiple
        if height % m or width % m:
            from minisvd.clip_image import nearest_multiple

            raise ValueError(
                f"height and width must be multiples of {m} (VAE x UNet downsampling), got "
                f"{height}x{width}; nearest valid: {nearest_multiple(height, m)}x{nearest_multiple(width, m)}"
            )
        num_frames = num_frames or self.unet.config.num_frames
        device, dtype = self.device, self.dtype

        context = self.encode_clip(image).to(dtype)  # (1, 1, D)
        cond_latent = self.encode_condition_frame(image, height, width, noise_aug_strength, generator)
        cond_latent = cond_latent.to(dtype)[:, None].repeat(1, num_frames, 1, 1, 1)  # (1, F, C_z, h, w)
        added = self.added_time_ids(fps, motion_bucket_id, noise_aug_strength)  # (1, 3)

        sigmas = self.sigmas(num_inference_steps).to(device)  # (steps + 1,)
        shape = (1, num_frames, self.vae.config.latent_channels, *cond_latent.shape[-2:])
        if latents is None:
            latents = randn(shape, generator, device, dtype)  # drawn after the augmentation noise
        x = latents.to(device).float() * edm.init_noise_sigma(sigmas[0])

        cond = {"cond_latent": cond_latent, "context": context, "added_time_ids": added}
        with self._running(self.unet) as unet:
            if max_guidance_scale > 1:  # classifier-free guidance, scale growing across frames
                uncond = {
                    "cond_latent": torch.zeros_like(cond_latent),
                    "context": torch.zeros_like(context),
                    "added_time_ids": added,
                }
                scale = edm.guidance_scale(num_frames, min_guidance_scale, max_guidance_scale).to(device)
                denoiser = edm.cfg_denoiser(self.network(unet), scale, cond, uncond)
            else:

                def denoiser(x, sigma):
                    return edm.denoise(self.network(unet), x, sigma, **cond)

            x = edm.sample_euler(denoiser, x, sigmas, callback=callback, progress=progress)
        return self.decode(x, decode_chunk_size)

    # ----- export -----------------------------------------------------------------------------------------
    def save_pretrained(self, folder: str | Path, variant: str | None = None) -> Path:
        """Write the diffusers layout that `StableVideoDiffusionPipeline.from_pretrained(folder)` loads."""
        from minisvd.pretrained import save_diffusers_folder

        return save_diffusers_folder(self, folder, variant=variant)

    def __repr__(self) -> str:
        n = {k: sum(p.numel() for p in m.parameters()) for k, m in self.models.items()}
        return (
            f"ImageToVideo(unet={n['unet']:,} params, vae={n['vae']:,}, image_encoder={n['image_encoder']:,}, "
            f"num_frames={self.unet.config.num_frames}, dtype={self.dtype}, device={self.device}, "
            f"offload={self.offload_device is not None})"
        )


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())
