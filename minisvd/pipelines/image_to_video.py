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
import os
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from minisvd import edm
from minisvd.conditioning import (
    Conditioning,
    clip_embed,
    conditioned_network,
    encode_latent,
    image_to_tensor,
    micro_conditioning,
    noise_augment,
    resize_for_vae,
)
from minisvd.conditioning.clip_image import CLIP_MEAN, CLIP_STD
from minisvd.models.unet import nearest_multiple
from minisvd.pipelines.defaults import CLIP_FEATURE_CONFIG, SAMPLING, SVD_SCHEDULER_CONFIG


def randn(shape, generator: torch.Generator | None, device, dtype=torch.float32) -> torch.Tensor:
    """Gaussian noise drawn like diffusers' `randn_tensor`: on the generator's device, then moved to `device`."""
    rand_device = generator.device if generator is not None else device
    return torch.randn(shape, generator=generator, device=rand_device, dtype=dtype).to(device)


def sampling_problems(
    *,
    height: int,
    width: int,
    num_frames: int | None,
    num_inference_steps: int,
    fps: int,
    decode_chunk_size: int | None,
    noise_aug_strength: float,
    size_multiple: int = 64,
) -> list[tuple[str, str]]:
    """Every sampling setting that cannot work, as (parameter, problem), e.g. ("num_inference_steps",
    "must be >= 1 (got 0)"); empty when all is well. `ImageToVideo.__call__` and the generate command
    (with its flag names) check these before anything runs."""
    m, problems = size_multiple, []
    for name, v in (("height", height), ("width", width)):
        if v < m or v % m:
            nearest = nearest_multiple(v, m)
            problems.append(
                (name, f"must be a multiple of {m}, at least {m} (got {v}); nearest valid: {nearest}")
            )
    minimums = (  # (parameter, value, minimum, what else is fine); None means the default
        ("num_inference_steps", num_inference_steps, 1, ""),
        ("num_frames", num_frames, 1, ", or left out for the model's default"),
        ("fps", fps, 1, ": the video plays at fps and SVD is conditioned on fps - 1"),
        ("decode_chunk_size", decode_chunk_size, 1, ", or left out to decode all frames at once"),
        ("noise_aug_strength", noise_aug_strength, 0, ""),
    )
    for name, v, lo, more in minimums:
        if v is not None and v < lo:
            problems.append((name, f"must be >= {lo} (got {v}){more}"))
    return problems


def check_image_size(width: int, height: int, minimum: int) -> None:
    """A ValueError for images under minimum x minimum pixels (SVD: 8, the VAE's downsampling factor)."""
    if width < minimum or height < minimum:
        raise ValueError(
            f"the image is {width}x{height} pixels; at least {minimum}x{minimum} is needed (the VAE "
            f"downsamples by {minimum}): use a larger image"
        )


