"""EDM noise schedule, preconditioning, loss and samplers, as SVD uses them.

Karras et al. 2022, "Elucidating the Design Space of Diffusion-Based Generative Models" (EDM, arXiv 2206.00364),
with the changes of Stable Video Diffusion (Blattmann et al. 2023, arXiv 2311.15127, App. D):

- the data is x0 with std sigma_data = 1 (the VAE latents are scaled to unit variance), noisy x = x0 + sigma * n;
- the network predicts v ("v-scaling"): c_skip, c_out, c_in are those of v-prediction, c_noise is EDM's;
- training sigmas are log-normal, shifted toward more noise at higher resolution (`P_PRESETS`);
- sampling is deterministic Euler over Karras sigmas, with classifier-free guidance growing across frames.

Conventions (k-diffusion style): a *network* is `network(c_in * x, c_noise, **cond) -> F`, the raw output;
a *denoiser* is `denoiser(x, sigma) -> D`, the estimate of x0 (Eq. 7: D = c_skip x + c_out F).
Samplers are plain functions `sample_*(denoiser, x, sigmas, callback=None, progress=False)`.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from tqdm.auto import trange

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x, sigma) -> denoised

# ----------------------------------------------------------------------------------------------------------
# Training noise levels: sigma ~ lognormal(P_mean, P_std) (EDM Table 1, "Training"; SVD App. D)

P_PRESETS: dict[str, tuple[float, float]] = {
    # setting                (P_mean, P_std)
    "image_finetune": (-1.2, 1.0),  # SD 2.1 image model finetuned to continuous EDM noise (App. D)
    "img2vid_320x576": (0.7, 1.6),  # image-to-video at 320x576 (App. D)
    "img2vid_576x1024": (1.0, 1.6),  # image-to-video at 576x1024: more pixels, more noise (App. D)
    "txt2vid_hires": (0.5, 1.4),  # text-to-video high-resolution finetune (App. D)
    "cond_aug": (-3.0, 0.5),  # noise added to the conditioning frame (App. D)
}


def lognormal_params(setting: str | tuple[int, int]) -> tuple[float, float]:
    """(P_mean, P_std) of the paper for a setting name or an image-to-video (H, W) resolution (SVD App. D)."""
    if isinstance(setting, tuple):  # resolution shift: the 576x1024 model trains at more noise than 320x576
        H, W = setting
        setting = "img2vid_576x1024" if H * W >= 576 * 1024 else "img2vid_320x576"
    return P_PRESETS[setting]


def sample_sigmas(
    n: int,
    P_mean: float = 0.7,  # mean of ln(sigma)
    P_std: float = 1.6,  # std of ln(sigma)
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Training noise levels ln(sigma) ~ N(P_mean, P_std^2) (EDM Table 1 "Training", SVD App. D)."""
    return (P_mean + P_std * torch.randn(n, generator=generator, device=device)).exp()  # (n,)


def sample_cond_aug(
    n: int, generator: torch.Generator | None = None, device: torch.device | str | None = None
) -> torch.Tensor:
    """Noise level of the conditioning frame's augmentation, lognormal(-3.0, 0.5) (SVD App. D)."""
    return sample_sigmas(n, *P_PRESETS["cond_aug"], generator=generator, device=device)  # (n,)


# ----------------------------------------------------------------------------------------------------------
# Sampling noise levels (EDM Eq. 5)


def karras_sigmas(
    n: int, sigma_min: float = 0.002, sigma_max: float = 700.0, rho: float = 7.0
) -> torch.Tensor:
    """n sigmas evenly spaced in sigma^(1/rho) from sigma_max to sigma_min, then 0 appended (EDM Eq. 5)."""
    ramp = torch.linspace(0, 1, n, dtype=torch.float64)  # computed in float64, returned as float32
    inv_rho_max, inv_rho_min = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
    sigmas = (inv_rho_max + ramp * (inv_rho_min - inv_rho_max)) ** rho
    return torch.cat([sigmas, sigmas.new_zeros(1)]).float()  # (n+1,), sigmas[n] = 0


