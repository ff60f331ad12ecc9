"""Stage 0, "vae": the course's own tiny video autoencoder, trained by the engine on the toy world.

SVD runs its diffusion in the latent space of an autoencoder whose image encoder is SD's and whose decoder
was fine-tuned with temporal layers so that decoded videos do not flicker (Blattmann et al. 2023, Sec. 4
and App. D.1). We train the same `VideoVAE` (models/vae.py), small enough for a CPU, in the same two
phases -- the recipe of notebooks/03_video_vae.ipynb, run by the engine (`VAETraining`):

  phase 1, images   the first `image_samples` training clips: one random frame of each (`frames_per_clip`),
                    encoded, a posterior sample decoded with the temporal layers off (`image_only=True`:
                    the image autoencoder SD's VAE is). Loss per frame: MSE + `kl_weight` x KL(q(z|x) ||
                    N(0, I)) (LDM App. G, without its perceptual and GAN terms at this size)
  phase 2, video    the temporal layers (initialised as the identity: the video decoder starts as the image
                    decoder) learn on whole clips; encoder and spatial decoder are frozen. The latents of
                    each frame get their own error, z + s std(z) eps, as a diffusion model's samples carry
                    (s uniform in [0, `latent_error`] per clip: clean latents must stay sharp); loss per
                    clip: MSE + MSE of the frame differences x_t - x_(t-1) (the flicker itself)

Phase 2 starts from an average of the phase-1 weights, which `VAETraining` keeps itself (its doc says why
the engine's EMA is off). Sizes: 3 levels (downsample factor 4: 32 x 32 frames -> 4 x 8 x 8 latents,
64 -> 16 x 16), `layers_per_block=1`, widths (32, 32, 64) in `tiny`: measured as good per step as
(32, 64, 64) and 25% cheaper (docs/training.md, "Stage 0").

At the end (`save_final`) the latent scaling factor is MEASURED, as SD's 0.18215 was: 1 / std of the
latents (posterior mode) of `scale_frames` training frames, stored in the VAE's config, so that the UNet
stages see latents of unit variance. final/vae/ is a diffusers `AutoencoderKLTemporalDecoder` folder
(`save_model_folder`); final/vae_report.json holds the scaling factor and the quality on held-out toy clips:
PSNR of the video decoder (and of the image decoder, of single frames, at 64 px), and flicker of both
decoders from clean latents and from latents with per-frame errors.
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn
from torch.utils.data import Dataset

from minisvd.models.inflate import is_temporal_key
from minisvd.train.stage import Stage, register_stage

HELD_OUT = 1_000_000  # held-out clips are make_clip(world, HELD_OUT + i): never in a training set
EVAL_LATENT_ERROR = 0.5  # per-frame latent error (x std(z)) of the flicker measurement (notebook 03)


class VAETraining(nn.Module):
    """The VideoVAE being trained, an average of its phase-1 weights, and the two-phase loss. Its forward
    is the loss (the engine calls the model, so that under DDP the wrapper's forward syncs the gradients).

    Why its own average instead of the engine's EMA: phase 2 must start from the AVERAGED image
    autoencoder (measured: +0.5 to 1 dB PSNR over the last weights, which jump around at this learning
    rate), and the short temporal phase must not be averaged away (the engine's EMA, with a half-life
    longer than phase 2, would keep the temporal layers near their identity init). So `average` follows the
    weights through phase 1 (EDM's half-life with ramp-up, ema.py), is copied into the VAE when phase 2
    starts, and phase 2 trains the temporal layers of that VAE directly. The stage's default config turns
    the engine's EMA off; `samples_seen`, `average` and `video_started` are in the state dict, so
    checkpoints and --resume keep the phase and the average."""

    def __init__(
        self,
        vae: nn.Module,
        image_samples: int,  # training clips of phase 1 (images); the temporal phase follows
        frames_per_clip: int,  # random frames of each clip in phase 1
        kl_weight: float,
        latent_error: float,  # per-frame latent error of phase 2, relative to std(z)
        random_error: bool,  # True: each clip's error size uniform in [0, latent_error]
        video_frames: int,  # phase 2 trains on windows of this many frames of each clip
        average_halflife: float,  # half-life of the phase-1 average, in clips
        average_rampup: float = 0.05,  # ... at most this fraction of the clips seen (ema.py)
    ):
        super().__init__()
        self.vae = vae
        self.average = copy.deepcopy(vae).requires_grad_(False)  # not trained: not in the optimizer
        self.image_samples, self.frames_per_clip = image_samples, frames_per_clip
        self.kl_weight, self.latent_error, self.random_error = kl_weight, latent_error, random_error
        self.video_frames = video_frames
        self.average_halflife, self.average_rampup = average_halflife, average_rampup
        self.register_buffer("samples_seen", torch.zeros((), dtype=torch.long))  # global clips trained on
        self.register_buffer("video_started", torch.zeros((), dtype=torch.bool))

    def video_phase(self) -> bool:
        return int(self.samples_seen) >= self.image_samples

    def forward(self, clips: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, dict]:
        """clips (B, F, 3, H, W) in [-1, 1] -> loss per clip (B,), extras (B,) each."""
        video = self.video_phase()
        if self.training and torch.is_grad_enabled():
            world = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
            batch = clips.shape[0] * world  # every process counts the global batch
            if video:
                self.start_video_phase()
            else:  # the average of the weights so far (before this step's update)
                self.update_average(batch)
            self.samples_seen += batch
        loss, rec = self.video_loss(clips, generator) if video else self.image_loss(clips, generator)
        return loss, {"rec_mse": rec.detach(), "video_phase": torch.full_like(rec, float(video)).detach()}

    @torch.no_grad()
    def update_average(self, batch: int) -> None:
        from minisvd.train.ema import ema_beta

        seen = int(self.samples_seen) + batch
        beta = ema_beta(seen, batch, self.average_halflife, self.average_rampup)
        for p_avg, p in zip(self.average.parameters(), self.vae.parameters()):
            p_avg.lerp_(p.detach(), 1.0 - beta)

    @torch.no_grad()
    def start_video_phase(self) -> None:
        """Once: the VAE takes the averaged phase-1 weights (the temporal layers are still the identity)."""
        if not bool(self.video_started):
            for p, p_avg in zip(self.vae.parameters(), self.average.parameters()):
                p.copy_(p_avg)
            self.video_started.fill_(True)

    def final_vae(self) -> nn.Module:
        """The trained VAE: after phase 2 the VAE itself, during phase 1 the average."""
        return self.vae if bool(self.video_started) else self.average

    def image_loss(self, clips: torch.Tensor, generator: torch.Generator):
        """Phase 1: random frames through the image autoencoder (temporal layers off)."""
        B, T, k = clips.shape[0], clips.shape[1], self.frames_per_clip
        dev = generator.device
        pick = torch.randint(0, T, (B, k), generator=generator, device=dev).to(clips.device)  # (B, k)
        x = clips[torch.arange(B, device=clips.device)[:, None], pick].flatten(0, 1)  # (B*k, 3, H, W)
        q = self.vae.encode(x)
        x_hat = self.vae.decode(q.sample(generator), num_frames=1, image_only=True)
        rec = F.mse_loss(x_hat, x, reduction="none").mean(dim=(1, 2, 3))  # (B*k,)
        loss = rec + self.kl_weight * q.kl()  # (B*k,)
        return loss.view(B, k).mean(1), rec.view(B, k).mean(1)

    def video_loss(self, clips: torch.Tensor, generator: torch.Generator):
        """Phase 2: clips (a random window of `video_frames` frames of each), latents with per-frame
        errors, only the temporal layers learn."""
        B, T = clips.shape[0], min(self.video_frames, clips.shape[1])
        if T < clips.shape[1]:  # a random window per clip
            start = torch.randint(
                0, clips.shape[1] - T + 1, (B, 1), generator=generator, device=generator.device
            )
            frames = start.to(clips.device) + torch.arange(T, device=clips.device)  # (B, T)
            clips = clips[torch.arange(B, device=clips.device)[:, None], frames]  # (B, T, 3, H, W)
        with torch.no_grad():
            z = self.vae.encode(rearrange(clips, "b t c h w -> (b t) c h w")).mode()  # (B*T, C, h, w)
            eps = torch.randn(z.shape, generator=generator, device=generator.device).to(z.device)
            size = torch.full((B,), self.latent_error, device=generator.device)  # error per clip
            if self.random_error:  # from clean to `latent_error`: the decoder must not blur clean latents
                size = size * torch.rand(B, generator=generator, device=generator.device)
            z = z + z.std() * size.to(z.device).repeat_interleave(T)[:, None, None, None] * eps
        decoder = self.vae.decoder  # spatial weights detached: frozen, only the temporal layers learn
        frozen = {n: p.detach() for n, p in decoder.named_parameters() if not is_temporal_key(n)}
        x_hat = torch.func.functional_call(decoder, frozen, (z,), {"num_frames": T}, strict=False)
        x_hat = rearrange(x_hat, "(b t) c h w -> b t c h w", t=T)
        rec = F.mse_loss(x_hat, clips, reduction="none").mean(dim=(1, 2, 3, 4))  # (B,)
        flicker = F.mse_loss(torch.diff(x_hat, dim=1), torch.diff(clips, dim=1), reduction="none")
        return rec + flicker.mean(dim=(1, 2, 3, 4)), rec


@register_stage
class VAEStage(Stage):
    name = "vae"
    # Each phase leaves some parameters without gradient (phase 1 the temporal layers, phase 2 the rest).
    find_unused_parameters = True
    SIZES = {  # preset -> world preset, training clips, VAEConfig.tiny(**...)
        "tiny": ("tiny", 4096, dict(block_out_channels=(32, 32, 64), layers_per_block=1, sample_size=32)),
        "small": ("small", 16384, dict(block_out_channels=(64, 64, 128), layers_per_block=1, sample_size=64)),
    }
    RECIPES = {  # VAETraining's arguments: phase-1 clips, frames per clip, KL weight, latent error, average
        "tiny": dict(image_samples=3600, frames_per_clip=1, kl_weight=1e-6, latent_error=0.5,
                     random_error=True, video_frames=4, average_halflife=2_000),
        "small": dict(image_samples=200_000, frames_per_clip=1, kl_weight=1e-6, latent_error=0.5,
                      random_error=True, video_frames=8, average_halflife=20_000),
    }  # fmt: skip
    # tiny: measured on the 2-core CPU, ~75 s of one core; small: ~8 min on one H100 (docs/training.md,
    # "Stage 0"). The engine's EMA is off: VAETraining averages phase 1 itself.
    SCHEDULES = {
        "tiny": dict(steps=920, batch_size=4, lr=2e-3, warmup_steps=10, ema=False, log_every=25,
                     ckpt_every=250, sample_every=0),
        "small": dict(steps=13_000, batch_size=16, lr=1e-3, warmup_steps=100, ema=False, log_every=100,
                      ckpt_every=1_000, sample_every=0),
    }  # fmt: skip
    scale_frames = 512  # training frames the scaling factor is measured on
    eval_clips = 24  # held-out clips of the report

    def __init__(self, preset: str = "tiny", **recipe):
        """`recipe` overrides fields of RECIPES[preset], e.g. VAEStage(image_samples=64) for a short test."""
        super().__init__(preset)
        if preset not in self.SIZES:
            raise ValueError(f"unknown preset {preset!r} for stage vae; choose one of {sorted(self.SIZES)}")
        from minisvd.data import world_preset

        world_name, self.num_clips, self.vae_kwargs = self.SIZES[preset]
        self.world = world_preset(world_name)
        unknown = sorted(set(recipe) - set(self.RECIPES[preset]))
        if unknown:
            raise ValueError(
                f"stage vae has no recipe field(s) {unknown}; known: {sorted(self.RECIPES[preset])}"
            )
        self.recipe = {**self.RECIPES[preset], **recipe}
        self.train_data: Dataset | None = None
        self.init: Path | None = None

    def default_config(self, **overrides):
        from minisvd.train.config import preset_config

        return preset_config(self.preset, **{**self.SCHEDULES[self.preset], **overrides})

    # ----- the contract -------------------------------------------------------------------------------
    def setup(self, init: Path | None) -> None:
        """Remember --init (given on --resume too, when `build_model` gets None): it fixes the VAE sizes."""
        self.init = init

    def dataset(self, data: Path | None) -> Dataset:
        """Toy clips rendered on the fly (clip i = make_clip(world, i)), or --data: a curate output folder."""
        from minisvd.data import CuratedClips, ToyClips

        if data is None:
            self.train_data = ToyClips(self.world, self.num_clips)
        else:  # the middle window of each kept clip: item i depends on i only
            self.train_data = CuratedClips(
                data, size=self.world.size, num_frames=self.world.num_frames, sample="center"
            )
        return self.train_data

    def collate(self, items: list) -> torch.Tensor:
        return torch.stack([item["frames"] for item in items])  # (B, F, 3, H, W) in [-1, 1]

    def build_model(self, init: Path | None) -> nn.Module:
        """A new VideoVAE whose temporal layers start as the identity, or --init's final/vae/ to go on
        training (its phase 1 starts from those weights)."""
        from minisvd.models.vae import VAEConfig, VideoVAE

        init = init if init is not None else self.init
        if init is not None:
            from minisvd.train.stages.chain import final_folder, load_vae

            vae = load_vae(final_folder(init), self.name).train().requires_grad_(True)
        else:
            vae = VideoVAE(VAEConfig.tiny(**self.vae_kwargs))
            with torch.no_grad():  # posterior std e^-3 at init: the decoder first sees the mean, not noise
                vae.quant_conv.bias[vae.config.latent_channels :] -= 6.0
            vae.init_temporal_as_identity()
        return VAETraining(vae, **self.recipe)

    def loss(self, model: nn.Module, batch: torch.Tensor, generator: torch.Generator):
        return model(batch, generator)

    # ----- the end: measure, report, save ----------------------------------------------------------------
    def save_final(self, model: nn.Module, ema: nn.Module | None, out_dir: Path) -> Path:
        """final/vae/ (with the measured scaling_factor) and final/vae_report.json. The VAE is the model's
        (`VAETraining.final_vae`: it holds its own phase-1 average); the engine's EMA, if on, is not used."""
        from minisvd.pretrained.save import save_model_folder

        trainer = model
        vae = trainer.final_vae().eval()
        frames = self.training_frames(self.scale_frames)
        scale = measure_scaling_factor(vae, frames)
        vae.config.scaling_factor = scale
        out_dir.mkdir(parents=True, exist_ok=True)
        save_model_folder(out_dir / "vae", vae)
        report = {
            "preset": self.preset,
            "config": vae.config.to_diffusers(),
            "scaling_factor": scale,
            "scaling_measured_on": f"{len(frames)} training frames (posterior mode), 1 / std",
            "clips_trained": int(trainer.samples_seen),
            "temporal_trained": bool(trainer.video_phase()),
            "recipe": self.recipe,
            **evaluate_vae(vae, self.world, self.eval_clips),
        }
        (out_dir / "vae_report.json").write_text(json.dumps(report, indent=2) + "\n")
        save_reconstructions(vae, self.world, out_dir / "vae_reconstructions.png")
        return out_dir

    def training_frames(self, n: int) -> torch.Tensor:
        """n frames (n, 3, H, W) in [-1, 1] of the training set: every frame of its first n / F clips."""
        data = self.train_data if self.train_data is not None else self.dataset(None)
        clips = [data[i]["frames"] for i in range(min(len(data), math.ceil(n / self.world.num_frames)))]
        return torch.cat(clips)[:n]


# ----------------------------------------------------------------------------------------------------------
# Measurements


@torch.no_grad()
def measure_scaling_factor(vae: nn.Module, frames: torch.Tensor, chunk: int = 128) -> float:
    """1 / std of the latents (posterior mode) of `frames`: multiplied by it, the latents have unit std
    (Rombach et al. 2022, Sec. 4.3.2 / App. G: how SD's 0.18215 was obtained)."""
    p = next(vae.parameters())
    z = torch.cat(
        [vae.encode(frames[i : i + chunk].to(p.device)).mode() for i in range(0, len(frames), chunk)]
    )
    return float(1.0 / z.float().std())


def psnr(x_hat: torch.Tensor, x: torch.Tensor) -> float:
    """PSNR in dB of pixels in [-1, 1] (peak-to-peak 2): 10 log10(4 / MSE), x_hat clamped to the range."""
    return 10 * math.log10(4.0 / F.mse_loss(x_hat.clamp(-1, 1).float(), x.float()).item())


def flicker(v_hat: torch.Tensor, v: torch.Tensor) -> float:
    """Temporal-difference error of videos (B, F, 3, H, W): mean |(x^_t - x^_(t-1)) - (x_t - x_(t-1))|
    (notebook 03): zero when the decoded video changes from frame to frame exactly as the true one."""
    return (torch.diff(v_hat, dim=1) - torch.diff(v, dim=1)).abs().mean().item()


@torch.no_grad()
def evaluate_vae(vae: nn.Module, world, n: int = 24, latent_error: float = EVAL_LATENT_ERROR) -> dict:
    """Quality on `n` held-out toy clips: PSNR of the video decoder (what the pipelines use), of the image
    decoder (temporal layers off) and of single frames decoded alone (stage I decodes images), at the
    world's size and at twice it (stage III's 64 px); flicker of both decoders from the clean latents and
    from latents with per-frame errors (a diffusion model's samples; notebook 03)."""
    from dataclasses import replace

    from minisvd.data import ToyClips

    p = next(vae.parameters())
    data = ToyClips(world, HELD_OUT + n)
    v = torch.stack([data[HELD_OUT + i]["frames"] for i in range(n)]).to(p.device)  # (n, F, 3, H, W)
    T = v.shape[1]
    x = rearrange(v, "b t c h w -> (b t) c h w")
    z = vae.encode(x).mode()
    g = torch.Generator().manual_seed(1)
    z_err = z + latent_error * z.std() * torch.randn(z.shape, generator=g).to(z.device)

    def videos(latents, **kw):
        return rearrange(vae.decode(latents, T, **kw), "(b t) c h w -> b t c h w", t=T)

    video, image = videos(z), videos(z, image_only=True)
    video_err, image_err = videos(z_err), videos(z_err, image_only=True)
    single = vae.decode(z, num_frames=1)  # every frame alone through the video decoder
    big = ToyClips(replace(world, size=2 * world.size), HELD_OUT + n // 4)
    x2 = torch.cat([big[HELD_OUT + i]["frames"] for i in range(n // 4)]).to(p.device)
    out = {
        "held_out_clips": f"{n} clips x {T} frames, {world.size} px",
        "psnr_db": round(psnr(video, v), 2),
        "psnr_image_decoder_db": round(psnr(image, v), 2),
        "psnr_single_frame_db": round(psnr(single, x), 2),
        f"psnr_{2 * world.size}px_db": round(psnr(vae.decode(vae.encode(x2).mode(), T), x2), 2),
        "flicker": round(flicker(video, v), 5),
        "flicker_image_decoder": round(flicker(image, v), 5),
        "latent_error": latent_error,
        "flicker_with_latent_error": round(flicker(video_err, v), 5),
        "flicker_with_latent_error_image_decoder": round(flicker(image_err, v), 5),
        "psnr_with_latent_error_db": round(psnr(video_err, v), 2),
        "true_motion": round(torch.diff(v, dim=1).abs().mean().item(), 5),  # mean |x_t - x_(t-1)|
    }
    return out


@torch.no_grad()
def save_reconstructions(vae: nn.Module, world, path: Path, n: int = 4) -> Path:
    """A PNG of `n` held-out clips: for each, a row of the true frames and a row of their reconstruction
    (encode, posterior mode, video decoder), 4x enlarged."""
    from PIL import Image

    from minisvd.data import ToyClips

    p = next(vae.parameters())
    data = ToyClips(world, HELD_OUT + n)
    v = torch.stack([data[HELD_OUT + i]["frames"] for i in range(n)]).to(p.device)  # (n, F, 3, H, W)
    T = v.shape[1]
    z = vae.encode(rearrange(v, "b t c h w -> (b t) c h w")).mode()
    v_hat = rearrange(vae.decode(z, T), "(b t) c h w -> b t c h w", t=T)
    rows = torch.stack([v, v_hat], dim=1)  # (n, 2, F, 3, H, W)
    grid = rows.clamp(-1, 1).add(1).mul(127.5).round().byte().cpu()
    grid = rearrange(grid, "n r t c h w -> (n r h) (t w) c")
    image = Image.fromarray(grid.numpy())
    image.resize((image.width * 4, image.height * 4), Image.NEAREST).save(path)
    return path
