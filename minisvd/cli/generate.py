"""`python -m minisvd generate IMAGE --weights PATH --out video.mp4`: image-to-video from the command line."""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from pathlib import Path

from minisvd.pipelines.defaults import SAMPLING as D

EXIT_STATUS = """exit status:
  0  video written
  1  generation failed (one line; --debug shows the traceback)
  2  a setting that cannot work, or the image or weights not found: checked before anything loads
  3  broken weight files (truncated download, invalid config.json, keys that do not fit): get them again"""

SIZE_MULTIPLE = 64  # SVD's VAE (8) x UNet (8) downsampling: H and W are multiples of this
MIN_IMAGE_SIDE = 8  # the input image must be at least the VAE's downsampling factor on each side

# sampling parameter of ImageToVideo.__call__ -> the flag that sets it (for the error messages)
FLAGS = {
    "height": "--height",
    "width": "--width",
    "num_frames": "--frames",
    "num_inference_steps": "--steps",
    "fps": "--fps",
    "decode_chunk_size": "--decode-chunk",
    "noise_aug_strength": "--noise-aug",
}


def register(sub) -> None:
    p = sub.add_parser(
        "generate",
        help="image-to-video with SVD weights (diffusers folder, cached repo id, or svd[_xt].safetensors)",
        description="Generate a short video from one image with Stable Video Diffusion. Example:\n"
        "  python -m minisvd generate cat.png --weights svd-weights --variant fp16 --dtype fp16 --out cat.mp4",
        epilog=EXIT_STATUS,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("image", help="input image (PNG/JPEG/...), the first frame")
    p.add_argument(
        "--weights",
        default=None,
        help="diffusers folder, HF repo id in the local cache, or original file "
        "(default: $MINISVD_SVD_WEIGHTS, else SVD or SVD-XT in the HF cache)",
    )
    p.add_argument(
        "--image-encoder",
        default=None,
        help="a transformers CLIP folder: overrides the image conditioner of an original single file",
    )
    p.add_argument("--variant", default=None, help="weight variant, e.g. fp16 (reads *.fp16.safetensors)")
    p.add_argument("--out", default="video.mp4", help="output .mp4 or .gif (default video.mp4)")
    p.add_argument("--height", type=int, default=D.height, help=f"multiple of 64 (default {D.height})")
    p.add_argument("--width", type=int, default=D.width, help=f"multiple of 64 (default {D.width})")
    p.add_argument("--frames", type=int, default=None, help="number of frames (default: 14 SVD, 25 SVD-XT)")
    p.add_argument(
        "--steps",
        type=int,
        default=D.num_inference_steps,
        help=f"Euler steps (default {D.num_inference_steps})",
    )
    p.add_argument(
        "--fps",
        type=int,
        default=D.fps,
        help=f"frame rate; conditions the model with fps-1 (default {D.fps})",
    )
    p.add_argument(
        "--motion-bucket",
        type=int,
        default=D.motion_bucket_id,
        help=f"more motion when higher (default {D.motion_bucket_id})",
    )
    p.add_argument(
        "--min-guidance",
        type=float,
        default=D.min_guidance_scale,
        help=f"guidance of the first frame (default {D.min_guidance_scale})",
    )
    p.add_argument(
        "--max-guidance",
        type=float,
        default=D.max_guidance_scale,
        help=f"guidance of the last frame (default {D.max_guidance_scale})",
    )
    p.add_argument(
        "--noise-aug",
        type=float,
        default=D.noise_aug_strength,
        help=f"conditioning augmentation (default {D.noise_aug_strength})",
    )
    p.add_argument(
        "--decode-chunk",
        type=int,
        default=D.decode_chunk_size,
        help="frames decoded at once (default all; fewer: less memory)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None, help="cuda, mps or cpu (default: best available)")
    p.add_argument(
        "--dtype",
        default="auto",
        choices=["auto", "fp32", "fp16", "bf16"],
        help="model dtype (auto: fp16 on cuda, fp32 elsewhere)",
    )
    p.add_argument(
        "--offload", action="store_true", help="CPU offload: each model on the GPU only while it runs"
    )
    p.add_argument(
        "--match-diffusers",
        action="store_true",
        help="use diffusers' GroupNorm eps (1e-6) instead of the original code's (1e-5)",
    )
    p.add_argument("--debug", action="store_true", help="print the traceback of an error")
    p.set_defaults(func=cmd_generate)


class Failure(Exception):
    """A problem reported as `error: <message>` with its exit status (EXIT_STATUS), no traceback."""

    def __init__(self, message: str, code: int):
        super().__init__(message)
        self.code = code


def cmd_generate(args: argparse.Namespace) -> int:
    try:
        return generate(args)
    except Exception as e:  # noqa: BLE001 - every error is one line; --debug adds the traceback
        if args.debug:
            traceback.print_exc()
        if isinstance(e, Failure):
            message, code = str(e), e.code
        else:
            first = (str(e).splitlines() or [""])[0]
            message = f"{type(e).__name__}: {first}" + (
                "" if args.debug else " (--debug shows the traceback)"
            )
            if "out of memory" in first.lower():
                message += "; try --offload, --dtype fp16, --decode-chunk 1, or fewer/smaller frames"
            code = 1
        print(f"error: {message}", file=sys.stderr)
        return code


def generate(args: argparse.Namespace) -> int:
    import torch

    from minisvd.pipelines.image_to_video import sampling_problems
    from minisvd.pretrained.load import locate_weights

    # 1. the settings, before anything loads: a bad one should not wait for gigabytes of weights
    problems = sampling_problems(
        height=args.height,
        width=args.width,
        num_frames=args.frames,
        num_inference_steps=args.steps,
        fps=args.fps,
        decode_chunk_size=args.decode_chunk,
        noise_aug_strength=args.noise_aug,
        size_multiple=SIZE_MULTIPLE,
    )
    if problems:
        raise Failure("; ".join(f"{FLAGS[name]} {why}" for name, why in problems), 2)
    if Path(args.out).suffix.lower() not in (".mp4", ".gif", ".mov", ".mkv"):
        raise Failure(f"--out must end in .mp4 or .gif, got {args.out}", 2)
    if args.image_encoder is not None and not Path(args.image_encoder).is_dir():
        raise Failure(f"--image-encoder {args.image_encoder} is not a folder", 2)
    device = check_device(args.device)
    # 2. the image, then where the weights are
    image = read_image(args.image)
    try:
        weights = locate_weights(args.weights)
    except FileNotFoundError as e:
        raise Failure(str(e), 2) from e

    from minisvd.export import save_video
    from minisvd.pipelines.image_to_video import load_pipeline

    dtype = args.dtype if args.dtype != "auto" else ("fp16" if device.type == "cuda" else "fp32")
    try:
        pipe = load_pipeline(
            weights,
            dtype=dtype,
            variant=args.variant,
            image_encoder=args.image_encoder,
            match_diffusers=args.match_diffusers,
        )
    except (ValueError, OSError) as e:  # names the broken file (minisvd.pretrained.load)
        raise Failure(str(e), 3) from e
    if args.offload:
        pipe.enable_cpu_offload(device)
    else:
        pipe.to(device)
    generator = torch.Generator().manual_seed(args.seed)  # CPU generator: the same video on every device
    frames = pipe(
        image,
        height=args.height,
        width=args.width,
        num_frames=args.frames,
        num_inference_steps=args.steps,
        min_guidance_scale=args.min_guidance,
        max_guidance_scale=args.max_guidance,
        fps=args.fps,
        motion_bucket_id=args.motion_bucket,
        noise_aug_strength=args.noise_aug,
        decode_chunk_size=args.decode_chunk,
        generator=generator,
        progress=True,
    )
    out = save_video(frames, args.out, fps=args.fps)
    print(f"wrote {out} ({frames.shape[0]} frames, {frames.shape[3]}x{frames.shape[2]}, {args.fps} fps)")
    return 0


def check_device(name: str | None):
    """The torch.device of --device (or $MINISVD_DEVICE, else the best available), if this machine has it."""
    import torch

    from minisvd.device import pick_device

    flag = f"--device {name}" if name else f"MINISVD_DEVICE={os.environ.get('MINISVD_DEVICE')}"
    try:
        device = pick_device(name)
    except RuntimeError:
        raise Failure(f"{flag} is not a device: use cuda, cuda:N, mps or cpu", 2) from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            why = "this torch build has no CUDA" if torch.version.cuda is None else "no CUDA GPU is visible"
            raise Failure(f"{flag}: {why}; use --device cpu", 2)
        n = torch.cuda.device_count()
        if (device.index or 0) >= n:
            raise Failure(f"{flag}: this machine has {n} CUDA device(s), cuda:0 to cuda:{n - 1}", 2)
    elif device.type == "mps":
        if not (getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()):
            raise Failure(f"{flag}: MPS is not available here; use --device cpu", 2)
    elif device.type != "cpu":
        raise Failure(f"{flag}: minisvd runs on cuda, mps or cpu", 2)
    return device


def read_image(path: str):
    """The input image as RGB, at least MIN_IMAGE_SIDE pixels on each side."""
    from PIL import Image

    from minisvd.pipelines.image_to_video import check_image_size

    try:
        with Image.open(path) as im:
            image = im.convert("RGB")
    except FileNotFoundError:
        raise Failure(f"image not found: {path}", 2) from None
    except Exception as e:  # noqa: BLE001 - PIL raises many types for unreadable files
        raise Failure(f"cannot read image {path}: {type(e).__name__}: {e}", 2) from e
    try:
        check_image_size(*image.size, MIN_IMAGE_SIDE)
    except ValueError as e:
        raise Failure(f"{path}: {e}", 2) from None
    return image
