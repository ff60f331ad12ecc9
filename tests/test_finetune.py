"""Stage finetune (minisvd/train/stages/finetune.py): a pretrained SVD in the diffusers layout fine-tuned on a
folder of clips, each --trainable mode, frozen weights untouched, the output loaded by diffusers, LoRA merged
and saved on its own, exact resume, 2 DDP processes, and one-line errors. Tiny random SVD weights
(`tiny_random_pipeline` saved with `save_pretrained`), 32x32 clips of the toy world written as MP4."""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from minisvd.cli import main
from minisvd.train import TrainError, get_stage, train
from minisvd.train.checkpoint import read_state

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py
SIZE, FRAMES = dict(height=32, width=32), 4


@pytest.fixture(scope="module")
def svd(tmp_path_factory) -> Path:
    from minisvd.pipelines import tiny_random_pipeline

    folder = tmp_path_factory.mktemp("svd") / "tiny-svd"
    tiny_random_pipeline(seed=1, num_frames=FRAMES).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> Path:
    """Three 12-frame toy clips as MP4 files (any folder of videos is valid --data)."""
    from minisvd.data import make_clip, world_preset
    from minisvd.export import save_video

    folder = tmp_path_factory.mktemp("clips")
    world = world_preset("tiny", size=32, num_frames=12)
    for i in range(3):
        save_video(make_clip(world, i).frames01, folder / f"clip{i}.mp4", fps=8)
    return folder


def finetune(svd, data, out, trainable, steps=6, **config):
    stage = get_stage("finetune", "tiny", trainable=trainable, lora_rank=4, **SIZE)
    cfg = stage.default_config(steps=steps, batch_size=2, warmup_steps=1, log_every=2, ckpt_every=3, **config)
    return stage, train(stage, cfg, out, init=svd, data=data)


def unet_weights(svd: Path) -> dict[str, torch.Tensor]:
    return load_file(str(svd / "unet" / "diffusion_pytorch_model.safetensors"))


@pytest.mark.parametrize("trainable", ["all", "temporal", "lora"])
def test_each_mode_trains_only_its_weights(svd, clips, tmp_path, trainable):
    from minisvd.models.inflate import is_temporal_key

    stage, summary = finetune(svd, clips, tmp_path / "run", trainable, lr=1e-3, sample_every=6)
    assert (tmp_path / "run" / "samples" / "step_000006.gif").stat().st_size > 0  # truth | sample, 2 windows
    assert torch.isfinite(torch.tensor(summary["final_loss"]))
    assert len(stage.train_data) == 9  # 3 clips x 3 non-overlapping windows of 4 frames (12 frames each)
    before = unet_weights(svd)
    after = load_file(str(tmp_path / "run" / "last" / "model.safetensors"))  # the model itself, not merged
    base = {k.replace(".base_layer.", "."): v for k, v in after.items() if "lora_" not in k}
    assert base.keys() == before.keys()
    changed = {k for k in before if not torch.equal(before[k], base[k])}
    if trainable == "all":
        assert len(changed) >= 0.9 * len(before)
    elif trainable == "temporal":
        assert changed and all(is_temporal_key(k) for k in changed)  # every spatial weight bit-identical
        assert len(changed) >= 0.9 * sum(is_temporal_key(k) for k in before)
    else:
        assert not changed  # the base stays bit-identical; only adapters train
        lora = [k for k in after if "lora_B" in k]
        assert lora and any(after[k].abs().max() > 0 for k in lora)  # B starts at zero and moved
    final_unet = unet_weights(tmp_path / "run" / "final")
    assert final_unet.keys() == before.keys()  # the diffusers layout: LoRA merged, no peft names


def test_loss_falls_on_a_repeated_batch(svd, clips, tmp_path):
    """One window, trained 25 steps: its loss at fixed noise levels and noise falls below the start."""
    from torch.utils.data import default_collate

    from minisvd.pipelines import load_pipeline

    one = tmp_path / "one"
    one.mkdir()
    (one / "clip0.mp4").write_bytes((clips / "clip0.mp4").read_bytes())
    stage = get_stage("finetune", "tiny", trainable="all", max_windows_per_clip=1, **SIZE)
    cfg = stage.default_config(steps=25, batch_size=2, lr=1e-3, warmup_steps=1, ckpt_every=25)
    train(stage, cfg, tmp_path / "run", init=svd, data=one)
    batch = default_collate([stage.train_data[0]] * 8)
    stage.p_drop_context = stage.p_drop_latent = 0.0

    def loss(unet) -> float:
        with torch.no_grad():
            return stage.loss(unet.eval(), batch, torch.Generator().manual_seed(0))[0].mean().item()

    start = loss(load_pipeline(svd).unet)
    end = loss(load_pipeline(tmp_path / "run" / "final").unet)
    print(f"repeated batch: loss {start:.4f} -> {end:.4f}")
    assert end < 0.8 * start