def init_noise_sigma(sigma_0: float | torch.Tensor) -> float:
    """Std of the initial noise, sqrt(1 + sigma_0^2): data (std 1) plus noise; diffusers' `init_noise_sigma`."""
    return math.sqrt(1.0 + float(sigma_0) ** 2)


def initial_noise(
    shape: tuple[int, ...],
    sigmas: torch.Tensor,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """The sampler's starting point x ~ N(0, (1 + sigma_0^2) I), as SVD does (sgm and diffusers' pipeline)."""
    return torch.randn(shape, generator=generator, device=device) * init_noise_sigma(sigmas[0])


# ----------------------------------------------------------------------------------------------------------
# Preconditioning (EDM Table 1 with v-prediction scalings, sigma_data = 1; SVD App. D)


def append_dims(v: torch.Tensor, ndim: int) -> torch.Tensor:
    """Append trailing singleton dims so a (B,) tensor broadcasts against a (B, ...) tensor."""
    return v.reshape(v.shape + (1,) * (ndim - v.ndim))


def precondition(
    sigma: float | torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(c_skip, c_out, c_in, c_noise) of v-scaling with EDM's c_noise = ln(sigma)/4 (EDM Table 1, SVD App. D)."""
    sigma = torch.as_tensor(sigma)
    c_skip = 1 / (sigma**2 + 1)  # how much of the noisy input passes straight through
    c_out = -sigma / (sigma**2 + 1).sqrt()  # scale of the network output (the minus sign: v-prediction)
    c_in = 1 / (sigma**2 + 1).sqrt()  # brings the input x = x0 + sigma * n to unit variance
    c_noise = 0.25 * sigma.log()  # the "timestep" the network sees; diffusers' scheduler.timesteps
    return c_skip, c_out, c_in, c_noise


def loss_weight(sigma: float | torch.Tensor) -> torch.Tensor:
    """lambda(sigma) = (1 + sigma^2) / sigma^2 = 1 / c_out^2: the weighted loss is MSE on the v-target (EDM Eq. 8)."""
    sigma = torch.as_tensor(sigma)
    return (1 + sigma**2) / sigma**2


def denoise(
    network: Callable[..., torch.Tensor], x: torch.Tensor, sigma: float | torch.Tensor, **cond
) -> torch.Tensor:
    """D(x; sigma) = c_skip x + c_out F(c_in x; c_noise) (EDM Eq. 7); sigma is a scalar or (B,)."""
    B = x.shape[0]
    sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device).expand(B)  # (B,)
    c_skip, c_out, c_in, c_noise = precondition(sigma)  # each (B,)
    c_skip, c_out, c_in = (append_dims(c, x.ndim) for c in (c_skip, c_out, c_in))  # (B, 1, ...)
    F = network(c_in * x, c_noise, **cond)  # same shape as x
    return c_skip * x + c_out * F


def edm_loss(
    network: Callable[..., torch.Tensor],
    x0: torch.Tensor,
    sigma: torch.Tensor,
    noise: torch.Tensor | None = None,
    reduction: str = "mean",  # "mean": one scalar; "none": the loss per sample, (B,)
    **cond,
) -> torch.Tensor:
    """E[lambda(sigma) ||D(x0 + sigma n; sigma) - x0||^2] (EDM Eq. 2 and 8); equals MSE of F against v.

    With `reduction="none"` the loss comes per sample (mean over all but the batch dim), as EDM's and
    k-diffusion's losses do, so a training loop can log it per sigma or weight samples itself.
    """
    if reduction not in ("mean", "none"):
        raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")
    n = torch.randn_like(x0) if noise is None else noise
    sigma = torch.as_tensor(sigma, dtype=x0.dtype, device=x0.device).expand(x0.shape[0])  # (B,)
    s = append_dims(sigma, x0.ndim)  # (B, 1, ...)
    D = denoise(network, x0 + s * n, sigma, **cond)
    per_element = append_dims(loss_weight(sigma), x0.ndim) * (D - x0) ** 2  # (B, ...)
    per_sample = per_element.flatten(1).mean(dim=1)  # (B,)
    return per_sample if reduction == "none" else per_sample.mean()


# ----------------------------------------------------------------------------------------------------------
# Classifier-free guidance, growing linearly across frames (SVD App. D "linearly increasing guidance")


def guidance_scale(
    num_frames: int, min_scale: float = 1.0, max_scale: float = 3.0, batch_size: int = 1
) -> torch.Tensor:
    """Per-frame guidance w_f = min + (max - min) f / (F - 1), shaped (B, F, 1, 1, 1) for (B, F, C, H, W)."""
    w = torch.linspace(min_scale, max_scale, num_frames)  # (F,)
    return w.reshape(1, num_frames, 1, 1, 1).repeat(batch_size, 1, 1, 1, 1)  # (B, F, 1, 1, 1)


def cfg_denoiser(
    network: Callable[..., torch.Tensor],
    scale: float | torch.Tensor,
    cond: dict[str, torch.Tensor],
    uncond: dict[str, torch.Tensor] | None = None,
) -> Denoiser:
    """Guided denoiser D_u + w (D_c - D_u) (Ho & Salimans 2022); one network call on the batch [uncond, cond]."""
    if uncond is None:  # SVD: zero CLIP embedding and zero conditioning latent
        uncond = {k: None if v is None else torch.zeros_like(v) for k, v in cond.items()}
    # (2B, ...), uncond first as in diffusers; an absent input (None) stays absent
    both = {k: None if cond[k] is None else torch.cat([uncond[k], cond[k]]) for k in cond}

    def denoiser(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device).expand(x.shape[0])  # (B,)
        D_u, D_c = denoise(network, torch.cat([x, x]), torch.cat([sigma, sigma]), **both).chunk(2)
        # D is affine in F with weights summing to one, so guiding D equals guiding F as diffusers does
        return D_u + scale * (D_c - D_u)

    return denoiser


# ----------------------------------------------------------------------------------------------------------
# Samplers: solve the probability-flow ODE dx/dsigma = (x - D(x; sigma)) / sigma (EDM Eq. 4 with sigma(t) = t)


def sample_euler(
    denoiser: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    callback: Callable[[dict], None] | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """Deterministic Euler steps (EDM Algorithm 1 without the 2nd-order correction), SVD's sampler."""
    s_in = x.new_ones(x.shape[0])  # (B,): every sample shares the step's sigma
    for i in trange(len(sigmas) - 1, disable=not progress):
        denoised = denoiser(x, sigmas[i] * s_in)
        d = (x - denoised) / sigmas[i]  # dx/dsigma (EDM Eq. 4)
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigmas[i], "denoised": denoised})
        x = x + (sigmas[i + 1] - sigmas[i]) * d  # Euler step
    return x


def sample_heun(
    denoiser: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    callback: Callable[[dict], None] | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """Deterministic Heun steps (EDM Algorithm 1): Euler, then the trapezoidal 2nd-order correction."""
    s_in = x.new_ones(x.shape[0])  # (B,)
    for i in trange(len(sigmas) - 1, disable=not progress):
        denoised = denoiser(x, sigmas[i] * s_in)
        d = (x - denoised) / sigmas[i]
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigmas[i], "denoised": denoised})
        x_next = x + (sigmas[i + 1] - sigmas[i]) * d  # Euler step
        if sigmas[i + 1] > 0:  # apply 2nd order correction (skipped on the last step to sigma = 0)
            d_next = (x_next - denoiser(x_next, sigmas[i + 1] * s_in)) / sigmas[i + 1]
            x_next = x + (sigmas[i + 1] - sigmas[i]) * (d + d_next) / 2
        x = x_next
    return x
