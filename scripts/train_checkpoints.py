"""Train the course's shipped tiny checkpoints with our own `python -m minisvd train` command, stage by stage.

    python scripts/train_checkpoints.py --out runs/shipped --scale 4 [--device cuda]

It makes the raw toy set, curates it, then runs `python -m minisvd train STAGE ...` for every stage of the
chain (vae -> clip -> image -> video -> hires -> i2v), each `--scale` times the stage's default steps, and
packs each stage's final/ folder into `checkpoints/tiny/<stage>/` (its own parts, fp16: `minisvd.train.shipped`;
`minisvd.course.shipped_checkpoint` unpacks them) with MANIFEST.json recording the exact
commands, the git commit, the device and the times. Notebooks load these to show quality without the wait.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True
        )
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def device_name(device: str | None) -> str:
    import torch

    if (device or "").startswith("cuda") or (device is None and torch.cuda.is_available()):
        return torch.cuda.get_device_name(0)
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/shipped", help="run folders (default runs/shipped)")
    p.add_argument("--ship", default=str(REPO / "checkpoints" / "tiny"), help="where the final folders go")
    p.add_argument("--scale", type=float, default=4.0, help="times each stage's default steps (default 4)")
    p.add_argument("--batch-scale", type=int, default=1, help="times each stage's default batch (GPU: 4)")
    p.add_argument("--raw-videos", type=int, default=48)
    p.add_argument("--workers", type=int, default=2, help="curation processes")
    p.add_argument("--device", default=None)
    p.add_argument("--stages", default=None, help="comma list (default: the whole chain)")
    args = p.parse_args()

    from minisvd.curation.curate import CurateConfig, curate_folder
    from minisvd.data import write_raw_set
    from minisvd.train import get_stage
    from minisvd.train.shipped import pack
    from minisvd.train.stages.chain import ORDER

    out, ship = Path(args.out), Path(args.ship)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    raw, curated = out / "raw", out / "curated"
    if not (raw / "manifest.json").exists():
        write_raw_set(raw, n_videos=args.raw_videos, seed=0)
    curate_folder(raw, curated, CurateConfig(workers=args.workers), progress=False)
    timings = {"raw + curate": round(time.time() - t0, 1)}

    stages = args.stages.split(",") if args.stages else list(ORDER)
    commands, init = {}, None
    for name in ORDER:
        run = out / name
        if name in stages:
            stage = get_stage(name, "tiny")
            config = stage.default_config()
            cmd = [sys.executable, "-m", "minisvd", "train", name, "--preset", "tiny", "--out", str(run),
                   "--steps", str(int(config.steps * args.scale)),
                   "--batch-size", str(config.batch_size * args.batch_scale)]  # fmt: skip
            if init is not None:
                cmd += ["--init", str(init)]
            if getattr(stage, "uses_curated_data", False):
                cmd += ["--data", str(curated)]
            if args.device:
                cmd += ["--device", args.device]
            if (run / "last").exists():
                cmd += ["--resume"]
            t = time.time()
            print("$", " ".join(cmd), flush=True)
            subprocess.run(cmd, check=True, cwd=REPO)
            timings[name] = round(time.time() - t, 1)
            commands[name] = "python " + " ".join(cmd[1:])
            pack(run / "final", ship / name, name)  # own parts only, fp16 (minisvd/train/shipped.py)
        init = run
    manifest = {
        "what": "tiny checkpoints of every stage, trained by `python -m minisvd train` (scripts/train_checkpoints.py)",
        "commit": git_commit(),
        "device": device_name(args.device),
        "torch": __import__("torch").__version__,
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "commands": commands,
        "seconds": timings,
        "total_seconds": round(time.time() - t0, 1),
    }
    ship.mkdir(parents=True, exist_ok=True)
    (ship / "MANIFEST.json").write_text(json.dumps(manifest, indent=2) + "\n")
    size = sum(f.stat().st_size for f in ship.rglob("*") if f.is_file())
    print(f"shipped {ship}: {size / 1e6:.1f} MB, {manifest['total_seconds']:.0f} s on {manifest['device']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
