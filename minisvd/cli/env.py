"""`python -m minisvd env`: one OK/FAIL line per dependency, and the device that will be used."""

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


def register(sub) -> None:
    e = sub.add_parser("env", help="check dependencies and print the device that will be used")
    e.set_defaults(func=cmd_env)
