"""`python -m minisvd demo`: raw toy videos -> curation -> stage 0, I, II, III, image-to-video -> samples."""

from __future__ import annotations

import argparse
import sys


def register(sub) -> None:
    p = sub.add_parser(
        "demo",
        help="train a tiny SVD end to end on this machine and animate held-out images (the README's main job)",
        description="Makes a raw web-like toy video set, curates it with the real pipeline, trains stage 0 "
        "(VAE, CLIP), I (image), II (video), III (high resolution) and image-to-video with the tiny preset, "
        "then animates held-out first frames at three motion buckets. Writes video.mp4, video.gif, report.md, "
        "report.json and the model (diffusers layout) into --out. A second run resumes.",
    )
    p.add_argument("--out", default="demo", help="output folder (default demo/)")
    p.add_argument(
        "--fast", action="store_true", help="a few steps per stage: checks everything runs (~3 min)"
    )
    p.add_argument("--preset", default="tiny", choices=["tiny", "small"], help="model sizes (default tiny)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    from minisvd.demo import DemoConfig, run_demo
    from minisvd.train import NonFiniteLoss, TrainError

    try:
        run_demo(DemoConfig(out=args.out, preset=args.preset, fast=args.fast, seed=args.seed))
    except (TrainError, NonFiniteLoss, FileNotFoundError, ValueError) as e:
        print(
            f"error: {e}\n(what finished is kept in {args.out}; run the same command again to resume)",
            file=sys.stderr,
        )
        return 2
    return 0
