"""benchmarks/bench_finetune.py: its parameter counts per --trainable mode against direct counts on a tiny UNet,
its saved-activation counter against hand counts, the meta-device count (emulated flash SDPA and autocast)
against the real CPU one, and the --gpu training step run on the CPU at tiny size."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from torch import nn

from minisvd.models.inflate import is_temporal_key
from minisvd.models.unet import UNet, UNetConfig
from minisvd.models.vae import VAEConfig

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

_spec = importlib.util.spec_from_file_location(
    "bench_finetune", Path(__file__).parents[1] / "benchmarks" / "bench_finetune.py"
)
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)

RANK = 4
TINY = dict(vae_config=VAEConfig.tiny(), unet_config=UNetConfig.tiny(in_channels=8, num_frames=4))


@pytest.mark.parametrize("mode", ["all", "temporal", "lora"])
def test_trainable_counts_match_direct_counts(mode):
    if mode == "lora":
        pytest.importorskip("peft")
    cfg = TINY["unet_config"]
    plain = dict(UNet(cfg).named_parameters())
    total = sum(p.numel() for p in plain.values())
    lora = sum(
        RANK * (m.in_features + m.out_features)  # A: rank x in, B: out x rank
        for name, m in UNet(cfg).named_modules()
        if isinstance(m, nn.Linear) and name.endswith(("to_q", "to_k", "to_v", "to_out.0"))
    )
    expected = {
        "all": total,
        "temporal": sum(p.numel() for n, p in plain.items() if is_temporal_key(n)),
        "lora": lora,
    }[mode]
    unet, _ = bench.build("", mode, RANK, "meta", **TINY)  # no memory: peft injects on meta too
    c = bench.param_counts(unet)
    assert c["trainable"] == expected > 0
    assert c["params"] == total + (lora if mode == "lora" else 0)
    assert (c["grads"], c["adamw"], c["weights_fp32"]) == (4 * expected, 8 * expected, 4 * c["params"])


def test_adamw8bit_state_bytes():
    assert bench.adamw8bit_state_bytes(100) == 800  # under bitsandbytes' min_8bit_size: fp32 moments
    assert bench.adamw8bit_state_bytes(4096) == 2 * (4096 + 4 * 16)  # 1 byte + an fp32 absmax per 256, twice


@pytest.mark.parametrize("device", ["cpu", "meta"])
def test_saved_tensors_hand_count(device):
    """Linear saves its input (the weight is a parameter: not counted); GELU saves its input, the second
    Linear the GELU's output; a branch whose result is dropped frees what it saved and does not count."""
    torch.manual_seed(0)
    with torch.device(device):
        lin1, lin2 = nn.Linear(16, 32), nn.Linear(32, 8)
        x = torch.randn(4, 16)
    exclude = [*lin1.parameters(), *lin2.parameters(), x]
    with bench.SavedTensors(exclude) as s:
        y = lin1(x)
    assert s.nbytes == 0  # x is excluded (an input), nothing else is saved
    with bench.SavedTensors(exclude[:-1]) as s:
        y = lin1(x)
        dropped = torch.nn.functional.gelu(lin1(x))
        del dropped
    assert s.nbytes == 4 * 16 * 4  # x, once; the dropped branch's saved pre-GELU tensor was freed
    with bench.SavedTensors(exclude[:-1]) as s:
        y = lin2(torch.nn.functional.gelu(lin1(x)))
    assert s.nbytes == 4 * 16 * 4 + 4 * 32 * 4 + 4 * 32 * 4
    assert y.shape == (4, 8)


def test_meta_count_equals_cpu_count_attention_and_autocast():
    """The meta device with emulated flash SDPA and autocast (cpu policy) saves what the CPU really saves."""
    from minisvd.models.attention import TransformerBlock

    counts = {}
    for device in ("cpu", "meta"):
        torch.manual_seed(0)
        with torch.device(device):
            block = TransformerBlock(64, 2, 32, context_dim=32)
            x = torch.randn(2, 128, 64, requires_grad=True)
            ctx = torch.randn(2, 1, 32)
        exclude = [*block.parameters(), x, ctx]
        for bf16 in (False, True):
            if device == "cpu":
                amp = torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16)
                with bench.SavedTensors(exclude) as s, amp:
                    out = block(x, ctx)
            else:
                amp = bench.EmulatedAutocast(policy="cpu") if bf16 else bench.contextlib.nullcontext()
                with (
                    bench.SavedTensors(exclude) as s,
                    bench.FlashAttentionAccounting(amp if bf16 else None),
                    amp,
                ):
                    out = block(x, ctx)
            counts[device, bf16] = s.nbytes
            del out
    assert counts["cpu", False] == counts["meta", False] > 0
    assert counts["cpu", True] == counts["meta", True] > 0
    assert counts["cpu", True] < counts["cpu", False]


@pytest.mark.parametrize("ckpt", [False, True])
def test_unet_meta_count_equals_cpu_count(ckpt):
    cpu = bench.build("", "temporal", RANK, "cpu", **TINY)
    meta = bench.build("", "temporal", RANK, "meta", **TINY)
    real = bench.saved_activations(*cpu, 4, ckpt, False, 32, 32, flash=False)
    emu = bench.saved_activations(*meta, 4, ckpt, False, 32, 32)
    assert real["saved"] == emu["saved"] > 0
    assert emu["square_saved"] == 0 and emu["math_attention"] > 0
    assert (emu["max_layer"] > 0) == (not ckpt)


def test_gpu_step_runs_on_cpu_at_tiny_size():
    """The --gpu measurement's training step (stage loss, autocast, checkpointing, clipping, AdamW)."""
    pytest.importorskip("peft")
    r = bench.measure_step("", "lora", "bf16+ckpt", rank=RANK, warmup=1, steps=1, device="cpu", height=32,
                           width=32, **TINY)  # fmt: skip
    assert r["status"] == "ok" and r["peak"] is None and len(r["losses"]) == 2 and r["s_per_step"] > 0