def test_output_loads_in_diffusers_and_lora_is_saved_on_its_own(svd, clips, tmp_path, caplog):
    from helpers import load_diffusers_svd_quietly
    from peft import inject_adapter_in_model, set_peft_model_state_dict

    from minisvd.pipelines import load_pipeline
    from minisvd.train.stages.finetune import lora_config, merged_unet

    args = ["train", "finetune", "--init", svd, "--data", clips, "--out", tmp_path / "run", "--trainable", "lora",
            "--lora-rank", "4", "--height", "32", "--width", "32", "--steps", "6", "--batch-size", "2", "--lr", "1e-3"]  # fmt: skip
    assert main([str(a) for a in args]) == 0  # from the command line
    final = tmp_path / "run" / "final"
    ours = load_pipeline(final).unet.state_dict()
    pipe = load_diffusers_svd_quietly(final, caplog)
    theirs = pipe.unet.state_dict()
    assert all(torch.equal(theirs[k], ours[k]) for k in ours)
    # the adapter on its own, put on the original weights, merges to the same UNet
    assert (final / "lora" / "adapter_config.json").exists()
    original = load_pipeline(svd).unet.state_dict()
    adapted = inject_adapter_in_model(lora_config(4), load_pipeline(svd).unet)
    set_peft_model_state_dict(adapted, load_file(str(final / "lora" / "adapter_model.safetensors")))
    merged = merged_unet(adapted).state_dict()
    assert max((merged[k] - ours[k]).abs().max().item() for k in ours) <= 1e-6
    assert (
        max((merged[k] - original[k]).abs().max().item() for k in ours) > 1e-4
    )  # the adapters did something


