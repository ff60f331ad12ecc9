"""minisvd.edm against closed forms and against diffusers' EulerDiscreteScheduler with SVD's config."""

from __future__ import annotations

import math

import pytest
import torch
from diffusers import EulerDiscreteScheduler

from minisvd import edm

# scheduler/scheduler_config.json of stabilityai/stable-video-diffusion-img2vid-xt
SVD_SCHEDULER_CONFIG = {
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "interpolation_type": "linear",
    "num_train_timesteps": 1000,
    "prediction_type": "v_prediction",
    "sigma_max": 700.0,
    "sigma_min": 0.002,
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "timestep_type": "continuous",
    "trained_betas": None,
    "use_karras_sigmas": True,
}


def svd_scheduler(n: int) -> EulerDiscreteScheduler:
    scheduler = EulerDiscreteScheduler(**SVD_SCHEDULER_CONFIG)
    scheduler.set_timesteps(n)
    return scheduler


class StandIn(torch.nn.Module):
    """A fixed random network F(c_in x, c_noise): a 3x3 conv, a tanh, and a c_noise-dependent gain."""

    def __init__(self, C: int = 4, cond_dim: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.conv = torch.nn.Conv2d(C, C, 3, padding=1)
        with torch.no_grad():
            self.conv.weight.copy_(torch.randn(self.conv.weight.shape, generator=g) * 0.3)
            self.conv.bias.copy_(torch.randn(C, generator=g) * 0.1)
            self.cond_map = torch.randn(cond_dim, C, generator=g) if cond_dim else None

    def forward(
        self, x: torch.Tensor, c_noise: torch.Tensor, cond: torch.Tensor | None = None
    ) -> torch.Tensor:
        c_noise = (
            torch.as_tensor(c_noise, dtype=x.dtype).expand(x.shape[0]).reshape(-1, 1, 1, 1)
        )  # (B, 1, 1, 1)
        F = torch.tanh(self.conv(x)) * (1 + 0.3 * c_noise) + 0.2 * x
        if cond is not None:
            F = F + (cond @ self.cond_map)[:, :, None, None]  # (B, C, 1, 1)
        return F


# ---------------------------------------------------------------------------------------------- sigmas


@pytest.mark.parametrize("n", [1, 14, 25, 30, 50])
def test_karras_sigmas_match_diffusers(n):
    ours, theirs = edm.karras_sigmas(n), svd_scheduler(n).sigmas
    assert ours.shape == (n + 1,) and ours[-1] == 0 and theirs[-1] == 0
    rel = ((ours[:-1] - theirs[:-1]).abs() / theirs[:-1]).max().item()
    assert rel < 1e-5, rel
    assert ours[0] == pytest.approx(700.0, rel=1e-6)
    if n > 1:
        assert ours[-2] == pytest.approx(0.002, rel=1e-5)
        assert (ours[:-1].diff() < 0).all()


def test_karras_sigmas_rho_spacing():
    sigmas = edm.karras_sigmas(10, sigma_min=0.01, sigma_max=80.0, rho=7.0)[:-1].double()
    steps = sigmas ** (1 / 7)
    assert torch.allclose(steps.diff(), steps.diff()[0].expand(9), rtol=1e-4)  # even in sigma^(1/rho)


def test_c_noise_equals_diffusers_timesteps():
    scheduler = svd_scheduler(25)
    c_noise = edm.precondition(scheduler.sigmas[:-1])[3]
    assert torch.allclose(c_noise, scheduler.timesteps, rtol=0, atol=1e-6)


def test_init_noise_sigma_matches_diffusers():
    scheduler = svd_scheduler(25)
    assert edm.init_noise_sigma(edm.karras_sigmas(25)[0]) == pytest.approx(
        float(scheduler.init_noise_sigma), rel=1e-6
    )
    x = edm.initial_noise((4000, 64), edm.karras_sigmas(25), generator=torch.Generator().manual_seed(0))
    assert x.std().item() == pytest.approx(math.sqrt(1 + 700.0**2), rel=0.01)


# ----------------------------------------------------------------------------------------- precondition


def test_precondition_closed_forms():
    sigma = torch.logspace(-3, 3, 61, dtype=torch.float64)
    c_skip, c_out, c_in, c_noise = edm.precondition(sigma)
    assert torch.allclose(c_skip, 1 / (sigma**2 + 1))
    assert torch.allclose(c_out, -sigma / torch.sqrt(sigma**2 + 1))
    assert torch.allclose(c_in, 1 / torch.sqrt(sigma**2 + 1))
    assert torch.allclose(c_noise, 0.25 * torch.log(sigma))
    assert torch.allclose(c_skip + c_out**2, torch.ones_like(sigma))  # sigma_data = 1 identity
    assert torch.allclose(c_in**2, c_skip)
    assert torch.allclose(edm.loss_weight(sigma) * c_out**2, torch.ones_like(sigma))
    scalar = edm.precondition(2.0)
    assert float(scalar[0]) == pytest.approx(0.2) and float(scalar[1]) == pytest.approx(-2 / math.sqrt(5))


def test_denoise_matches_diffusers_step_formula():
    net = StandIn()
    x, sigma = torch.randn(2, 4, 8, 8) * 3.0, torch.tensor(3.0)
    ours = edm.denoise(net, x, sigma)
    # diffusers: model sees scale_model_input(x) = x / sqrt(sigma^2 + 1) and t = 0.25 ln(sigma) ...
    F = net(x / (sigma**2 + 1) ** 0.5, 0.25 * sigma.log())
    theirs = F * (-sigma / (sigma**2 + 1) ** 0.5) + x / (sigma**2 + 1)  # ... and step() forms x0 like this
    assert torch.allclose(ours, theirs, atol=1e-6)


def test_edm_loss_is_mse_on_v_target():
    net = StandIn()
    g = torch.Generator().manual_seed(1)
    x0, n = torch.randn(6, 4, 8, 8, generator=g), torch.randn(6, 4, 8, 8, generator=g)
    sigma = edm.sample_sigmas(6, generator=g)
    loss = edm.edm_loss(net, x0, sigma, noise=n)
    s = sigma.reshape(-1, 1, 1, 1)
    v = (n - s * x0) / torch.sqrt(1 + s**2)  # v-target with alpha = 1/sqrt(1+s^2): alpha eps - sigma_vp x0
    F = net((x0 + s * n) / torch.sqrt(1 + s**2), 0.25 * sigma.log())  # raw output on c_in x and c_noise
    assert loss.item() == pytest.approx(((F - v) ** 2).mean().item(), rel=1e-4)
    assert loss.item() > 0.01  # a random network is not already perfect


def test_edm_loss_per_sample():
    """reduction="none" gives one loss per sample (B,), each the v-MSE of that sample; their mean is the loss."""
    net = StandIn()
    g = torch.Generator().manual_seed(2)
    x0, n = torch.randn(5, 4, 8, 8, generator=g), torch.randn(5, 4, 8, 8, generator=g)
    sigma = edm.sample_sigmas(5, generator=g)
    per = edm.edm_loss(net, x0, sigma, noise=n, reduction="none")
    assert per.shape == (5,)
    for i in range(5):  # sample i alone gives the same number: nothing mixes across the batch
        alone = edm.edm_loss(net, x0[i : i + 1], sigma[i : i + 1], noise=n[i : i + 1])
        assert per[i].item() == pytest.approx(alone.item(), rel=1e-5)
    assert per.std() > 0  # different sigmas and samples, different losses
    assert per.mean().item() == pytest.approx(edm.edm_loss(net, x0, sigma, noise=n).item(), rel=1e-6)
    with pytest.raises(ValueError, match="reduction"):
        edm.edm_loss(net, x0, sigma, noise=n, reduction="sum")


# ------------------------------------------------------------------------------------- training sigmas


@pytest.mark.parametrize(
    "setting", ["image_finetune", "img2vid_320x576", "img2vid_576x1024", "txt2vid_hires"]
)
def test_lognormal_statistics(setting):
    P_mean, P_std = edm.lognormal_params(setting)
    log_sigma = edm.sample_sigmas(200_000, P_mean, P_std, generator=torch.Generator().manual_seed(0)).log()
    assert log_sigma.mean().item() == pytest.approx(P_mean, abs=0.02)
    assert log_sigma.std().item() == pytest.approx(P_std, abs=0.02)


def test_presets_and_resolution_shift():
    assert edm.lognormal_params("img2vid_320x576") == (0.7, 1.6)
    assert edm.lognormal_params("img2vid_576x1024") == (1.0, 1.6)
    assert edm.lognormal_params("txt2vid_hires") == (0.5, 1.4)
    assert edm.lognormal_params("image_finetune") == (-1.2, 1.0)
    assert (
        edm.lognormal_params((576, 1024))[0] > edm.lognormal_params((320, 576))[0]
    )  # more pixels, more noise
    log_aug = edm.sample_cond_aug(200_000, generator=torch.Generator().manual_seed(0)).log()
    assert log_aug.mean().item() == pytest.approx(-3.0, abs=0.02)
    assert log_aug.std().item() == pytest.approx(0.5, abs=0.01)


# ------------------------------------------------------------------------------------------ samplers


def diffusers_loop(net, latents, n, cond=None, scale=None):
    """The SVD pipeline's denoising loop (scale_model_input, model, guidance, scheduler.step)."""
    scheduler = svd_scheduler(n)
    latents = latents * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        if cond is None:
            latents = scheduler.step(net(scheduler.scale_model_input(latents, t), t), t, latents).prev_sample
            continue
        inp = scheduler.scale_model_input(torch.cat([latents] * 2), t)
        F_u, F_c = net(inp, t, cond=torch.cat([torch.zeros_like(cond), cond])).chunk(2)
        latents = scheduler.step(F_u + scale * (F_c - F_u), t, latents).prev_sample
    return latents


def test_euler_loop_matches_diffusers():
    net = StandIn()
    noise = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        theirs = diffusers_loop(net, noise, 25)
        sigmas = edm.karras_sigmas(25)
        steps = []
        ours = edm.sample_euler(
            lambda x, s: edm.denoise(net, x, s),
            noise * edm.init_noise_sigma(sigmas[0]),
            sigmas,
            callback=steps.append,
        )
    assert ours.abs().max() > 0.1  # not trivially zero
    assert (ours - theirs).abs().max().item() < 1e-5
    assert [s["i"] for s in steps] == list(range(25))
    assert set(steps[0]) == {"x", "i", "sigma", "denoised"}
    assert steps[-1]["sigma"] == pytest.approx(0.002, rel=1e-5)


def test_guided_euler_matches_diffusers_pipeline_guidance():
    # SVD guides the model output per frame; here the "frames" axis is the batch of a (B*F, C, H, W) stand-in.
    net, F_ = StandIn(cond_dim=3), 5
    cond = torch.randn(F_, 3, generator=torch.Generator().manual_seed(2))
    noise = torch.randn(F_, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    scale = edm.guidance_scale(F_, 1.0, 3.0)[0]  # (F, 1, 1, 1), used as a per-sample scale
    with torch.no_grad():
        theirs = diffusers_loop(net, noise, 25, cond=cond, scale=scale)
        sigmas = edm.karras_sigmas(25)
        ours = edm.sample_euler(
            edm.cfg_denoiser(net, scale, {"cond": cond}), noise * edm.init_noise_sigma(sigmas[0]), sigmas
        )
        unguided = edm.sample_euler(
            edm.cfg_denoiser(net, 1.0, {"cond": cond}), noise * edm.init_noise_sigma(sigmas[0]), sigmas
        )
    assert (ours - theirs).abs().max().item() < 1e-5
    assert (ours[1:] - unguided[1:]).abs().max().item() > 1e-2  # guidance does something past frame 0
    assert (ours[0] - unguided[0]).abs().max().item() < 1e-5  # w = 1 on the first frame: no guidance


def test_cfg_batch_layout_and_formula():
    seen = {}

    def net(x, c_noise, y):
        seen["y"] = y
        return y.reshape(-1, 1, 1, 1, 1) * torch.ones_like(x)  # F = y, constant per sample

    B, F_ = 2, 4
    x, y = torch.randn(B, F_, 1, 2, 2), torch.tensor([1.0, 2.0])
    w = edm.guidance_scale(F_, 1.0, 3.0, batch_size=B)
    D = edm.cfg_denoiser(net, w, {"y": y})(x, torch.tensor(5.0))
    assert torch.equal(seen["y"], torch.tensor([0.0, 0.0, 1.0, 2.0]))  # [uncond (zeros), cond]
    c_skip, c_out = edm.precondition(torch.tensor(5.0))[:2]
    expected = c_skip * x + c_out * w * y.reshape(-1, 1, 1, 1, 1)  # D_u + w (D_c - D_u)
    assert torch.allclose(D, expected, atol=1e-6)


def test_guidance_scale_shape_and_values():
    w = edm.guidance_scale(14, 1.0, 2.5, batch_size=3)
    assert w.shape == (3, 14, 1, 1, 1)
    assert torch.allclose(w[1, :, 0, 0, 0], torch.tensor([1.0 + 1.5 * f / 13 for f in range(14)]))
    assert w[:, 0].eq(1.0).all() and w[:, -1].eq(2.5).all()
    assert (w[0, 1:] - w[0, :-1]).squeeze().allclose(torch.full((13,), 1.5 / 13))  # linear in the frame index
    scaled = torch.ones(3, 14, 4, 8, 8) * w  # broadcasts against (B, F, C, H, W): one scale per frame ...
    assert torch.equal(scaled.amin(dim=(2, 3, 4)), w[..., 0, 0, 0]) and torch.equal(
        scaled.amax(dim=(2, 3, 4)), w[..., 0, 0, 0]
    )


# --------------------------------------------------------------------- analytic case: Gaussian data


def gaussian_denoiser(s: float):
    """Ideal denoiser for x0 ~ N(0, s^2): E[x0 | x] = x s^2 / (s^2 + sigma^2)."""
    return lambda x, sigma: x * s**2 / (s**2 + edm.append_dims(sigma, x.ndim) ** 2)


@pytest.mark.parametrize("s", [0.5, 1.0, 2.0])
def test_heun_converges_to_fine_euler_and_exact_ode(s):
    x_T = torch.randn(50_000, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x_T = x_T * math.sqrt(s**2 + 80.0**2)  # exact marginal at sigma_max = 80
    exact = x_T * s / math.sqrt(s**2 + 80.0**2)  # the ODE solution: x(sigma) ∝ sqrt(s^2 + sigma^2)
    D = gaussian_denoiser(s)

    def err(sampler, n):
        x = sampler(D, x_T, edm.karras_sigmas(n, sigma_max=80.0).double())
        return ((x - exact).abs().max() / exact.abs().max()).item(), x

    (e_heun25, heun25), (e_heun50, _), (e_heun100, heun100) = (err(edm.sample_heun, n) for n in (25, 50, 100))
    (e_euler25, _), (e_fine, euler_fine) = err(edm.sample_euler, 25), err(edm.sample_euler, 4000)
    assert e_heun25 < 0.04 and e_heun25 < e_euler25 / 3  # 2nd order beats 1st order at the same step count
    assert e_heun25 / e_heun50 > 3.0 and e_heun50 / e_heun100 > 3.0  # error ~ 1/n^2: 2nd order
    assert e_fine < 2e-3 and e_heun100 < 2e-3  # both converge to the exact solution ...
    assert ((heun100 - euler_fine).abs().max() / exact.abs().max()).item() < 3e-3  # ... and to each other
    assert heun100.std().item() == pytest.approx(s, rel=0.02)  # samples have the data's std
    assert heun25.std().item() == pytest.approx(s, rel=0.05)


def test_heun_callback_and_progress():
    steps = []
    x = torch.randn(8, 2) * 80.0
    edm.sample_heun(
        gaussian_denoiser(1.0), x, edm.karras_sigmas(5, sigma_max=80.0), callback=steps.append, progress=True
    )
    assert [s["i"] for s in steps] == list(range(5))
    assert all(s["denoised"].shape == (8, 2) for s in steps)
