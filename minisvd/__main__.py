"""`python -m minisvd`: the command line. Each subcommand lives in its own small function."""

from __future__ import annotations

import argparse
import importlib
import platform
import sys

DEPENDENCIES = [
    # (import name, pip name, what minisvd uses it for)
    ("torch", "torch", "tensors, autograd, the models"),
    ("einops", "einops", "readable reshapes between video and image layouts"),
    ("tqdm", "tqdm", "progress bars"),
    ("matplotlib", "matplotlib", "plots in the notebooks"),
    ("safetensors", "safetensors", "safe weight files"),
    ("diffusers", "diffusers", "the reference implementation and weight layout"),
    ("transformers", "transformers", "CLIP image encoder of the real SVD"),
    ("cv2", "opencv-python", "optical flow and video decoding"),
    ("rapidocr_onnxruntime", "rapidocr-onnxruntime", "text detection (DBNet, offline)"),
    ("imageio", "imageio", "writing GIF/MP4"),
    ("av", "av", "PyAV: H.264 video files"),
]


def cmd_env(args: argparse.Namespace) -> int:
    """Print one OK/FAIL line per dependency, the device in use, and versions."""
    failed = 0
    print(f"python      {platform.python_version()} ({sys.executable})")
    for mod, pip_name, why in DEPENDENCIES:
        try:
            m = importlib.import_module(mod)
            version = getattr(m, "__version__", "?")
            print(f"OK    {pip_name:<22} {version:<14} {why}")
        except Exception as e:  # noqa: BLE001 - we report any import failure
            failed += 1
            print(
                f"FAIL  {pip_name:<22} {'-':<14} {why}: {type(e).__name__}: {e}  (fix: pip install {pip_name})"
            )
    from minisvd.device import pick_device

    dev = pick_device()
    print(f"device      {dev}")
    if dev.type == "cuda":
        import torch

        print(f"gpu         {torch.cuda.get_device_name(0)}")
    return 1 if failed else 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m minisvd",
        description="minisvd: Stable Video Diffusion, readable. Commands:",
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    e = sub.add_parser("env", help="check dependencies and print the device that will be used")
    e.set_defaults(func=cmd_env)
    # Other issues register their commands here (generate, curate, demo, ...).
    for name in ("minisvd.cli_generate", "minisvd.cli_curate"):
        try:
            importlib.import_module(name).register(sub)
        except ModuleNotFoundError as err:
            if err.name != name:
                raise
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