def test_resume_is_exact(svd, clips, tmp_path):
    finetune(svd, clips, tmp_path / "straight", "lora", steps=6, lr=1e-3)
    stage = get_stage("finetune", "tiny", trainable="lora", lora_rank=4, **SIZE)
    cfg = stage.default_config(steps=3, batch_size=2, warmup_steps=1, log_every=2, ckpt_every=3, lr=1e-3)
    train(stage, cfg, tmp_path / "resumed", init=svd, data=clips)
    train("finetune", cfg.replace(steps=6), tmp_path / "resumed", resume=True, data=clips)  # init recorded
    a = load_file(str(tmp_path / "straight" / "last" / "model.safetensors"))
    b = load_file(str(tmp_path / "resumed" / "last" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert read_state(tmp_path / "resumed")["stage_fields"]["trainable"] == "lora"


PARALLEL = ["train", "finetune", "--trainable", "all", "--height", "32", "--width", "32", "--batch-size", "2",
            "--micro-batch-size", "1", "--warmup-steps", "1", "--lr", "1e-4", "--device", "cpu", "--log-every", "1",
            "--ckpt-every", "3"]  # fmt: skip


def cli(svd, clips, out, *extra, processes=1, steps=6):
    """`python -m minisvd train finetune ...`, under torchrun with `processes` > 1; asserts it succeeds."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    launcher = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc_per_node={processes}",
        f"--master_port={port}",
    ]
    cmd = (launcher if processes > 1 else [sys.executable]) + ["-m", "minisvd", *PARALLEL]
    cmd += ["--init", svd, "--data", clips, "--out", out, "--steps", steps, *extra]
    p = subprocess.run([str(c) for c in cmd], env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True,
                       text=True, timeout=300)  # fmt: skip
    assert p.returncode == 0, p.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def one_process(svd, clips, tmp_path_factory) -> Path:
    """The reference: 6 steps in one process, one micro-batch of one sample at a time."""
    return cli(svd, clips, tmp_path_factory.mktemp("runs") / "one")


def same_steps(a: Path, b: Path, weights_tol: float) -> float:
    """Every step: the same global-batch loss and gradient norm (the data split and the gradient averaging);
    returns the max abs difference of the final weights, checked against `weights_tol`."""
    logs = [[json.loads(line) for line in (o / "metrics.jsonl").read_text().splitlines()] for o in (a, b)]
    for x, y in zip(*logs, strict=True):
        assert abs(x["loss"] - y["loss"]) <= 1e-5 * y["loss"], (x, y)
        assert abs(x["grad_norm"] - y["grad_norm"]) <= 1e-4 * y["grad_norm"], (x, y)
    wa, wb = (load_file(str(o / "last" / "model.safetensors")) for o in (a, b))
    assert wa.keys() == wb.keys()
    diff = max((wa[k] - wb[k]).abs().max().item() for k in wa)
    assert diff <= weights_tol, diff
    return diff


def test_two_ddp_processes_match_one(svd, clips, one_process, tmp_path):
    ddp = cli(svd, clips, tmp_path / "ddp", processes=2)
    assert read_state(ddp)["world_size"] == 2
    diff = same_steps(ddp, one_process, weights_tol=1e-6)  # all-reduce of two values: exact here
    print(f"finetune, 2 DDP processes vs 1: max abs weight diff {diff:.2e}")


def test_fsdp_matches_one_process_and_resumes_exactly(svd, clips, one_process, tmp_path):
    """Full fine-tuning sharded over 2 processes (FSDP2, gloo): the same steps as one process; its checkpoint is
    a 1-process checkpoint (full weights, AdamW state by index); a resumed FSDP run ends bit-identical."""
    straight = cli(svd, clips, tmp_path / "fsdp", "--fsdp", processes=2)
    assert read_state(straight)["config"]["fsdp"] and read_state(straight)["world_size"] == 2
    diff = same_steps(straight, one_process, weights_tol=1e-4)
    print(f"finetune, 2 FSDP processes vs 1: max abs weight diff {diff:.2e} (lr 1e-4, 6 AdamW steps)")
    half = cli(svd, clips, tmp_path / "half", "--fsdp", processes=2, steps=3)
    cli(svd, clips, half, "--fsdp", "--resume", processes=2, steps=6)
    a, b = (load_file(str(o / "last" / "model.safetensors")) for o in (straight, half))
    assert all(torch.equal(a[k], b[k]) for k in a)
    cli(svd, clips, half, "--resume", steps=7)  # the FSDP checkpoint goes on in one process
    unet = load_file(str(half / "final" / "unet" / "diffusion_pytorch_model.safetensors"))
    assert unet.keys() == unet_weights(svd).keys()


def test_errors_are_one_line(svd, clips, tmp_path, capsys):
    def error(*args) -> str:
        assert main([str(a) for a in args]) == 2
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and "Traceback" not in err, err
        return err

    out = ["--out", tmp_path / "x"]
    assert "needs --init" in error("train", "finetune", "--data", clips, *out)
    assert "needs --data" in error("train", "finetune", "--init", svd, *out)
    assert "not a folder" in error("train", "finetune", "--init", svd, "--data", tmp_path / "none", *out)
    assert "no clips.csv and no video files" in error(
        "train", "finetune", "--init", svd, "--data", tmp_path, *out
    )
    assert "takes no settings (trainable)" in error("train", "toy", "--trainable", "lora", *out)
    if importlib.util.find_spec("bitsandbytes") is None:  # absent here and in CI: the message says what to do
        stage = get_stage("finetune", "tiny", trainable="temporal", **SIZE)
        with pytest.raises(TrainError, match="adamw8bit needs bitsandbytes"):
            train(
                stage,
                stage.default_config(steps=1, optimizer="adamw8bit"),
                tmp_path / "y",
                init=svd,
                data=clips,
            )


def test_windows_of_a_curate_folder_take_fps_and_motion_from_its_table(clips, tmp_path):
    """A curate output folder: fps = n_frames / duration_s of the table, motion = the table's score x the resize
    factor x the stride; windows are non-overlapping, every stride-th frame."""
    from minisvd.curation.outputs import CLIP_COLS, write_table
    from minisvd.data.motion_bucket import motion_bucket_id
    from minisvd.train.stages.finetune_data import load_windows

    (tmp_path / "clips").mkdir()
    rows = []
    for i, motion in enumerate((0.5, 4.0)):
        (tmp_path / "clips" / f"c{i}.mp4").write_bytes((clips / f"clip{i}.mp4").read_bytes())
        rows.append({"clip_id": f"c{i}", "video": f"v{i}.mp4", "start": 0, "end": 12, "n_frames": 12,
                     "duration_s": 12 / 24, "file": f"clips/c{i}.mp4", "motion": motion})  # fmt: skip
    write_table(tmp_path / "clips.csv", rows, CLIP_COLS)
    w = load_windows(tmp_path, 16, 16, num_frames=3, stride=2, max_windows=4)  # span 5: windows at 0, 5
    assert w["ids"] == ["c0@0", "c0@5", "c1@0", "c1@5"] and w["frames"].shape == (4, 3, 3, 16, 16)
    assert w["fps"].tolist() == [12.0] * 4  # 24 fps / stride 2
    scale = 16 / 32  # the clips are 32 px, trained at 16
    assert w["motion"].tolist() == pytest.approx([0.5 * scale * 2] * 2 + [4.0 * scale * 2] * 2)
    buckets = motion_bucket_id(w["motion"], 16)
    assert buckets[0] < buckets[2]  # the faster clip, the higher bucket
