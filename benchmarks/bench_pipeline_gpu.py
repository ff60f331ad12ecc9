"""GPU benchmark at the real sizes: peak memory and time per memory setting, minisvd and diffusers.

    python benchmarks/bench_pipeline_gpu.py                      # random full-size weights (timing only)
    python benchmarks/bench_pipeline_gpu.py --weights PATH       # real weights (diffusers folder)
    python benchmarks/bench_pipeline_gpu.py --quick              # 14 frames only, 2 steps, no diffusers

Random full-size weights are fine for timing and memory: the work does not depend on the values. Settings:
fp32 / fp16 / bf16, whole or chunked VAE decoding, with or without CPU offload; 14 frames (SVD) and 25 frames
(SVD-XT) at 576x1024. Each row: median seconds per video after one warm-up, and torch.cuda.max_memory_allocated
during the run. Prints a markdown table for docs/pretrained.md. Needs a CUDA GPU; about 10 minutes on an H100
(unmeasured so far: no GPU was available when this was written).
"""

from __future__ import annotations

import argparse
import gc
import tempfile
import time

import torch


def random_full_size_pipeline(num_frames: int, dtype: torch.dtype):
    """SVD-sized ImageToVideo with random weights, built directly on the GPU (no slow CPU init), cast to `dtype`."""
    from transformers import CLIPVisionModelWithProjection

    from minisvd.models.clip import svd_clip_vision_config
    from minisvd.models.unet import UNet, UNetConfig
    from minisvd.models.vae import VAEConfig, VideoVAE
    from minisvd.pipelines.image_to_video import ImageToVideo

    with torch.device("cuda"):
        unet = UNet(UNetConfig.svd_xt() if num_frames == 25 else UNetConfig.svd())
        vae = VideoVAE(VAEConfig.svd())
        clip = CLIPVisionModelWithProjection(svd_clip_vision_config())  # ViT-H/14 as the real image_encoder/
    pipe = ImageToVideo(unet.eval(), vae.eval(), clip.eval())
    return pipe.to("cuda", dtype=dtype)


def measure(run, repeats: int) -> tuple[float, float]:
    run()  # warm-up (cuDNN autotuning, allocator)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        run()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2], torch.cuda.max_memory_allocated() / 2**30


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--weights", default=None, help="diffusers folder of real SVD weights (default: random)")
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--quick", action="store_true", help="14 frames, 2 steps, a few settings, no diffusers")
    p.add_argument("--no-diffusers", action="store_true")
    args = p.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench_pipeline_gpu.py needs a CUDA GPU; on CPU use benchmarks/bench_pipeline.py")
    from PIL import Image

    steps = 2 if args.quick else args.steps
    image = Image.new("RGB", (1024, 576), (180, 120, 60))
    frames_list = [14] if args.quick else [14, 25]
    settings = [  # (dtype, decode_chunk_size, cpu offload)
        (torch.float16, None, False),
        (torch.float16, 4, False),
        (torch.float16, 4, True),
        (torch.bfloat16, 4, False),
    ]
    if not args.quick:
        settings.insert(0, (torch.float32, 4, False))
    print(
        f"GPU: {torch.cuda.get_device_name(0)}; {steps} steps, 576x1024, median of {args.repeats} after a warm-up"
    )
    print("| frames | pipeline | dtype | decode chunk | CPU offload | s / video | peak GPU GiB |")
    print("|---|---|---|---|---|---|---|")
    for num_frames in frames_list:
        for dtype, chunk, offload in settings:
            if args.weights:
                from minisvd.pipelines import load_pipeline

                pipe = load_pipeline(
                    args.weights, dtype=dtype, variant="fp16" if dtype == torch.float16 else None
                )
            else:
                pipe = random_full_size_pipeline(num_frames, dtype)
            pipe.enable_cpu_offload("cuda") if offload else pipe.to("cuda")
            gc.collect()
            torch.cuda.empty_cache()

            def run(pipe=pipe, chunk=chunk, num_frames=num_frames):
                return pipe(
                    image,
                    height=576,
                    width=1024,
                    num_frames=num_frames,
                    num_inference_steps=steps,
                    decode_chunk_size=chunk,
                    generator=torch.Generator().manual_seed(0),
                )

            try:
                t, mem = measure(run, args.repeats)
                print(
                    f"| {num_frames} | minisvd | {str(dtype)[6:]} | {chunk or 'all'} | {offload} | {t:.1f} | {mem:.1f} |"
                )
            except torch.cuda.OutOfMemoryError:
                print(
                    f"| {num_frames} | minisvd | {str(dtype)[6:]} | {chunk or 'all'} | {offload} | OOM | - |"
                )

            if not (args.quick or args.no_diffusers) and dtype == torch.float16 and chunk == 4:
                from diffusers import StableVideoDiffusionPipeline

                with tempfile.TemporaryDirectory() as tmp:
                    pipe.to("cpu").save_pretrained(tmp)
                    del pipe
                    ref = StableVideoDiffusionPipeline.from_pretrained(tmp, torch_dtype=torch.float16)
                ref.set_progress_bar_config(disable=True)
                try:
                    ref.enable_model_cpu_offload() if offload else ref.to("cuda")
                except Exception as e:  # noqa: BLE001 - diffusers' offload needs `accelerate`
                    print(f"| {num_frames} | diffusers | float16 | 4 | {offload} | skipped: {e} | - |")
                    continue

                def run_ref(ref=ref, num_frames=num_frames):
                    return ref(
                        image,
                        height=576,
                        width=1024,
                        num_frames=num_frames,
                        num_inference_steps=steps,
                        decode_chunk_size=4,
                        generator=torch.Generator().manual_seed(0),
                        output_type="pt",
                    )

                try:
                    t, mem = measure(run_ref, args.repeats)
                    print(f"| {num_frames} | diffusers | float16 | 4 | {offload} | {t:.1f} | {mem:.1f} |")
                except torch.cuda.OutOfMemoryError:
                    print(f"| {num_frames} | diffusers | float16 | 4 | {offload} | OOM | - |")
                del ref
            else:
                del pipe
            gc.collect()
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
