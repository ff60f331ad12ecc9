"""Image-to-video, "i2v": the SVD model, fine-tuned from the stage-III text-to-video model
(Blattmann et al. 2023, Sec. 4 "image-to-video", App. D).

What changes from stage III, as in the paper:
  - context: the CLIP IMAGE token of the clean first frame (`clip_pixels` + the vision tower of our CLIP)
    replaces the caption's text token. Both live in CLIP's joint space (models/clip.py), so the text-trained
    cross-attention starts from a meaningful input;
  - the conditioning frame: the first frame, noise-augmented (x + cond_aug * n, ln(cond_aug) ~ N(-3.0, 0.5^2)),
    encoded to the VAE's mode, UNSCALED (as SVD), repeated over the frames and concatenated to the noisy
    latent on channels: conv_in grows from 4 to 8 input channels, the new weights ZERO, so the model is
    unchanged at init (`grow_conv_in` + `check_grown`, checked at build time);
  - micro-conditioning (fps - 1, motion_bucket_id, cond_aug);
  - conditioning dropout for classifier-free guidance (`Conditioning.dropout`): the paper gives no rates.
    We drop the image token and the frame latent independently, 10% each: each branch of the guided
    sampler (zero token, zero latent) is then trained on ~10% of samples, and ~1% see neither, while 81%
    of the CPU time still trains the fully conditioned model we sample from;
  - 32 px frames (8 x 8 latents): measured, a step at 64 px costs ~4x as much, and in the same 2 minutes the
    64 px model is further from its truth and barely responds to the motion bucket;
  - P_mean 2.0: with the first frame given, what is left to learn is decided at high noise (which way and
    how fast things move). Measured at equal steps: P_mean 1.0 / 2.0 / 3.0 move 0.14 / 0.19 / 0.27 px/frame
    and respond to the bucket by +10% / +11% / +25%, but 3.0 leaves low-noise detail untrained (noisy,
    flickering frames: more frame change than the truth). 2.0 is the compromise (docs/training.md).

`save_final` writes the SVD diffusers layout (`ImageToVideo.save_pretrained`: unet/, vae/, image_encoder/,
feature_extractor/, scheduler/, model_index.json) that `diffusers.StableVideoDiffusionPipeline` and
`minisvd.load_pipeline(final, match_diffusers=True)` load, plus final/clip carried and final/stage.json.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from minisvd import edm
from minisvd.conditioning import Conditioning, encode_latent, micro_conditioning, noise_augment
from minisvd.models.unet import UNet
from minisvd.train.stage import register_stage
from minisvd.train.stages.chain import load_unet
from minisvd.train.stages.diffusion import DiffusionStage, TensorDataset, encode_frames, image_contexts

GROW_TOL = 1e-6
# Guidance (min, max) of samples and `evaluate_i2v`: none. Measured on 8 held-out clips after the default run
# (docs/training.md): 1 -> 1 reaches the MSE of copying the first frame (0.0133) and moves the most
# (0.13 / 0.15 / 0.20 px/frame at buckets 40 / 127 / 220); SVD's 1 -> 2.5 gives 0.0155 and 0.12 / 0.14 / 0.18,
# 1 -> 4 0.0189: at this size and training length guidance moves samples away from the truth.
SAMPLE_GUIDANCE = (1.0, 1.0)


# ----------------------------------------------------------------------------------------------------------
# conv_in: 4 -> 8 input channels, the new ones zero


def grow_conv_in(unet: UNet, extra: int) -> UNet:
    """The same UNet taking `extra` more input channels (the conditioning latent), their weights zero."""
    cfg = unet.config.replace(in_channels=unet.config.in_channels + extra)
    grown = UNet(cfg)
    sd = unet.state_dict()
    w = sd["conv_in.weight"]  # (C0, C_in, 3, 3)
    sd["conv_in.weight"] = torch.cat([w, w.new_zeros(w.shape[0], extra, *w.shape[2:])], dim=1)
    grown.load_state_dict(sd)
    return grown.train().requires_grad_(True)


@torch.no_grad()
def check_grown(unet: UNet, grown: UNet, num_frames: int = 8, tol: float = GROW_TOL) -> float:
    """Max abs difference of the grown UNet (any conditioning latent) and the original on a random batch;
    raises ValueError above `tol`."""
    cfg, g = unet.config, torch.Generator().manual_seed(0)
    B, h, extra = 2, 8, grown.config.in_channels - unet.config.in_channels
    x = torch.randn(B, num_frames, cfg.in_channels, h, h, generator=g)
    cond = torch.randn(B, num_frames, extra, h, h, generator=g) * 3
    t, ctx = torch.randn(B, generator=g), torch.randn(B, 1, cfg.cross_attention_dim, generator=g)
    ids = torch.rand(B, cfg.num_added_time_ids, generator=g) * torch.tensor([11.0, 255.0, 0.1])
    modes = unet.training, grown.training
    unet.eval(), grown.eval()
    diff = (unet(x, t, ctx, ids) - grown(torch.cat([x, cond], 2), t, ctx, ids)).abs().max().item()
    unet.train(modes[0]), grown.train(modes[1])
    if not diff <= tol:
        raise ValueError(
            f"growing conv_in changed the UNet's output by {diff:.2e} (> {tol:.0e}): new weights must be 0"
        )
    return diff


def i2v_conditioning(
    vae: nn.Module,  # encodes the conditioning frame (may sit on another device: --offload)
    batch: dict,  # "first" (B, 3, H, W) uint8, "context" (B, 1, D), "fps" (B,), "motion_bucket_id" (B,)
    generator: torch.Generator,
    cond_aug: tuple[float, float],  # (P_mean, P_std) of ln(cond_aug)
    p_drop_context: float,
    p_drop_latent: float,
) -> Conditioning:
    """SVD's image-to-video conditioning of a training batch (App. D): the CLIP image token; the first frame
    plus cond_aug * noise (ln cond_aug ~ N(P_mean, P_std^2)) encoded to the VAE's mode, unscaled; micro-
    conditioning (fps - 1, motion bucket, cond_aug); then the token and the latent dropped to zero
    independently (classifier-free guidance)."""
    first = batch["first"].float() / 127.5 - 1  # (B, 3, H, W) in [-1, 1]
    B, dev = len(first), generator.device
    aug = edm.sample_sigmas(B, *cond_aug, generator=generator, device=dev).to(first.device)
    noise = torch.randn(first.shape, generator=generator, device=dev).to(first.device)
    on = next(vae.encoder.parameters()).device  # only the encoder (and quant_conv) need be there
    latent = encode_latent(vae, noise_augment(first, aug, noise).to(on)).to(first.device)  # (B, C_z, h, w)
    ids = micro_conditioning(batch["fps"], batch["motion_bucket_id"], aug, device=first.device)
    cond = Conditioning(context=batch["context"], added_time_ids=ids, cond_latent=latent)
    return cond.dropout(p_drop_context, p_drop_latent, generator)


# ----------------------------------------------------------------------------------------------------------
# The toy world's clips, optionally with the direction following from the first frame


OBJECT_DIRECTIONS = {
    "cat": "left",
    "clock": "left",
    "horse": "right",
    "astronaut": "right",
    "rocket": "up",
    "cup": "down",
}  # fmt: skip  (direction_rule "object")
DIRECTION_RULES = ("any", "object", "away")


def nearest_border_direction(start: tuple[float, float], size: int) -> str:
    """The direction pointing away from the border nearest to `start` (x, y): "right" near the left border."""
    x, y = start
    d = {"right": x, "left": size - 1 - x, "down": y, "up": size - 1 - y}  # distance to the border behind
    return min(d, key=d.get)


def follows_rule(scene, rule: str) -> bool:
    """Whether a toy scene obeys a direction rule: "any" (the world as it is), "object" (each object moves in
    its own direction, `OBJECT_DIRECTIONS`, or stands still; static camera), "away" (the object moves away
    from the border nearest its start, or stands still; static camera)."""
    if rule == "any":
        return True
    if rule not in DIRECTION_RULES:
        raise ValueError(f"direction_rule must be one of {DIRECTION_RULES}, got {rule!r}")
    own = (
        OBJECT_DIRECTIONS[scene.object]
        if rule == "object"
        else nearest_border_direction(scene.start, scene.size)
    )
    return scene.camera == "static" and scene.direction in ("static", own)


def direction_rule_indices(world, n: int, rule: str) -> list[int]:
    """The first `n` clip indices of `world` whose scene follows `rule`: with "object" or "away" a first
    frame tells where its object goes (the toy world's directions are otherwise random)."""
    from minisvd.data.world import sample_scene, scene_rng

    out, i = [], 0
    while len(out) < n:
        if follows_rule(sample_scene(world, scene_rng(world.seed, i)), rule):
            out.append(i)
        i += 1
    return out


def render_clips(world, indices: list[int]) -> dict[str, torch.Tensor]:
    """uint8 frames (N, F, 3, H, W), fps (N,) and the measured curation motion score (N,) of the clips."""
    from minisvd.data import make_clip, measure_motion

    frames, fps, motion = [], [], []
    for i in indices:
        c = make_clip(world, i)
        frames.append(c.frames)
        fps.append(c.fps)
        motion.append(measure_motion(c.frames, c.fps))
    return {"frames": torch.stack(frames), "fps": torch.tensor(fps, dtype=torch.float32),
            "motion": torch.tensor(motion, dtype=torch.float64)}  # fmt: skip


@register_stage
class ImageToVideoStage(DiffusionStage):
    name = "i2v"
    previous = "hires"
    num_frames = 8
    num_clips = 1024
    world = "tiny"
    direction_rule = (
        "any"  # "any" | "object" | "away" (`follows_rule`): can a first frame tell the direction?
    )
    P_mean, P_std = 2.0, 1.2  # measured: more motion than 1.0, less noise than 3.0 (module doc)
    p_drop_context = 0.1  # image token dropped to zero (module doc)
    p_drop_latent = 0.1  # conditioning-frame latent dropped to zero, independently
    cond_aug = edm.P_PRESETS["cond_aug"]  # (P_mean, P_std) of the conditioning frame's noise (App. D)
    sample_cond_aug = 0.02  # the noise_aug_strength of samples (SVD's default)
    extra_fields = ("num_clips", "world", "direction_rule", "p_drop_latent", "cond_aug", "sample_cond_aug")
    schedule = dict(
        steps=1000, batch_size=8, lr=5e-4, warmup_steps=20, ema_halflife_samples=1_000, sample_every=500,
        log_every=20, ckpt_every=100,
    )  # fmt: skip

    # ----- data -----------------------------------------------------------------------------------------
    def clips(self) -> dict[str, torch.Tensor]:
        from minisvd.data import ToyClips, world_preset
        from minisvd.train.stages.diffusion import cache_root, cached, digest

        world = world_preset(self.world, size=self.size, num_frames=self.num_frames)
        if self.direction_rule == "any":
            c = ToyClips(world, self.num_clips, cache_dir=cache_root() / "toy")
            return {"frames": c.frames, "fps": torch.tensor([m["fps"] for m in c.meta], dtype=torch.float32),
                    "motion": torch.tensor([m["motion"] for m in c.meta], dtype=torch.float64)}  # fmt: skip
        key = digest(
            [self.world, self.size, self.num_frames, self.num_clips, world.seed, self.direction_rule]
        )
        indices = lambda: direction_rule_indices(world, self.num_clips, self.direction_rule)  # noqa: E731
        return cached(cache_root() / "toy" / f"{self.direction_rule}_{key}.safetensors",
                      lambda: render_clips(world, indices()))  # fmt: skip

    def dataset(self, data: Path | None) -> Dataset:
        from minisvd.data import motion_bucket_id

        if data is not None:
            raise ValueError("stage i2v trains on the toy world's clips; drop --data")
        fz = self.require_setup()
        clips = self.clips()
        frames = clips["frames"]  # (N, F, 3, H, W) uint8

        from minisvd.data import world_preset

        world_seed = world_preset(self.world).seed
        key = [self.world, self.size, self.num_frames, self.num_clips, world_seed]  # = stage video's toy key
        kind = "toy" if self.direction_rule == "any" else self.direction_rule
        enc = {
            **self.cached_tensors(
                kind,
                key,
                lambda: {
                    "latents": encode_frames(fz.vae, frames.flatten(0, 1), fz.scaling_factor).unflatten(
                        0, frames.shape[:2]
                    )
                },
            ),
            **self.cached_tensors(
                kind + "-clip-image", key, lambda: {"context": image_contexts(fz.vision, frames[:, 0])}
            ),
        }
        self.train_data = TensorDataset(
            {
                "latents": enc["latents"],  # (N, F, C_z, h, w), scaled
                "context": enc["context"],  # (N, 1, D): CLIP image token of the clean first frame
                "first": frames[:, 0],  # (N, 3, H, W) uint8: the conditioning frame
                "fps": clips["fps"],
                "motion_bucket_id": motion_bucket_id(clips["motion"], self.size).float(),
            }
        )
        return self.train_data

    # ----- model ----------------------------------------------------------------------------------------
    def build_model(self, init: Path | None) -> nn.Module:
        """The stage-III UNet with conv_in grown to latent + conditioning latent channels (new weights 0)."""
        fz = self.require_setup()
        c = fz.vae.config.latent_channels
        if init is None:
            return UNet(self.unet_config().replace(in_channels=2 * c))
        unet = load_unet(fz.final, self.name, diffusers_resnet_eps=True)
        if unet.config.in_channels != c:
            raise ValueError(
                f"the UNet in {init} takes {unet.config.in_channels} channels, expected {c} (stage hires)"
            )
        grown = grow_conv_in(unet, c)
        self.grow_error = check_grown(unet, grown)
        return grown

    # ----- loss -----------------------------------------------------------------------------------------
    def conditioning(self, batch: dict, generator: torch.Generator) -> Conditioning:
        """Image token, noise-augmented first-frame latent, (fps - 1, bucket, cond_aug); dropout for CFG."""
        return i2v_conditioning(self.require_setup().vae, batch, generator, self.cond_aug,
                                self.p_drop_context, self.p_drop_latent)  # fmt: skip

    # ----- samples, evaluation, final -------------------------------------------------------------------
    def pipeline(self, unet: nn.Module):
        from minisvd.pipelines import ImageToVideo
        from minisvd.pipelines.defaults import CLIP_FEATURE_CONFIG, SVD_SCHEDULER_CONFIG

        fz = self.require_setup()
        return ImageToVideo(
            unet, fz.vae, fz.vision, CLIP_FEATURE_CONFIG, {**SVD_SCHEDULER_CONFIG, "sigma_max": 80.0}
        )

    @torch.no_grad()
    def sample(self, model: nn.Module, out_dir: Path, step: int) -> Path:
        """Held-out first frames at motion buckets 40 / 127 / 220: one row per clip (truth, then one
        column per bucket) -> out_dir/step_XXXXXX.gif, and the measured figures in step_XXXXXX.json."""
        import json

        from minisvd.export import save_gif
        from minisvd.pipelines.text_to_video import tile

        clips = held_out_clips(self.size, self.num_frames, 4, self.direction_rule)
        result = evaluate_i2v(self.pipeline(model), clips, steps=self.sample_steps, keep_videos=True)
        videos = result.pop("videos")
        path = out_dir / f"step_{step:06d}.gif"
        save_gif(tile(videos, ncol=1 + len(result["buckets"])), path, fps=4)
        (out_dir / f"step_{step:06d}.json").write_text(json.dumps(result, indent=2) + "\n")
        return path

    def save_final(self, model: nn.Module, ema: nn.Module | None, out_dir: Path) -> Path:
        """The SVD diffusers layout, final/clip carried, final/stage.json."""
        import json

        from minisvd.train.stages.chain import carry

        fz = self.require_setup()
        out_dir.mkdir(parents=True, exist_ok=True)
        self.pipeline(ema if ema is not None else model).save_pretrained(out_dir)
        carry(fz.final, out_dir, ("clip",))
        (out_dir / "stage.json").write_text(
            json.dumps({"stage": self.name, **self.fields()}, indent=2) + "\n"
        )
        return out_dir


# ----------------------------------------------------------------------------------------------------------
# Measuring an image-to-video model on held-out toy clips


def held_out_clips(
    size: int, num_frames: int, n: int, direction_rule: str = "any", seed: int = 10_000
) -> list:
    """`n` clips with a moving object from the toy world under another seed (never trained on)."""
    from minisvd.data import make_clip, world_preset

    world = world_preset("tiny", size=size, num_frames=num_frames, seed=seed)
    indices = direction_rule_indices(world, 4 * n, direction_rule)
    out = []
    for i in indices:
        c = make_clip(world, i)
        if c.direction != "static":
            out.append(c)
        if len(out) == n:
            break
    return out


@torch.no_grad()
def evaluate_i2v(pipe, clips: list, buckets=(40, 127, 220), steps: int = 16, noise_aug: float = 0.02,
                 guidance: tuple[float, float] = SAMPLE_GUIDANCE, seed: int = 0, keep_videos: bool = False) -> dict:  # fmt: skip
    """Image-to-video from each clip's first frame, against the truth (frames in [0, 1]):

    mse / mse_copy_first   MSE of frames 1..F-1 to the true clip, generated (at the clip's own fps and
                           motion bucket) vs copying the first frame
    mse_copy_first_vae     the same for the first frame through the VAE, repeated: a still video at the
                           VAE's quality (what a model that never moves would reach)
    change / change_truth  mean |frame t+1 - frame t| of the generated clips vs the true ones
    motion                 measured motion (curation score, px / frame) of the generated clips per bucket
    """
    from minisvd.data import measure_motion, motion_bucket_id

    H = clips[0].frames.shape[-1]
    sums = {
        k: []
        for k in ("mse", "mse_copy_first", "mse_copy_first_vae", "change", "change_truth", "motion_truth")
    }
    motion, videos = {b: [] for b in buckets}, []

    def generate(first, clip, bucket, k):
        return pipe(first, height=H, width=H, num_frames=clip.frames.shape[0], num_inference_steps=steps,
                    fps=clip.fps, motion_bucket_id=bucket, noise_aug_strength=noise_aug,
                    min_guidance_scale=guidance[0], max_guidance_scale=guidance[1],
                    generator=torch.Generator().manual_seed(seed + k))  # fmt: skip

    for k, clip in enumerate(clips):
        truth, first = clip.frames01, clip.frames01[0]  # (F, 3, H, W), (3, H, W) in [0, 1]
        v = generate(first, clip, int(motion_bucket_id(clip.motion, H)), k)  # the clip's own bucket
        sums["mse"].append(float(((v[1:] - truth[1:]) ** 2).mean()))
        sums["mse_copy_first"].append(float(((first[None] - truth[1:]) ** 2).mean()))
        still = pipe.decode(encode_latent(pipe.vae, first[None] * 2 - 1)[:, None].repeat(1, len(truth), 1, 1, 1)
                            * pipe.vae.config.scaling_factor)  # fmt: skip
        sums["mse_copy_first_vae"].append(float(((still[1:] - truth[1:]) ** 2).mean()))
        sums["change"].append(float((v[1:] - v[:-1]).abs().mean()))
        sums["change_truth"].append(float((truth[1:] - truth[:-1]).abs().mean()))
        sums["motion_truth"].append(float(clip.motion))
        videos.append(truth)
        for b in buckets:
            v = generate(first, clip, b, k)
            motion[b].append(measure_motion(v, clip.fps, value_range="0,1"))
            videos.append(v)
    out = {k: float(np.mean(v)) for k, v in sums.items()}
    out["buckets"] = list(buckets)
    out["motion"] = {str(b): float(np.mean(m)) for b, m in motion.items()}
    if keep_videos:
        out["videos"] = videos
    return out