class ImageToVideo:
    """SVD image-to-video: `pipe(image) -> frames (F, 3, H, W) in [0, 1]`. Build it with `minisvd.load_pipeline`."""

    def __init__(
        self,
        unet: nn.Module,  # minisvd.UNet
        vae: nn.Module,  # minisvd.models.vae.VideoVAE
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

    def check_image(self, image):
        """The image, checked: a PIL image as it is (resized with Lanczos, as diffusers), anything else as a
        (1, 3, H, W) float tensor in [0, 1] (`image_to_tensor`: uint8 divided by 255, floats must be in [0, 1]).
        Raises for other types, ranges and shapes, and for images smaller than the VAE's downsampling factor."""
        import PIL.Image

        if isinstance(image, PIL.Image.Image):
            check_image_size(*image.size, self.vae.config.downsample_factor)
            return image
        x = image_to_tensor(image)
        check_image_size(x.shape[-1], x.shape[-2], self.vae.config.downsample_factor)
        return x

    # ----- the steps, each usable on its own (the notebook shows them one by one) --------------------------
    @torch.no_grad()
    def encode_clip(self, image) -> torch.Tensor:
        """Step 1: the CLIP token of the clean frame, (1, 1, D)."""
        fc = self.feature_config
        mean, std = fc.get("image_mean", CLIP_MEAN), fc.get("image_std", CLIP_STD)
        with self._running(self.image_encoder) as enc:
            return clip_embed(enc, image_to_tensor(image).to(self.device), mean, std)

    @torch.no_grad()
    def encode_condition_frame(
        self, image, height, width, noise_aug_strength, generator=None
    ) -> torch.Tensor:
        """Step 2: the noise-augmented frame's VAE latent at the mode, unscaled, (1, C_z, H/f, W/f)."""
        x = resize_for_vae(image, height, width).to(self.device)  # (1, 3, H, W) in [-1, 1]
        noise = randn(x.shape, generator, self.device, x.dtype)  # drawn before the initial latents
        x = noise_augment(x, noise_aug_strength, noise)  # conditioning augmentation (SVD App. D)
        with self._running(self.vae) as vae:
            return encode_latent(vae, x)

    def added_time_ids(self, fps: int, motion_bucket_id: int, noise_aug_strength: float) -> torch.Tensor:
        """Step 3: micro-conditioning (fps_id, motion_bucket_id, cond_aug), (1, 3). SVD was trained on fps - 1."""
        return micro_conditioning(
            fps, motion_bucket_id, noise_aug_strength, device=self.device, dtype=self.dtype
        )

    def conditioning(
        self,
        image,
        height: int = SAMPLING.height,
        width: int = SAMPLING.width,
        fps: int = SAMPLING.fps,
        motion_bucket_id: int = SAMPLING.motion_bucket_id,
        noise_aug_strength: float = SAMPLING.noise_aug_strength,
        generator: torch.Generator | None = None,
    ) -> Conditioning:
        """Steps 1-3 together: everything the UNet is conditioned on, for one image (batch of one)."""
        image = self.check_image(image)
        context = self.encode_clip(image).to(self.dtype)  # (1, 1, D)
        latent = self.encode_condition_frame(image, height, width, noise_aug_strength, generator)
        ids = self.added_time_ids(fps, motion_bucket_id, noise_aug_strength)  # (1, 3)
        return Conditioning(context=context, added_time_ids=ids, cond_latent=latent.to(self.dtype))

    def sigmas(self, num_inference_steps: int) -> torch.Tensor:
        """Step 4: Karras sigmas from sigma_max down to sigma_min, then 0 (EDM Eq. 5), (steps + 1,)."""
        sc = self.scheduler_config
        return edm.karras_sigmas(num_inference_steps, sc.get("sigma_min", 0.002), sc.get("sigma_max", 700.0))

    def network(self, unet: nn.Module) -> Callable[..., torch.Tensor]:
        """F_theta(c_in x; c_noise, cond) for edm.denoise: concatenates the condition latent, casts to the
        model dtype and back to float32 (`minisvd.conditioning.conditioned_network`)."""
        return conditioned_network(unet, self.dtype)

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
        image,  # PIL image; uint8 array/tensor (0..255); float array/tensor in [0, 1] (`check_image`)
        height: int = SAMPLING.height,
        width: int = SAMPLING.width,
        num_frames: int | None = None,  # default: the UNet's num_frames (14 SVD, 25 SVD-XT)
        num_inference_steps: int = SAMPLING.num_inference_steps,
        min_guidance_scale: float = SAMPLING.min_guidance_scale,  # guidance of the first frame
        max_guidance_scale: float = SAMPLING.max_guidance_scale,  # last frame; <= 1 switches guidance off
        fps: int = SAMPLING.fps,  # reaches the model as fps - 1
        motion_bucket_id: int = SAMPLING.motion_bucket_id,  # more motion for higher values
        noise_aug_strength: float = SAMPLING.noise_aug_strength,  # conditioning augmentation sigma
        decode_chunk_size: int | None = SAMPLING.decode_chunk_size,  # frames decoded at once (None: all)
        generator: torch.Generator | None = None,
        latents: torch.Tensor | None = None,  # (1, F, C_z, h, w) unit-variance initial noise
        callback: Callable[[dict], None] | None = None,  # k-diffusion style: {"x", "i", "sigma", "denoised"}
        progress: bool = False,  # tqdm bar over the steps
    ) -> torch.Tensor:
        """Generate frames (F, 3, H, W) in [0, 1] from one image, as diffusers' StableVideoDiffusionPipeline."""
        problems = sampling_problems(
            height=height,
            width=width,
            num_frames=num_frames,
            num_inference_steps=num_inference_steps,
            fps=fps,
            decode_chunk_size=decode_chunk_size,
            noise_aug_strength=noise_aug_strength,
            size_multiple=self.size_multiple,  # VAE x UNet downsampling
        )
        if problems:
            raise ValueError("; ".join(f"{name} {why}" for name, why in problems))
        num_frames = self.unet.config.num_frames if num_frames is None else num_frames
        device, dtype = self.device, self.dtype
        cond = self.conditioning(image, height, width, fps, motion_bucket_id, noise_aug_strength, generator)

        sigmas = self.sigmas(num_inference_steps).to(device)  # (steps + 1,)
        shape = (1, num_frames, self.vae.config.latent_channels, *cond.cond_latent.shape[-2:])
        if latents is None:
            latents = randn(shape, generator, device, dtype)  # drawn after the augmentation noise
        x = latents.to(device).float() * edm.init_noise_sigma(sigmas[0])

        with self._running(self.unet) as unet:
            network = self.network(unet)
            if max_guidance_scale > 1:  # classifier-free guidance, scale growing across frames
                scale = edm.guidance_scale(num_frames, min_guidance_scale, max_guidance_scale).to(device)
                uncond = cond.unconditional().unet_inputs(num_frames)
                denoiser = edm.cfg_denoiser(network, scale, cond.unet_inputs(num_frames), uncond)
            else:

                def denoiser(x, sigma):
                    return edm.denoise(network, x, sigma, **cond.unet_inputs(num_frames))

            x = edm.sample_euler(denoiser, x, sigmas, callback=callback, progress=progress)
        return self.decode(x, decode_chunk_size)

    # ----- export -----------------------------------------------------------------------------------------
    def save_pretrained(self, folder: str | Path, variant: str | None = None) -> Path:
        """Write the diffusers layout that `StableVideoDiffusionPipeline.from_pretrained(folder)` loads."""
        from minisvd.pretrained.save import save_diffusers_folder

        return save_diffusers_folder(folder, variant=variant, **self.components)

    @property
    def components(self) -> dict:
        """The keyword arguments that rebuild this pipeline: `ImageToVideo(**pipe.components)`."""
        return dict(
            unet=self.unet,
            vae=self.vae,
            image_encoder=self.image_encoder,
            feature_config=self.feature_config,
            scheduler_config=self.scheduler_config,
        )

    def __repr__(self) -> str:
        n = {k: sum(p.numel() for p in m.parameters()) for k, m in self.models.items()}
        return (
            f"ImageToVideo(unet={n['unet']:,} params, vae={n['vae']:,}, image_encoder={n['image_encoder']:,}, "
            f"num_frames={self.unet.config.num_frames}, dtype={self.dtype}, device={self.device}, "
            f"offload={self.offload_device is not None})"
        )


