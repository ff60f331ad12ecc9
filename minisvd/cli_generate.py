"""`python -m minisvd generate IMAGE --weights PATH --out video.mp4`: image-to-video from the command line."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


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
    p.add_argument("--height", type=int, default=576, help="multiple of 64 (default 576)")
    p.add_argument("--width", type=int, default=1024, help="multiple of 64 (default 1024)")
    p.add_argument("--frames", type=int, default=None, help="number of frames (default: 14 SVD, 25 SVD-XT)")
    p.add_argument("--steps", type=int, default=25, help="Euler steps (default 25)")
    p.add_argument(
        "--fps", type=int, default=7, help="frame rate; conditions the model with fps-1 (default 7)"
    )
    p.add_argument("--motion-bucket", type=int, default=127, help="more motion when higher (default 127)")
    p.add_argument(
        "--min-guidance", type=float, default=1.0, help="guidance of the first frame (default 1.0)"
    )
    p.add_argument("--max-guidance", type=float, default=3.0, help="guidance of the last frame (default 3.0)")
    p.add_argument("--noise-aug", type=float, default=0.02, help="conditioning augmentation (default 0.02)")
    p.add_argument("--decode-chunk", type=int, default=None, help="frames decoded at once (less memory)")
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

    from minisvd.clip_image import nearest_multiple
    from minisvd.device import pick_device

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
    from minisvd.pretrained import load_pipeline

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
