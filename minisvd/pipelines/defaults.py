"""What SVD samples with: the one source of sampling defaults for `ImageToVideo.__call__`, the `generate`
command and the demo (Blattmann et al. 2023, App. D; the values of the released models' configs).
"""

from __future__ import annotations

from dataclasses import dataclass

from minisvd.conditioning.clip_image import CLIP_MEAN, CLIP_STD


@dataclass(frozen=True)
class SamplingDefaults:
    height: int = 576  # pixels, a multiple of 64 (SVD's training resolution 576x1024)
    width: int = 1024
    num_inference_steps: int = 25  # Euler steps over Karras sigmas
    min_guidance_scale: float = 1.0  # guidance of the first frame
    max_guidance_scale: float = 3.0  # guidance of the last frame (linear in between); <= 1: no guidance
    fps: int = 7  # frame rate; reaches the UNet as fps - 1
    motion_bucket_id: int = 127  # more motion when higher (0..255)
    noise_aug_strength: float = 0.02  # cond_aug: noise added to the conditioning frame
    decode_chunk_size: int | None = None  # frames decoded at once (None: all; fewer saves memory)


SAMPLING = SamplingDefaults()

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
