"""`python -m minisvd demo`: the whole of SVD in miniature, on a laptop CPU, end to end.

The paper's recipe (Blattmann et al. 2023, Sec. 3-4), each step run by the package's own code:

    1. a raw, web-like video set (toy world, with cuts, dissolves, static and text-covered scenes)
    2. data curation (Sec. 3.1): cut detection, motion, text, scores, captions, quantile filters
    3. stage 0: the frozen parts (a tiny video VAE, a tiny CLIP), then the UNet stages
       I image pretraining -> II video pretraining on the curated clips -> III high-resolution fine-tune
       -> image-to-video fine-tune (the SVD model)
    4. image-to-video samples from held-out first frames at three motion buckets, the measured motion of
       each, and the model saved in the diffusers layout

Everything a step finishes is kept in `--out`: a second run skips finished stages and resumes an
interrupted one from its last checkpoint.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

BUCKETS = (40, 127, 220)  # low, default (SVD's 127), high motion


@dataclass
class DemoConfig:
    out: Path = Path("demo")
    preset: str = "tiny"
    fast: bool = False  # a few steps per stage: checks that everything runs (about 3 minutes), no quality
    seed: int = 0
    raw_videos: int = 24  # web-like source videos (fast: 6)
    examples: int = 4  # held-out first frames to animate (fast: 2)
    buckets: tuple[int, ...] = BUCKETS
    sample_steps: int = 25  # Euler steps per sample (fast: 8)
    fast_step_fraction: float = 0.1  # --fast: this fraction of each stage's default steps (at least 4)
    timings: dict = field(default_factory=dict)

    def __post_init__(self):
        self.out = Path(self.out)
        if self.fast:
            self.raw_videos, self.examples, self.sample_steps = 6, 2, 8


def log(message: str) -> None:
    print(f"[demo {time.strftime('%H:%M:%S')}] {message}", flush=True)


# ----- 1-2: raw videos and curation ---------------------------------------------------------------------------
def make_raw_and_curate(cfg: DemoConfig) -> Path:
    from minisvd.curation.curate import CurateConfig, curate_folder
    from minisvd.curation.filtering import STANDIN_FILTERS, apply_filters, format_funnel
    from minisvd.data import write_raw_set

    raw, curated = cfg.out / "raw", cfg.out / "curated"
    t = time.time()
    if not (raw / "manifest.json").exists():
        log(f"writing {cfg.raw_videos} raw web-like videos into {raw}")
        write_raw_set(raw, n_videos=cfg.raw_videos, seed=cfg.seed, progress=True)
    log(f"curating {raw} -> {curated} (the real pipeline of Sec. 3.1; resumes if interrupted)")
    report = curate_folder(raw, curated, CurateConfig(workers=2))
    _, funnel = apply_filters(report.clips, STANDIN_FILTERS)
    print(format_funnel(funnel))
    cfg.timings["raw + curate"] = time.time() - t
    return curated


# ----- 3: the stages ----------------------------------------------------------------------------------------
def shrink_data(stage, fraction: float, least: int = 64) -> None:
    """--fast: render and encode data in proportion to the fewer steps (at least `least` items), and let
    the VAE's image phase end in time for its temporal phase to run too."""
    if stage.name == "vae":
        stage.recipe["image_samples"] = int(stage.recipe["image_samples"] * fraction)
    if stage.name == "clip":
        stage.num_frames = max(least * 4, int(stage.num_frames * fraction))  # training frames
    for attr in ("num_clips", "num_images"):
        if hasattr(stage, attr):
            setattr(stage, attr, max(least, int(getattr(stage, attr) * fraction)))


