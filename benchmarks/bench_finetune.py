"""Benchmark: GPU memory and speed of fine-tuning SVD (stage finetune) per trainable mode and memory option.

What one training step of `python -m minisvd train finetune` holds on the GPU, at 576x1024 (latents 4 x 72 x 128),
batch 1, 14 frames (SVD, `UNetConfig.svd()`) and 25 frames (SVD-XT, `UNetConfig.svd_xt()`), for each
`--trainable` mode (all / temporal / lora, `select_trainable` of minisvd/train/stages/finetune.py) and each
memory option (OPTIONS: gradient checkpointing, bf16 autocast with fp32 master weights, 8-bit AdamW). The loss
is the stage's own (`FinetuneStage.loss`: `edm.edm_loss` through `conditioned_network`, the conditioning frame
noise-augmented and encoded by the VAE of `VAEConfig.svd()` on the GPU, a (1, 1, 1024) CLIP token,
added_time_ids), weights random at the real size: nothing is downloaded.

Two modes:

    python benchmarks/bench_finetune.py                 # CPU: estimates on the meta device (~1.5 min)
    python benchmarks/bench_finetune.py --gpu --json gpu.json --compare   # CUDA: measured, the whole matrix
    python benchmarks/bench_finetune.py --gpu --models SVD --modes lora temporal --options bf16+ckpt

--gpu    builds the real-size UNet and VAE on the GPU, runs `--warmup` training steps (the optimizer states
         are allocated), then `--steps` timed steps after `torch.cuda.reset_peak_memory_stats()`: the peak is
         `torch.cuda.max_memory_allocated()` over the timed steps (weights, gradients, optimizer states,
         activations and every transient buffer; not the CUDA context, ~0.5 GiB), seconds per step their
         median (forward, backward, gradient clipping, optimizer step, as engine.py). A configuration that
         runs out of memory is recorded as OOM; 8-bit AdamW without bitsandbytes is skipped with a note.
         `--json` is rewritten after each configuration (a run cut short keeps what it measured);
         `--compare` adds this script's CPU estimate of each configuration (about a minute more).
default  no memory and no compute: the UNet and the VAE are built on the meta device. Parameters are counted
         per mode and their bytes computed (weights fp32, gradients fp32 of the trainable ones, AdamW's two
         fp32 moments, bitsandbytes' 8-bit AdamW: 2 bytes + one fp32 absmax per 256 values per moment for
         tensors of >= 4096 values, 8 bytes below). Activations: the bytes autograd saves for backward in one
         training forward (the stage's loss), summed by `torch.autograd.graph.saved_tensors_hooks` over
         distinct storages still held, parameters excluded (`SavedTensors`); with gradient checkpointing, plus
         the largest checkpointed layer's own saves, which the backward holds again while it recomputes that
         layer (`per_layer`). On the meta device, scaled_dot_product_attention would take its math path and
         save every (L x L) attention matrix; a GPU runs flash / memory-efficient attention, which saves q, k,
         v, the output and a float32 logsumexp: the count replaces SDPA by that (`FlashAttentionAccounting`)
         and reports what the math path's matrices would add on their own. bf16 autocast does not act on meta
         tensors: `EmulatedAutocast` applies CUDA autocast's cast policy (bf16 for linear / conv / matmul /
         SDPA, fp32 for the norms, per-use casts of frozen weights, one cached cast per trainable weight)
         above autograd. The counting is validated first on a tiny model on the CPU for real (`validate`):
         hook count vs the memory the real forward kept (profiler), meta vs CPU, emulated vs real (CPU)
         autocast, and the estimate vs the real peak of forward + backward.

Prints Markdown tables (`--save FILE` also writes them, `--json FILE` the numbers).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib.util
import json
import math
import statistics
import sys
import time
import weakref
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

HEIGHT, WIDTH = 576, 1024  # SVD's resolution: latents 72 x 128
MODELS = {"SVD": ("svd", 14), "SVD-XT": ("svd_xt", 25)}  # name -> UNetConfig preset, frames
MODES = ("all", "temporal", "lora")
OPTIONS = {  # name -> gradient checkpointing, bf16 autocast (fp32 master weights), optimizer
    "fp32": dict(ckpt=False, bf16=False, optimizer="adamw"),
    "fp32+ckpt": dict(ckpt=True, bf16=False, optimizer="adamw"),
    "bf16": dict(ckpt=False, bf16=True, optimizer="adamw"),
    "bf16+ckpt": dict(ckpt=True, bf16=True, optimizer="adamw"),
    "bf16+ckpt+8bit": dict(ckpt=True, bf16=True, optimizer="adamw8bit"),
}
GiB = 2**30
BUDGET_GIB = 24  # the goal: LoRA and temporal-only fine-tuning of SVD at 576x1024x14 on a 24 GB card
BNB_MIN_8BIT_SIZE, BNB_BLOCK = 4096, 256  # bitsandbytes' 8-bit optimizers: smaller tensors keep fp32 states


# ----------------------------------------------------------------------------------------------------------
# The models and one training batch, as stage finetune has them


def build(model: str, mode: str, rank: int, device: str | torch.device, vae_config=None, unet_config=None):
    """(UNet with `select_trainable(mode)` applied, VideoVAE) with random weights on `device` (meta: none)."""
    from minisvd.models.unet import UNet, UNetConfig
    from minisvd.models.vae import VAEConfig, VideoVAE
    from minisvd.train.stages.finetune import select_trainable

    cfg = unet_config or getattr(UNetConfig, MODELS[model][0])()
    with torch.device(device):
        unet = UNet(cfg)
        vae = VideoVAE(vae_config or VAEConfig.svd())
    return select_trainable(unet, mode, rank), vae


def make_stage(vae: nn.Module, height: int = HEIGHT, width: int = WIDTH):
    """A FinetuneStage whose loss (`DiffusionStage.loss` + `i2v_conditioning`) encodes with `vae`."""
    from minisvd import edm
    from minisvd.train.stages.finetune import FinetuneStage

    stage = FinetuneStage(height=height, width=width)
    stage.parts = {"vae": vae}  # the only part the loss uses
    stage.P_mean, stage.P_std = edm.lognormal_params((height, width))  # as setup() does
    return stage


def make_batch(frames: int, device, height: int = HEIGHT, width: int = WIDTH, latent_factor: int = 8,
               context_dim: int = 1024, seed: int = 0) -> dict:  # fmt: skip
    """One training item as the stage's dataset gives it (batch 1): scaled latents, CLIP token, first frame."""
    g = torch.Generator().manual_seed(seed)
    h, w = height // latent_factor, width // latent_factor
    batch = {
        "latents": torch.randn(1, frames, 4, h, w, generator=g),
        "context": torch.randn(1, 1, context_dim, generator=g),
        "first": torch.randint(0, 256, (1, 3, height, width), generator=g, dtype=torch.uint8),
        "fps": torch.tensor([7.0]),
        "motion_bucket_id": torch.tensor([127.0]),
    }
    return {k: v.to(device) for k, v in batch.items()}


