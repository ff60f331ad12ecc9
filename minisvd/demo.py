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

import numpy as np
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
def held_out_clips(cfg: DemoConfig, size: int, num_frames: int) -> list:
    """First frames the model never trained on: the toy world with another seed."""
    from minisvd.data import make_clip, world_preset

    world = world_preset("tiny", size=size, num_frames=num_frames, seed=10_000 + cfg.seed)
    clips, i = [], 0
    while len(clips) < cfg.examples:  # moving objects only: a still clip shows nothing
        clip = make_clip(world, i)
        if clip.direction != "static":
            clips.append(clip)
        i += 1
    return clips


@torch.no_grad()
def sample_and_measure(cfg: DemoConfig, model_dir: Path, size: int) -> tuple[list[dict], torch.Tensor]:
    from minisvd.data import measure_motion, motion_bucket_id
    from minisvd.pipelines import load_pipeline

    pipe = load_pipeline(model_dir, match_diffusers=True)
    F = pipe.unet.config.num_frames
    rows, table = [], []
    for k, clip in enumerate(held_out_clips(cfg, size, F)):
        first = clip.frames01[0]  # (3, H, W) in [0, 1]
        row = [clip.frames01]  # the true clip, for comparison
        for bucket in cfg.buckets:
            g = torch.Generator().manual_seed(cfg.seed * 1000 + k)
            frames = pipe(first, height=size, width=size, num_frames=F, fps=clip.fps, motion_bucket_id=bucket,
                          num_inference_steps=cfg.sample_steps, generator=g)  # fmt: skip
            motion = measure_motion(frames, clip.fps)
            table.append({"example": k, "caption": clip.caption, "fps": clip.fps, "motion_bucket_id": bucket,
                          "measured_motion": motion, "measured_bucket": int(motion_bucket_id(motion, size)),
                          "mse_to_truth": float(((frames[1:] - clip.frames01[1:]) ** 2).mean()),
                          "mse_copy_first": float(((first[None] - clip.frames01[1:]) ** 2).mean())})  # fmt: skip
            row.append(frames)
        rows.append(torch.cat(row, dim=3))  # (F, 3, H, W * (1 + buckets)): truth | bucket 1 | bucket 2 | ...
    return table, torch.cat(rows, dim=2)  # examples stacked vertically


def motion_summary(table: list[dict], buckets: tuple[int, ...]) -> dict:
    """Mean measured motion per requested bucket, and whether it rises with the bucket."""
    means = {
        b: float(np.mean([r["measured_motion"] for r in table if r["motion_bucket_id"] == b]))
        for b in buckets
    }
    rising = all(means[a] < means[b] for a, b in zip(buckets, buckets[1:]))
    return {"mean_motion_per_bucket": means, "motion_rises_with_bucket": rising}


def write_report(cfg: DemoConfig, stages: dict, table: list[dict], summary: dict) -> None:
    report = {"config": {k: v for k, v in asdict(cfg).items() if k != "timings"} | {"out": str(cfg.out)},
              "timings_s": cfg.timings, "stages": stages, "samples": table, "motion": summary}  # fmt: skip
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
    lines += ["", f"Motion rises with the bucket: **{summary['motion_rises_with_bucket']}**.", ""]
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
    table, video = sample_and_measure(cfg, model_dir, size)
    cfg.timings["sampling"] = time.time() - t
    save_mp4(video, cfg.out / "video.mp4", fps=4)
    save_gif(video, cfg.out / "video.gif", fps=4)
    if (cfg.out / "model").exists():
        shutil.rmtree(cfg.out / "model")
    shutil.copytree(model_dir, cfg.out / "model")
    summary = motion_summary(table, cfg.buckets)
    write_report(cfg, stages, table, summary)
    log(f"done in {(time.time() - t0) / 60:.1f} min: {cfg.out / 'video.gif'}, {cfg.out / 'report.md'}, "
        f"the model in {cfg.out / 'model'} (diffusers layout)")  # fmt: skip
    return {"stages": stages, "samples": table, "motion": summary}
