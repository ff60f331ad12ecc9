"""`python -m minisvd generate IMAGE --weights PATH --out video.mp4`: image-to-video from the command line."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from minisvd.pipelines.defaults import SAMPLING as D


def register(sub) -> None:
    p = sub.add_parser(
        "generate",
        help="image-to-video with SVD weights (diffusers folder, cached repo id, or svd[_xt].safetensors)",
        description="Generate a short video from one image with Stable Video Diffusion. Example:\n"
        "  python -m minisvd generate cat.png --weights svd-weights --variant fp16 --dtype fp16 --out cat.mp4",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("image", help="input image (PNG/JPEG/...), the first frame")
    p.add_argument(
        "--weights", required=True, help="diffusers folder, HF repo id in the local cache, or original file"
    )
    p.add_argument("--image-encoder", default=None, help="CLIP folder, needed with an original single file")
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
    p.set_defaults(func=cmd_generate)


def cmd_generate(args: argparse.Namespace) -> int:
    import torch

    from minisvd.device import pick_device
    from minisvd.models.unet import nearest_multiple

    # cheap checks first: a bad size or image should not wait for gigabytes of weights
    for name in ("height", "width"):
        v = getattr(args, name)
        if v % 64:
            print(
                f"error: --{name} {v} is not a multiple of 64; nearest valid: {nearest_multiple(v)}",
                file=sys.stderr,
            )
            return 2
    try:
        from PIL import Image

        image = Image.open(args.image)
        image.load()
        image = image.convert("RGB")
    except FileNotFoundError:
        print(f"error: image not found: {args.image}", file=sys.stderr)
        return 2
    except Exception as e:  # noqa: BLE001 - PIL raises many types for unreadable files
        print(f"error: cannot read image {args.image}: {type(e).__name__}: {e}", file=sys.stderr)
        return 2
    if Path(args.out).suffix.lower() not in (".mp4", ".gif", ".mov", ".mkv"):
        print(f"error: --out must end in .mp4 or .gif, got {args.out}", file=sys.stderr)
        return 2

    from minisvd.export import save_video
    from minisvd.pipelines.image_to_video import load_pipeline

    device = pick_device(args.device)
    dtype = args.dtype if args.dtype != "auto" else ("fp16" if device.type == "cuda" else "fp32")
    try:
        pipe = load_pipeline(
            args.weights,
            dtype=dtype,
            variant=args.variant,
            image_encoder=args.image_encoder,
            match_diffusers=args.match_diffusers,
        )
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
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