def train_loss(stage, model: nn.Module, batch: dict, generator: torch.Generator) -> torch.Tensor:
    """The engine's loss of one micro-batch (engine.py: the per-sample losses summed, W / B = 1)."""
    per_sample, _ = stage.loss(model, batch, generator)
    return per_sample.float().sum()


# ----------------------------------------------------------------------------------------------------------
# Parameters and their bytes


def adamw8bit_state_bytes(numel: int) -> int:
    """bitsandbytes AdamW8bit's two moments of one tensor: 1 byte + an fp32 absmax per 256-value block each,
    or two fp32 moments for a tensor under 4096 values (its min_8bit_size)."""
    if numel < BNB_MIN_8BIT_SIZE:
        return 8 * numel
    return 2 * (numel + 4 * math.ceil(numel / BNB_BLOCK))


def param_counts(unet: nn.Module) -> dict:
    """Parameters of a UNet after `select_trainable`: total (LoRA adapters included), trainable, and bytes."""
    total = sum(p.numel() for p in unet.parameters())
    trainable = [p.numel() for p in unet.parameters() if p.requires_grad]
    n = sum(trainable)
    return {
        "params": total,
        "trainable": n,
        "weights_fp32": 4 * total,
        "weights_bf16": 2 * total,
        "grads": 4 * n,
        "adamw": 8 * n,
        "adamw8bit": sum(adamw8bit_state_bytes(k) for k in trainable),
    }


def vae_bytes(vae: nn.Module) -> dict:
    """fp32 bytes of the whole VAE (what the stage moves to the GPU) and of its encoder + quant_conv."""
    enc = sum(p.numel() for m in (vae.encoder, vae.quant_conv) for p in m.parameters())
    return {"vae": 4 * sum(p.numel() for p in vae.parameters()), "vae_encoder": 4 * enc}


# ----------------------------------------------------------------------------------------------------------
# Counting what autograd saves for backward


def storage_key(t: torch.Tensor) -> int:
    """Identifies a tensor's storage (views share it; works for meta tensors, whose data_ptr is 0)."""
    return t.untyped_storage()._cdata