def train_chain(cfg: DemoConfig, curated: Path) -> dict[str, dict]:
    """Train every stage in order, each from the previous one's final/ folder; skip the finished ones."""
    from minisvd.train import get_stage, train
    from minisvd.train.checkpoint import peek_state
    from minisvd.train.stages.chain import ORDER

    results, init = {}, None
    for name in ORDER:
        run = cfg.out / "runs" / name
        stage = get_stage(name, cfg.preset)
        data = curated if getattr(stage, "uses_curated_data", False) else None
        if (run / "final").is_dir() and (run / "summary.json").exists():
            log(f"stage {name}: finished earlier, kept ({run / 'final'})")
            results[name] = json.loads((run / "summary.json").read_text())
        else:
            config = stage.default_config(seed=cfg.seed)
            if cfg.fast:
                config = config.replace(steps=max(4, int(config.steps * cfg.fast_step_fraction)))
                shrink_data(stage, cfg.fast_step_fraction)
            resume = peek_state(run) is not None
            log(f"stage {name}: {config.steps} steps{' (resuming)' if resume else ''} -> {run}")
            summary = train(stage, config, run, init=init, data=data, resume=resume)
            summary = {k: v for k, v in summary.items() if isinstance(v, (int, float, str, type(None)))}
            (run / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
            results[name] = summary
        cfg.timings[f"stage {name}"] = results[name].get("elapsed_s")
        init = run
    return results


# ----- 4: samples, measured motion, the video ---------------------------------------------------------------
@torch.no_grad()
def sample_and_measure(cfg: DemoConfig, model_dir: Path, size: int) -> tuple[dict, torch.Tensor]:
    """Animate held-out first frames (the toy world under another seed) at each motion bucket and measure the
    result against the truth (`evaluate_i2v`); the video grid: per example, truth | one column per bucket."""
    from minisvd.pipelines import load_pipeline
    from minisvd.pipelines.text_to_video import tile
    from minisvd.train.stages.i2v import evaluate_i2v, held_out_clips

    pipe = load_pipeline(model_dir, match_diffusers=True)
    clips = held_out_clips(size, pipe.unet.config.num_frames, cfg.examples, seed=10_000 + cfg.seed)
    result = evaluate_i2v(pipe, clips, buckets=cfg.buckets, steps=cfg.sample_steps, seed=cfg.seed,
                          keep_videos=True)  # fmt: skip
    videos = result.pop("videos")  # per example: truth, then one per bucket, (F, 3, H, W) each
    return result, tile(videos, ncol=1 + len(cfg.buckets))  # (F, 3, H * examples, W * (1 + buckets))


def motion_summary(result: dict, buckets: tuple[int, ...]) -> dict:
    """Mean measured motion per requested bucket, and whether it rises with the bucket."""
    means = {b: result["motion"][str(b)] for b in buckets}
    rising = all(means[a] < means[b] for a, b in zip(buckets, buckets[1:]))
    return {"mean_motion_per_bucket": means, "motion_rises_with_bucket": rising}


def write_report(cfg: DemoConfig, stages: dict, result: dict, summary: dict) -> None:
    report = {"config": {k: v for k, v in asdict(cfg).items() if k != "timings"} | {"out": str(cfg.out)},
              "timings_s": cfg.timings, "stages": stages, "samples": result, "motion": summary}  # fmt: skip
    (cfg.out / "report.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    lines = ["# minisvd demo report", "", f"Total time: {sum(v or 0 for v in cfg.timings.values()) / 60:.1f} min"
             f"{' (--fast: a smoke run, no quality expected)' if cfg.fast else ''}.", "",
             "| stage | steps | time (s) | final loss | steps/s |", "|---|---|---|---|---|"]  # fmt: skip
    for name, s in stages.items():
        loss = s.get("final_loss")
        lines.append(f"| {name} | {s.get('step')} | {s.get('elapsed_s', 0):.0f} | "
                     f"{loss if loss is None else f'{loss:.4f}'} | {s.get('steps_per_s') or 0:.2f} |")  # fmt: skip
    lines += ["", "Image-to-video from held-out first frames (`video.gif`: truth, then one column per bucket):", "",
              "| motion bucket | mean measured motion (px/frame) |", "|---|---|"]  # fmt: skip
    for b, m in summary["mean_motion_per_bucket"].items():
        lines.append(f"| {b} | {m:.3f} |")
    lines += ["", f"Motion rises with the bucket: **{summary['motion_rises_with_bucket']}**. The true clips move "
              f"{result['motion_truth']:.3f} px/frame. At each clip's own bucket: MSE to the true frames "
              f"{result['mse']:.4f} (copying the first frame: {result['mse_copy_first']:.4f}; the first frame "
              f"through the VAE, repeated: {result['mse_copy_first_vae']:.4f}); mean frame-to-frame change "
              f"{result['change']:.4f} (truth {result['change_truth']:.4f}).", ""]  # fmt: skip
    (cfg.out / "report.md").write_text("\n".join(lines))


def run_demo(cfg: DemoConfig) -> dict:
    from minisvd.export import save_gif, save_mp4

    t0 = time.time()
    cfg.out.mkdir(parents=True, exist_ok=True)
    curated = make_raw_and_curate(cfg)
    stages = train_chain(cfg, curated)
    model_dir = cfg.out / "runs" / "i2v" / "final"
    t = time.time()
    log(
        "sampling image-to-video from held-out first frames at motion buckets "
        + ", ".join(map(str, cfg.buckets))
    )
    from minisvd.train import get_stage

    size = getattr(get_stage("i2v", cfg.preset), "size", 32)  # the frame size the i2v stage trained at
    result, video = sample_and_measure(cfg, model_dir, size)
    cfg.timings["sampling"] = time.time() - t
    save_mp4(video, cfg.out / "video.mp4", fps=4)
    save_gif(video, cfg.out / "video.gif", fps=4)
    if (cfg.out / "model").exists():
        shutil.rmtree(cfg.out / "model")
    shutil.copytree(model_dir, cfg.out / "model")
    summary = motion_summary(result, cfg.buckets)
    write_report(cfg, stages, result, summary)
    log(f"done in {(time.time() - t0) / 60:.1f} min: {cfg.out / 'video.gif'}, {cfg.out / 'report.md'}, "
        f"the model in {cfg.out / 'model'} (diffusers layout)")  # fmt: skip
    return {"stages": stages, "samples": result, "motion": summary}