# ----- building one ----------------------------------------------------------------------------------------
def load_pipeline(
    path: str | os.PathLike | None = None,  # None: $MINISVD_SVD_WEIGHTS, else SVD in the HF cache
    device: str | torch.device | None = None,
    dtype: torch.dtype | str | None = None,
    variant: str | None = None,
    image_encoder: str | os.PathLike | None = None,  # a CLIP folder overriding a single file's conditioner
    preset: str | None = None,  # "svd" or "svd_xt": checked against what the weights say
    match_diffusers: bool = False,  # True: diffusers' GroupNorm eps (bit-for-bit parity with diffusers)
    unet_config=None,  # UNetConfig, for single files of other sizes (e.g. the tiny test fixture)
    vae_config=None,  # VAEConfig, likewise
) -> ImageToVideo:
    """Load SVD weights from a diffusers folder, a cached repo id, or an original single file; without a
    path, from $MINISVD_SVD_WEIGHTS or the Hugging Face cache (`minisvd.pretrained.load_components` finds
    and checks them; nothing is downloaded)."""
    from minisvd.pretrained.load import load_components

    parts = load_components(
        path,
        dtype=dtype,
        variant=variant,
        image_encoder=image_encoder,
        preset=preset,
        match_diffusers=match_diffusers,
        unet_config=unet_config,
        vae_config=vae_config,
    )
    pipe = ImageToVideo(**parts)
    if device is not None:
        pipe.to(device)
    return pipe


def tiny_random_pipeline(seed: int = 0, scale: float = 0.1, num_frames: int = 8) -> ImageToVideo:
    """A CPU-sized SVD with random weights (every parameter, zero-init ones too): UNet `tiny`, VAE `tiny`,
    a 2-layer CLIP ViT at 224 px. Same code paths as the real model; H and W multiples of 8."""
    from transformers import CLIPVisionModelWithProjection

    from minisvd.models.clip import tiny_clip_vision_config
    from minisvd.models.unet import UNet, UNetConfig
    from minisvd.models.vae import VAEConfig, VideoVAE

    unet = UNet(UNetConfig.tiny(num_frames=num_frames))
    vae = VideoVAE(VAEConfig.tiny())
    clip = CLIPVisionModelWithProjection(
        tiny_clip_vision_config(projection_dim=unet.config.cross_attention_dim)
    )
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for model in (unet, vae, clip):
            for _, p in sorted(model.named_parameters()):
                p.copy_(torch.randn(p.shape, generator=g) * scale)
    return ImageToVideo(unet.eval(), vae.eval(), clip.eval())