class SavedTensors:
    """Sums the bytes of the distinct storages autograd saves for backward while active and still holds when
    read; storages in `exclude` (parameters, inputs) do not count. A saved tensor whose graph branch is
    dropped (an output nothing uses) is freed again and does not count: each storage is counted while a
    tensor saved on it is alive (weak references), so a later storage at a freed one's address is new.
    Non-reentrant checkpointing saves its layers' inputs through the same hooks and hides what the layers
    save inside (recomputed in backward), so both are counted right."""

    def __init__(self, exclude=()):
        self.exclude = {storage_key(t) for t in exclude}
        self.storages: dict[
            int, tuple[int, tuple, torch.dtype, list]
        ] = {}  # key -> nbytes, shape, dtype, refs
        self.hooks = torch.autograd.graph.saved_tensors_hooks(self.pack, lambda t: t)
        self.max_layer, self._layer = 0, None  # the most bytes one `layer()` region saved and kept

    def pack(self, t: torch.Tensor) -> torch.Tensor:
        key = storage_key(t)
        if key in self.exclude:
            return t
        entry = self.storages.get(key)
        if entry is None or not any(r() is not None for r in entry[3]):  # new, or the old storage was freed
            entry = self.storages[key] = (t.untyped_storage().nbytes(), tuple(t.shape), t.dtype, [])
            if self._layer is not None:
                self._layer.append(entry)
        entry[3].append(weakref.ref(t))
        return t  # autograd keeps it as it would anyway

    def holds(self, t: torch.Tensor) -> bool:
        """Whether t's storage is among the saved ones still held."""
        e = self.storages.get(storage_key(t))
        return e is not None and any(r() is not None for r in e[3])

    def alive(self) -> list[tuple[int, tuple, torch.dtype]]:
        """(nbytes, shape, dtype) of each storage a saved tensor still holds."""
        return [e[:3] for e in self.storages.values() if any(r() is not None for r in e[3])]

    @property
    def nbytes(self) -> int:
        return sum(b for b, _, _ in self.alive())

    def square_bytes(self, lengths) -> int:
        """Bytes of saved (N, heads, L, L) tensors, attention matrices, for the sequence lengths given."""
        return sum(b for b, s, _ in self.alive() if len(s) == 4 and s[-1] == s[-2] and s[-1] in lengths)

    @contextlib.contextmanager
    def layer(self):
        """Tracks the bytes saved inside this region that are still held when it ends (`max_layer`)."""
        self._layer = []
        try:
            yield
        finally:
            entries, self._layer = self._layer, None
            held = sum(e[0] for e in entries if any(r() is not None for r in e[3]))
            self.max_layer = max(self.max_layer, held)

    def __enter__(self):
        self.hooks.__enter__()
        return self

    def __exit__(self, *exc):
        self.hooks.__exit__(*exc)


class _FlashLikeSDPA(torch.autograd.Function):
    """What flash / memory-efficient attention saves for backward: q, k, v, the output, a float32 logsumexp
    per query and head. No compute: the output is uninitialised (for meta tensors and memory counting)."""

    @staticmethod
    def forward(ctx, q, k, v):
        out = torch.empty_like(q)
        lse = torch.empty(q.shape[:-1], dtype=torch.float32, device=q.device)
        ctx.save_for_backward(q, k, v, out, lse)
        return out

    @staticmethod
    def backward(ctx, grad):
        q, k, v, _, _ = ctx.saved_tensors
        return torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)


class FlashAttentionAccounting:
    """Replaces F.scaled_dot_product_attention by `_FlashLikeSDPA` while active (the GPU's saved set), and adds
    up `math_bytes`: what the math path would save on top, one (N, heads, L_q, L_k) probability matrix per call
    that needs a gradient, in the dtype attention runs in."""

    def __init__(self, autocast: EmulatedAutocast | None = None):
        self.autocast, self.math_bytes, self.max_math_bytes, self.lengths = autocast, 0, 0, set()

    def sdpa(self, q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, **kw):
        if attn_mask is not None or dropout_p or is_causal:
            raise NotImplementedError(
                "FlashAttentionAccounting counts plain attention only (no mask, dropout)"
            )
        if self.autocast is not None and self.autocast.active:
            q, k, v = (self.autocast.cast(t, self.autocast.dtype) for t in (q, k, v))
        if torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v)):
            matrix = q.shape[:-1].numel() * k.shape[-2] * q.element_size()
            self.math_bytes, self.max_math_bytes = self.math_bytes + matrix, max(self.max_math_bytes, matrix)
            self.lengths.add(q.shape[-2])
        return _FlashLikeSDPA.apply(q, k, v)

    def __enter__(self):
        self._orig = F.scaled_dot_product_attention
        F.scaled_dot_product_attention = self.sdpa
        return self

    def __exit__(self, *exc):
        F.scaled_dot_product_attention = self._orig


@contextlib.contextmanager
def per_layer(saved: SavedTensors):
    """Each ResBlock / transformer call of the UNet (`UNetBlock.run`, the unit gradient checkpointing
    recomputes) as a `saved.layer()` region: without checkpointing, `saved.max_layer` is then what the
    largest layer holds again while it is recomputed in the backward with checkpointing."""
    from minisvd.models.unet import UNetBlock

    orig = UNetBlock.run

    def run(block, layer, x, *args):
        with saved.layer():
            return orig(block, layer, x, *args)

    UNetBlock.run = run
    try:
        yield
    finally:
        UNetBlock.run = orig


@contextlib.contextmanager
def video_only():
    """Training videos (image_only_indicator = 0): the AlphaBlenders' `spatial_only` test reads a tensor's value,
    which the meta device cannot; it is False for every training video, so return that without reading."""
    from minisvd.models.resnet import AlphaBlender

    orig = AlphaBlender.spatial_only
    AlphaBlender.spatial_only = lambda self, indicator: False
    try:
        yield
    finally:
        AlphaBlender.spatial_only = orig


_LOW = {F.linear, F.conv1d, F.conv2d, F.conv3d, F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d,
        torch.matmul, torch.Tensor.matmul, torch.Tensor.__matmul__, torch.mm, torch.Tensor.mm, torch.bmm,
        torch.Tensor.bmm, torch.baddbmm, torch.addmm, torch.einsum, F.prelu}  # fmt: skip
_FP32_CUDA = {F.layer_norm, F.group_norm, F.softmax, torch.softmax, torch.Tensor.softmax, F.log_softmax,
              torch.exp, torch.Tensor.exp, torch.log, torch.Tensor.log, torch.pow, torch.Tensor.pow,
              torch.Tensor.__pow__, torch.rsqrt, torch.Tensor.rsqrt, F.mse_loss, F.softplus}  # fmt: skip


class EmulatedAutocast(TorchFunctionMode):
    """torch.autocast(dtype=bf16)'s cast policy, applied above autograd to tensors of any device (autocast does
    not act on meta tensors). `policy="cuda"`: CUDA autocast's lists for the ops the UNet uses (bf16: linear,
    convolutions, matmuls, SDPA; fp32: layer/group norm, softmax, exp, log, pow, ...); `"cpu"`: CPU autocast's
    (the same bf16 list, no fp32 list for these ops), for validating against real CPU autocast. As autocast:
    a float32 leaf that requires grad (a trainable weight) is cast once per region and cached; other tensors
    (frozen weights, activations) are cast at every use."""

    def __init__(self, dtype: torch.dtype = torch.bfloat16, policy: str = "cuda"):
        super().__init__()
        if policy not in ("cuda", "cpu"):
            raise ValueError(f"policy must be 'cuda' or 'cpu', got {policy!r}")
        self.dtype, self.fp32 = dtype, (_FP32_CUDA if policy == "cuda" else set())
        self.cache: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.active = False

    def cast(self, t, dtype: torch.dtype):
        if not isinstance(t, torch.Tensor) or not t.is_floating_point() or t.dtype == dtype:
            return t
        if (
            dtype == self.dtype
            and t.dtype == torch.float32
            and t.requires_grad
            and t.is_leaf
            and not t._is_view()
        ):
            if id(t) not in self.cache:
                self.cache[id(t)] = (t, t.to(dtype))
            return self.cache[id(t)][1]
        return t.to(dtype)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        target = self.dtype if func in _LOW else torch.float32 if func in self.fp32 else None
        if target is not None:
            args = tuple(self.cast(a, target) for a in args)
            kwargs = {k: self.cast(v, target) for k, v in kwargs.items()}
        return func(*args, **kwargs)

    def __enter__(self):
        self.active = True
        return super().__enter__()

    def __exit__(self, *exc):
        self.active = False
        self.cache.clear()  # as autocast's cache, emptied when the region ends
        return super().__exit__(*exc)


def saved_activations(unet: nn.Module, vae: nn.Module, frames: int, ckpt: bool, bf16: bool,
                      height: int = HEIGHT, width: int = WIDTH, policy: str = "cuda", flash: bool = True,
                      batch: dict | None = None, keep: list | None = None) -> dict:  # fmt: skip
    """Bytes autograd saves for backward in one training forward (the stage's loss, batch 1) of `unet` on its
    device; meta tensors: no memory, no compute. bf16: `EmulatedAutocast(policy)`; flash: SDPA counted as
    flash attention (on the meta device it must be). `cast_cache` is the autocast cache's bytes that nothing
    saved (alive until the region ends). `keep`: a list the loss is appended to (its graph kept alive)."""
    device = unet.conv_in.weight.device
    if ckpt:
        unet.enable_gradient_checkpointing()
    else:
        unet.disable_gradient_checkpointing()
    stage = make_stage(vae, height, width)
    if batch is None:
        batch = make_batch(frames, device, height, width, vae.config.downsample_factor,
                           unet.config.cross_attention_dim)  # fmt: skip
    generator = torch.Generator().manual_seed(0)  # CPU: the meta device has none (stage draws, then moves)
    exclude = [*unet.parameters(), *unet.buffers(), *vae.parameters(), *vae.buffers(), *batch.values()]
    autocast = EmulatedAutocast(policy=policy) if bf16 else None
    attention = FlashAttentionAccounting(autocast) if flash else contextlib.nullcontext()
    run = video_only() if device.type == "meta" else contextlib.nullcontext()
    saved = SavedTensors(exclude)
    with saved, per_layer(saved), run, attention, autocast or contextlib.nullcontext():
        loss = train_loss(stage, unet, batch, generator)
        cache_bytes = sum(
            c.untyped_storage().nbytes()
            for _, c in (autocast.cache.values() if autocast else [])
            if not saved.holds(c)
        )
    result = {  # read while the loss holds the graph
        "saved": saved.nbytes,
        "tensors": len(saved.alive()),
        "cast_cache": cache_bytes,
        "math_attention": attention.math_bytes if flash else 0,
        "square_saved": saved.square_bytes(attention.lengths if flash else set()),
        "max_layer": 0 if ckpt else saved.max_layer,  # with ckpt the layers' own saves are hidden
        "max_math_attention": attention.max_math_bytes if flash else 0,
    }
    if keep is not None:
        keep.append(loss)
    del loss
    unet.disable_gradient_checkpointing()
    return result


# ----------------------------------------------------------------------------------------------------------
# Validation on the CPU, for real: the counting against the memory the forward kept


def forward_kept_bytes(fn) -> tuple[int, object]:
    """Bytes the CPU allocator handed out during fn() and did not get back (torch.profiler's memory events):
    what fn's result keeps alive, the autograd graph's saved tensors included. Returns (bytes, result)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        out = fn()
    return sum(e.self_cpu_memory_usage for e in prof.key_averages()), out


def step_peak_bytes(fn) -> int:
    """The peak of the bytes the CPU allocator held during fn() beyond what was allocated before: every
    allocation and free in time order (the profiler's [memory] records), summed as they come. The CPU's
    torch.cuda.max_memory_allocated, for one step."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as p:
        fn()
    records = sorted(
        (e.start_ns(), e.nbytes()) for e in p.profiler.kineto_results.events() if e.name() == "[memory]"
    )
    now = peak = 0
    for _, nbytes in records:
        now += nbytes
        peak = max(peak, now)
    return peak


def activation_peak(act: dict, ckpt: bool, no_ckpt: dict) -> int:
    """The activation bytes at the step's peak: what the forward saved, then either autograd's cast cache (alive
    until the autocast region ends, after the forward) or, with checkpointing, the largest layer's saves held
    again while it is recomputed in the backward (`max_layer` of the same run without checkpointing)."""
    return act["saved"] + max(act["cast_cache"], no_ckpt["max_layer"] if ckpt else 0)


def validate(frames: int = 4, size: int = 32) -> list[dict]:
    """On a tiny UNet + VAE (UNetConfig.tiny, VAEConfig.tiny, LoRA rank 4) at size x size, on the CPU, each mode,
    with and without checkpointing, fp32 and bf16: the hook count on real CPU tensors vs on the meta device
    (emulated flash SDPA and autocast, `policy="cpu"`) vs the bytes the real forward kept (profiler); for
    fp32 also the real peak of forward + backward vs the estimate (activation_peak + gradients)."""
    from minisvd.models.unet import UNetConfig
    from minisvd.models.vae import VAEConfig

    vcfg = VAEConfig.tiny()
    ucfg = UNetConfig.tiny(in_channels=8, cross_attention_dim=32, num_frames=frames)
    rows = []
    for mode in MODES:
        torch.manual_seed(0)
        unet, vae = build("", mode, 4, "cpu", vcfg, ucfg)
        meta = build("", mode, 4, "meta", vcfg, ucfg)
        batch = make_batch(frames, "cpu", size, size, vcfg.downsample_factor, ucfg.cross_attention_dim)
        grads = 4 * sum(p.numel() for p in unet.parameters() if p.requires_grad)
        emu = {}
        for bf16 in (False, True):
            for ckpt in (False, True):
                graph = []  # keeps the graph alive until the profiler has read the memory
                forward = partial(saved_activations, unet, vae, frames, ckpt, False, size, size, flash=False,
                                  batch=batch, keep=graph)  # fmt: skip
                # bf16: real CPU autocast, the hooks see its casts
                with torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext():
                    kept, real = forward_kept_bytes(forward)
                graph.clear()
                emu[ckpt] = saved_activations(*meta, frames, ckpt, bf16, size, size, policy="cpu")
                row = dict(mode=mode, ckpt=ckpt, bf16=bf16, cpu=real["saved"], meta=emu[ckpt]["saved"],
                           meta_cache=emu[ckpt]["cast_cache"], kept=kept, peak=None)  # fmt: skip
                if not bf16:  # forward + backward for real: the peak vs the estimate
                    row["peak"] = step_peak_bytes(lambda f=forward, g=graph: (f(), g.pop().backward()))
                    unet.zero_grad(set_to_none=True)
                    row["estimate"] = activation_peak(emu[ckpt], ckpt, emu[False]) + grads
                rows.append(row)
    return rows


def validation_lines(rows: list[dict]) -> list[str]:
    out = [
        "Validation on the CPU, for real (tiny UNet + tiny VAE, 4 frames at 32x32, LoRA rank 4). Bytes saved for "
        "backward counted by the hooks on real CPU tensors (CPU flash SDPA; bf16: real CPU autocast) and on "
        "the meta device (emulated flash SDPA; bf16: `EmulatedAutocast(policy='cpu')`, + its cast cache), vs "
        "the bytes the real forward's allocations kept (torch.profiler memory events, graph alive; besides "
        "the saved tensors: the loss, autocast's cache, checkpointing's CPU RNG state per layer). fp32: the "
        "real peak of forward + backward above the weights (memory profiler timeline) vs the estimate "
        "(saved + largest recomputed layer with ckpt + gradients).",
        "",
        "| mode | ckpt | precision | CPU, hooks | meta, hooks | meta / CPU | meta + cast cache "
        "| kept by the forward | kept / (meta + cache) | step peak | estimate | peak / estimate |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        counted = r["meta"] + r["meta_cache"]
        peak = "- | - | -"
        if r["peak"] is not None:
            peak = f"{r['peak']:,} | {r['estimate']:,} | {r['peak'] / r['estimate']:.3f}"
        out.append(
            f"| {r['mode']} | {'yes' if r['ckpt'] else 'no'} | {'bf16' if r['bf16'] else 'fp32'} | {r['cpu']:,} "
            f"| {r['meta']:,} | {r['meta'] / r['cpu']:.4f} | {counted:,} | {r['kept']:,} "
            f"| {r['kept'] / counted:.4f} | {peak} |"
        )
    return out


# ----------------------------------------------------------------------------------------------------------
# The CPU estimate


def estimate(models, modes, rank: int) -> dict:
    """Parameter bytes per mode and saved-activation bytes per (model, mode, ckpt, precision), meta device."""
    params, acts, vae = {}, {}, None
    for mode in modes:
        for model in models:
            t0 = time.perf_counter()
            unet, v = build(model, mode, rank, "meta")
            vae = vae or vae_bytes(v)
            params[mode] = param_counts(unet)
            for ckpt in (False, True):
                for bf16 in (False, True):
                    acts[(model, mode, ckpt, bf16)] = saved_activations(unet, v, MODELS[model][1], ckpt, bf16)
            print(f"  {model} {mode}: {time.perf_counter() - t0:.1f} s", flush=True)
    return {"params": params, "activations": acts, "vae": vae}


def gib(b: float) -> str:
    return f"{b / GiB:.2f}"


def total_bytes(p: dict, acts: dict, model: str, mode: str, option: str, vae: dict) -> dict:
    o = OPTIONS[option]
    act = activation_peak(
        acts[(model, mode, o["ckpt"], o["bf16"])], o["ckpt"], acts[(model, mode, False, o["bf16"])]
    )
    parts = {"weights": p["weights_fp32"], "grads": p["grads"], "optimizer": p[o["optimizer"]],
             "activations": act, "vae": vae["vae"]}  # fmt: skip
    return {**parts, "total": sum(parts.values())}


def verdict(total: float) -> str:
    return "yes" if total <= (BUDGET_GIB - 2) * GiB else "tight" if total <= BUDGET_GIB * GiB else "no"


def estimate_tables(est: dict, models, modes, rank: int) -> list[str]:
    P, A, V = est["params"], est["activations"], est["vae"]
    out = [
        f"Parameters (UNetConfig.svd(); SVD-XT has the same), LoRA rank {rank}; GiB = 2^30 bytes.",
        "",
        "| mode | UNet params | trainable | weights fp32 (bf16) | grads fp32 | AdamW states | 8-bit AdamW states |",
        "|---|---|---|---|---|---|---|",
    ]
    for mode in modes:
        p = P[mode]
        out.append(
            f"| {mode} | {p['params']:,} | {p['trainable']:,} ({100 * p['trainable'] / p['params']:.2f}%) "
            f"| {gib(p['weights_fp32'])} ({gib(p['weights_bf16'])}) | {gib(p['grads'])} | {gib(p['adamw'])} "
            f"| {gib(p['adamw8bit'])} |"
        )
    out += [
        "",
        f"VAE (VAEConfig.svd(), fp32): {gib(V['vae'])} GiB whole (the stage moves the whole VAE to the GPU), of "
        f"which the encoder + quant_conv (all the loss uses) {gib(V['vae_encoder'])} GiB.",
        "",
        "Activations of one training step at 576x1024, batch 1 (GiB), flash / memory-efficient SDPA. Without "
        "ckpt: saved by the forward + autocast's cache. With ckpt: the layers' inputs saved by the forward "
        "+ the largest layer's saves, held again while it is recomputed in the backward (or the cache, if "
        "larger). Math SDPA: what the (L x L) attention probabilities would add (all of them without ckpt "
        "/ the largest single one, which even ckpt must hold), if SDPA fell back to its math path.",
        "",
        "| model | frames | mode | fp32 | bf16 | fp32+ckpt: inputs + recompute | bf16+ckpt: inputs + recompute "
        "| autocast cache (bf16 / bf16+ckpt) | math SDPA fp32: all / largest | bf16: all / largest |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for model in models:
        for mode in modes:
            a = {(c, b): A[(model, mode, c, b)] for c in (False, True) for b in (False, True)}
            cells = [gib(activation_peak(a[(False, b)], False, a[(False, b)])) for b in (False, True)]
            for b in (False, True):
                extra = max(a[(True, b)]["cast_cache"], a[(False, b)]["max_layer"])
                cells.append(
                    f"{gib(a[(True, b)]['saved'])} + {gib(extra)} = {gib(a[(True, b)]['saved'] + extra)}"
                )
            cells.append(f"{gib(a[(False, True)]['cast_cache'])} / {gib(a[(True, True)]['cast_cache'])}")
            for b in (False, True):
                cells.append(
                    f"{gib(a[(False, b)]['math_attention'])} / {gib(a[(False, b)]['max_math_attention'])}"
                )
            out.append(f"| {model} | {MODELS[model][1]} | {mode} | {' | '.join(cells)} |")
    square = max(a["square_saved"] for a in A.values())
    out += [
        "",
        f"Check: saved tensors shaped like attention matrices (N, heads, L, L), L a sequence length attention "
        f"ran at: at most {square:,} bytes in any configuration (flash counted: none expected).",
        "",
        f"Estimated peak per configuration vs {BUDGET_GIB} GiB (GiB): weights + grads + optimizer states + "
        "activations (as above) + VAE. fits: yes <= 22, tight <= 24, no > 24.",
        "",
        "| model | frames | mode | option | weights | grads | optimizer | activations | VAE | total | fits 24 GiB |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for model in models:
        for mode in modes:
            for name in OPTIONS:
                t = total_bytes(P[mode], A, model, mode, name, V)
                out.append(
                    f"| {model} | {MODELS[model][1]} | {mode} | {name} | {gib(t['weights'])} | {gib(t['grads'])} "
                    f"| {gib(t['optimizer'])} | {gib(t['activations'])} | {gib(t['vae'])} | **{gib(t['total'])}** "
                    f"| {verdict(t['total'])} |"
                )
    out += [
        "",
        "Assumptions: batch 1; weights fp32 (master weights; bf16 autocast keeps them); the whole VAE on the "
        "GPU, as build_model does (the decoder could stay on the CPU); EMA off (the stage's default); "
        "gradients fp32 for the trainable parameters only; AdamW's two fp32 moments (8-bit: bitsandbytes' "
        "blockwise states). Activations: distinct storages saved for backward (parameters excluded), counted "
        "on the meta device with flash / memory-efficient SDPA (a GPU's path at these sizes); bf16 = CUDA "
        "autocast's cast policy, emulated (its per-use bf16 copies of frozen weights are saved, its cached "
        "copies of trainable weights live until the forward ends). Not included: the CUDA context (~0.5 GiB, "
        "outside max_memory_allocated), the caching allocator's rounding and fragmentation, backward's "
        "transients (the gradient of the activation being back-propagated, cuDNN / SDPA workspaces: on the "
        "tiny model, the validation's peak / estimate shows their size), the VAE encoder's no-grad transients "
        "(before the UNet's forward) and the optimizer step's temporaries (foreach AdamW: about one more fp32 copy of the "
        "trainable parameters, once the activations are freed). Gradients and activations are added though "
        "backward never holds both in full: for 'all', an upper bound of those two terms. --gpu measures.",
    ]
    return out


# ----------------------------------------------------------------------------------------------------------
# The GPU measurement


def measure_step(model: str, mode: str, option: str, rank: int = 16, warmup: int = 1, steps: int = 3,
                 device: str = "cuda", unet_config=None, vae_config=None, height: int = HEIGHT,
                 width: int = WIDTH) -> dict:  # fmt: skip
    """One configuration trained for real: `warmup` steps, then `steps` timed ones (forward under autocast if
    bf16, backward, clipping, optimizer step: engine.py's). On cuda: the peak allocated over the timed steps.
    Other devices and configs (the test's tiny CPU run) exercise the same code without memory figures."""
    from minisvd.train.config import TrainConfig
    from minisvd.train.engine import make_optimizer

    o, dev = OPTIONS[option], torch.device(device)
    cuda = dev.type == "cuda"
    sync = torch.cuda.synchronize if cuda else lambda: None
    torch.manual_seed(0)
    unet, vae = build(model, mode, rank, dev, vae_config, unet_config)
    if o["ckpt"]:
        unet.enable_gradient_checkpointing()
    params = [p for p in unet.parameters() if p.requires_grad]
    optimizer = make_optimizer(params, TrainConfig(lr=1e-5, optimizer=o["optimizer"]))
    stage = make_stage(vae, height, width)
    frames = unet.config.num_frames if unet_config else MODELS[model][1]
    batch = make_batch(
        frames, dev, height, width, vae.config.downsample_factor, unet.config.cross_attention_dim
    )
    losses = []

    def step(i: int) -> float:
        sync()
        t0 = time.perf_counter()
        generator = torch.Generator(dev).manual_seed(i)
        with torch.autocast(dev.type, dtype=torch.bfloat16) if o["bf16"] else contextlib.nullcontext():
            loss = train_loss(stage, unet, batch, generator)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        sync()
        losses.append(loss.item())
        return time.perf_counter() - t0

    weights = torch.cuda.memory_allocated() if cuda else None
    for i in range(warmup):
        step(i)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    times = [step(warmup + i) for i in range(steps)]
    return {
        "status": "ok" if all(math.isfinite(v) for v in losses) else "ok (non-finite loss)",
        "peak": torch.cuda.max_memory_allocated() if cuda else None,
        "reserved": torch.cuda.max_memory_reserved() if cuda else None,
        "weights": weights,  # allocated after building: UNet + VAE (+ the batch)
        "s_per_step": statistics.median(times),
        "losses": losses,
    }


def run_gpu(args) -> list[dict]:
    if not torch.cuda.is_available():
        sys.exit("--gpu needs a CUDA GPU; without one, run the estimate (no --gpu)")
    has_bnb = importlib.util.find_spec("bitsandbytes") is not None
    rows = []
    for model in args.models:
        for mode in args.modes:
            for option in args.options:
                row = dict(model=model, frames=MODELS[model][1], mode=mode, option=option)
                if OPTIONS[option]["optimizer"] == "adamw8bit" and not has_bnb:
                    row.update(status="skipped: bitsandbytes is not installed")
                else:
                    try:
                        row.update(measure_step(model, mode, option, args.rank, args.warmup, args.steps))
                    except (
                        RuntimeError
                    ) as e:  # torch.cuda.OutOfMemoryError, or cuDNN / cuBLAS failing to allocate
                        if not isinstance(e, torch.cuda.OutOfMemoryError) and "ALLOC_FAILED" not in str(e):
                            raise
                        row.update(status="OOM")
                gc.collect()  # after the except block: the exception's frames (and tensors) are gone
                torch.cuda.empty_cache()
                print(gpu_row(row), flush=True)
                rows.append(row)
                if args.json:  # after each configuration: a run cut short keeps what it measured
                    Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
    return rows


def gpu_row(r: dict) -> str:
    head = f"| {r['model']} | {r['frames']} | {r['mode']} | {r['option']} |"
    est = "- | -"
    if "estimate" in r:
        ratio = f"{r['peak'] / r['estimate']:.2f}" if r.get("peak") else "-"
        est = f"{gib(r['estimate'])} | {ratio}"
    if not r["status"].startswith("ok"):
        return f"{head} {r['status']} | - | - | - | {est} |"
    note = "" if r["status"] == "ok" else f" ({r['status'][3:]})"
    return (
        f"{head} {gib(r['peak'])}{note} | {gib(r['reserved'])} | {r['s_per_step']:.2f} | {verdict(r['peak'])} "
        f"| {est} |"
    )


def gpu_table(rows: list[dict], args) -> list[str]:
    name = torch.cuda.get_device_name()
    return [
        f"{name}, torch {torch.__version__}; batch 1 at {HEIGHT}x{WIDTH}, random weights of the real size, "
        f"LoRA rank {args.rank}; {args.warmup} warm-up step(s), then the peak (max_memory_allocated, GiB) and "
        f"median seconds over {args.steps} step(s). Estimate: this script's CPU estimate of the same "
        "configuration (--compare).",
        "",
        "| model | frames | mode | option | peak allocated | peak reserved | s / step | fits 24 GiB "
        "| estimate | measured / estimate |",
        "|---|---|---|---|---|---|---|---|---|---|",
        *[gpu_row(r) for r in rows],
    ]


# ----------------------------------------------------------------------------------------------------------


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--gpu", action="store_true", help="measure on cuda (default: estimate on the meta device)"
    )
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    p.add_argument("--options", nargs="+", default=list(OPTIONS), choices=list(OPTIONS), help="--gpu only")
    p.add_argument("--rank", type=int, default=16, help="LoRA rank (the stage's default)")
    p.add_argument("--warmup", type=int, default=1, help="--gpu: untimed steps first (optimizer states)")
    p.add_argument("--steps", type=int, default=3, help="--gpu: timed steps per configuration")
    p.add_argument("--compare", action="store_true", help="--gpu: add the CPU estimate (about a minute)")
    p.add_argument("--no-validate", action="store_true", help="estimate: skip the tiny-model validation")
    p.add_argument("--save", help="also write the printed Markdown to this file")
    p.add_argument("--json", help="also write the numbers to this json file")
    args = p.parse_args()
    command = f"`python benchmarks/{Path(__file__).name} {' '.join(sys.argv[1:])}`".replace(" `", "`")
    t0 = time.perf_counter()
    if args.gpu:
        rows = run_gpu(args)
        if args.compare:  # the CPU estimate of each measured configuration, side by side
            est = estimate(args.models, args.modes, args.rank)
            for r in rows:
                t = total_bytes(est["params"][r["mode"]], est["activations"], r["model"], r["mode"], r["option"],
                                est["vae"])  # fmt: skip
                r["estimate"] = t["total"]
            if args.json:
                Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
        lines = [command, "", *gpu_table(rows, args)]
    else:
        torch.set_num_threads(1)
        lines = [command, ""]
        if not args.no_validate:
            rows = validate()
            lines += [*validation_lines(rows), ""]
        est = estimate(args.models, args.modes, args.rank)
        lines += estimate_tables(est, args.models, args.modes, args.rank)
        if args.json:
            acts = [
                dict(model=m, mode=mo, ckpt=c, bf16=b, **v) for (m, mo, c, b), v in est["activations"].items()
            ]
            totals = [
                dict(
                    model=m,
                    mode=mo,
                    option=o,
                    **total_bytes(est["params"][mo], est["activations"], m, mo, o, est["vae"]),
                )
                for m in args.models
                for mo in args.modes
                for o in OPTIONS
            ]
            data = {"params": est["params"], "vae": est["vae"], "activations": acts, "totals": totals}
            Path(args.json).write_text(json.dumps(data, indent=2) + "\n")
    lines += ["", f"torch {torch.__version__}; this run took {time.perf_counter() - t0:.0f} s."]
    text = "\n".join(lines)
    print("\n" + text, flush=True)
    if args.save:
        Path(args.save).write_text(text + "\n")


if __name__ == "__main__":
    main()
