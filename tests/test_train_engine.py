"""The training engine (minisvd/train/): exact resume after SIGKILL, 2 DDP processes = 1 process, the NaN
guard, atomic checkpoints, the data order, and one-line errors for bad input. All on the toy stage (tiny
UNet, 4 frames of 16x16), a few steps each; the subprocesses run with one thread for determinism."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from minisvd.cli import main
from minisvd.models.unet import UNet
from minisvd.train import EMA, STAGES, TrainConfig, TrainError, ema_beta, preset_config, register_stage, train
from minisvd.train.checkpoint import optimizer_from_files, optimizer_to_files, read_state, recover
from minisvd.train.data import DataOrder, micro_batches
from minisvd.train.stages.toy import ToyStage

STEPS = 6
RUN = "--batch-size 2 --micro-batch-size 1 --ckpt-every 1 --log-every 2 --sample-every 0 --device cpu".split()
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "minisvd", "train", "toy", *args]


def run(cmd: list, timeout: float = 120) -> subprocess.CompletedProcess:
    p = subprocess.run([str(c) for c in cmd], env=ENV, capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, p.stderr[-3000:]
    return p


def weights(out: Path, name: str) -> dict[str, torch.Tensor]:
    return load_file(str(out / "last" / f"{name}.safetensors"))


def max_abs_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a)


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> Path:
    """One uninterrupted run of STEPS steps in a subprocess: the reference of the resume and DDP tests.
    It also samples every 3 steps (the other runs never do): sampling must not change the training."""
    out = tmp_path_factory.mktemp("runs") / "straight"
    p = run(cli("--out", out, "--steps", STEPS, *RUN, "--sample-every", 3))
    assert "final loss" in p.stdout
    return out


# ----------------------------------------------------------------------------------------------------------
# The guarantees


def test_straight_run_writes_everything(straight):
    state = read_state(straight)
    assert state["step"] == STEPS and state["stage"] == "toy" and state["config"]["micro_batch_size"] == 1
    assert {"torch_cpu", "numpy", "python"} <= set(state["rng"])
    lines = [json.loads(line) for line in (straight / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [2, 4, 6]
    assert {"loss", "lr", "grad_norm", "steps_per_s", "samples_per_s", "loss_by_sigma"} <= set(lines[-1])
    files = (
        "loss.png",
        "final/model.safetensors",
        "final/config.json",
        "command.txt",
        "samples/step_000003.png",
    )
    for path in files:
        assert (straight / path).exists(), path
    assert "--ckpt-every 1" in (straight / "command.txt").read_text()
    assert not any(p.name.startswith("last.") for p in straight.iterdir())  # no tmp or old folder left


def test_resume_after_sigkill_is_bit_identical(straight, tmp_path):
    out = tmp_path / "killed"
    # the killed run aims far beyond STEPS, so it is surely killed mid-run; the resume then stops at STEPS
    proc = subprocess.Popen(
        [str(c) for c in cli("--out", out, "--steps", 1000, *RUN)],
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 90
    try:
        while time.time() < deadline:
            try:
                if json.loads((out / "last" / "state.json").read_text())["step"] >= 2:
                    break
            except (FileNotFoundError, json.JSONDecodeError):
                pass
            time.sleep(0.02)
        else:
            pytest.fail("the run did not reach step 2 in 90 s")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    run(cli("--out", out, "--resume", "--steps", STEPS, *RUN))
    state = read_state(out)
    assert state["step"] == STEPS
    for name in ("model", "ema"):
        a, b = weights(straight, name), weights(out, name)
        assert all(torch.equal(a[k], b[k]) for k in a), f"{name} differs after resume"
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps)) and steps[-1] == STEPS  # lines after the checkpoint were dropped
    assert len((out / "command.txt").read_text().splitlines()) == 2


def test_two_ddp_processes_train_the_same_weights_as_one(straight, tmp_path):
    out = tmp_path / "ddp"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={port}"]
    run(launcher + ["-m", "minisvd", "train", "toy", "--out", out, "--steps", STEPS, *RUN])
    assert read_state(out)["world_size"] == 2
    for name in ("model", "ema"):
        diff = max_abs_diff(weights(straight, name), weights(out, name))
        print(f"DDP (2 processes) vs 1 process, {name}: max abs diff {diff:.3g}")
        assert diff <= 1e-5, f"{name}: max abs diff {diff}"
    first = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    ref = json.loads((straight / "metrics.jsonl").read_text().splitlines()[0])
    assert abs(first["loss"] - ref["loss"]) <= 1e-6  # the loss is averaged over the global batch in both


# ----------------------------------------------------------------------------------------------------------
# The NaN guard and bad input: in this process, through the CLI's main()


class NaNAtStep3(ToyStage):
    name = "toy-nan-test"

    def __init__(self, preset="tiny"):
        super().__init__(preset)
        self.calls = 0

    def loss(self, model, batch, generator):
        per_sample, extras = super().loss(model, batch, generator)
        self.calls += 1  # one call per step (micro batch = batch)
        return (per_sample * float("nan") if self.calls == 3 else per_sample), extras


class EmptyToy(ToyStage):
    name = "toy-empty-test"

    def dataset(self, data):
        return []


@pytest.fixture
def test_stages():
    for cls in (NaNAtStep3, EmptyToy):
        register_stage(cls)
    yield
    for cls in (NaNAtStep3, EmptyToy):
        STAGES.pop(cls.name)


def error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.replace("\r", "\n").splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    return lines[0]


FAST = "--steps 5 --batch-size 2 --sample-every 0 --device cpu".split()


def test_nan_loss_stops_naming_step_and_stage_and_keeps_last_good_state(test_stages, tmp_path, capsys):
    out = tmp_path / "nan"
    rc = main(["train", "toy-nan-test", "--out", str(out), *FAST, "--ckpt-every", "100"])
    assert rc == 1
    line = error_line(capsys)
    assert "step 3" in line and "toy-nan-test" in line and "step 2" in line
    state = read_state(out)
    assert state["step"] == 2  # saved by the guard itself (ckpt_every=100): the state after step 2
    assert all(t.isfinite().all() for t in weights(out, "model").values())

    # the same folder now holds an unfinished run: refused without --resume, and by another stage
    assert main(["train", "toy-nan-test", "--out", str(out), *FAST]) == 2
    assert "use --resume" in error_line(capsys)
    assert main(["train", "toy", "--out", str(out), *FAST]) == 2
    assert "run of stage 'toy-nan-test'" in (line := error_line(capsys)) and "another --out" in line
    assert main(["train", "toy", "--out", str(out), "--resume"]) == 2
    assert "another --out" in error_line(capsys)
    assert read_state(out)["step"] == 2 and len((out / "command.txt").read_text().splitlines()) == 1


def test_bad_input_gives_one_line_errors(test_stages, straight, tmp_path, capsys):
    assert main(["train", "toy", "--out", str(tmp_path / "none"), "--resume"]) == 2
    assert "holds no checkpoint" in error_line(capsys)
    assert main(["train", "toy", "--out", str(straight), *FAST]) == 2
    assert "a finished run" in error_line(capsys)
    assert main(["train", "toy", "--out", str(straight), "--resume", "--lr", "1"]) == 2
    assert "lr 1.0 (saved: 0.0002)" in error_line(capsys)
    assert main(["train", "toy-empty-test", "--out", str(tmp_path / "empty"), *FAST]) == 2
    assert "dataset is empty" in error_line(capsys)
    missing = str(tmp_path / "missing.safetensors")
    assert main(["train", "toy", "--out", str(tmp_path / "i0"), "--init", missing]) == 2
    assert "not found" in error_line(capsys)

    # weights of another UNet (4 input channels instead of 3): every mis-shaped key is named with its shapes
    other = UNet(ToyStage("tiny").unet_config.replace(in_channels=4))
    other_file = str(tmp_path / "other.safetensors")
    save_file(other.state_dict(), other_file)
    assert main(["train", "toy", "--out", str(tmp_path / "i1"), "--init", other_file]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "conv_in.weight: expected (32, 3, 3, 3), got (32, 4, 3, 3)" in err
    assert not (tmp_path / "i1").exists()  # nothing written for a refused run

    for argv in (["train", "nope", "--out", "x"], ["train", "toy", "--out", "x", "--preset", "huge"]):
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 2
    capsys.readouterr()
    with pytest.raises(TrainError, match="unknown stage 'nope'"):
        train("nope", TrainConfig.tiny(), tmp_path / "x")
    with pytest.raises(ValueError, match="unknown preset"):
        preset_config("huge")


def test_init_from_an_earlier_run_and_python_api(straight, tmp_path):
    config = TrainConfig.tiny(steps=1, batch_size=2, sample_every=0, device="cpu")
    summary = train("toy", config, tmp_path / "next", init=straight / "final")
    assert summary["step"] == 1 and summary["final_loss"] is not None and Path(summary["final"]).exists()
    assert read_state(tmp_path / "next")["init"] == str(straight / "final")


# ----------------------------------------------------------------------------------------------------------
# The pieces


def test_config_json_round_trip_and_presets():
    c = TrainConfig.small(lr=3e-5, betas=(0.9, 0.95))
    d = json.loads(json.dumps(c.to_dict()))
    assert TrainConfig.from_dict(d) == c and c.replace(steps=7).steps == 7
    assert TrainConfig.tiny().preset == "tiny" and preset_config("small").batch_size == 32
    with pytest.raises(ValueError, match="precision"):
        TrainConfig(precision="fp16")
    with pytest.raises(ValueError, match="micro_batch_size"):
        TrainConfig(batch_size=8, micro_batch_size=3)


def test_ema_half_life_with_ramp_up():
    assert ema_beta(10_000, 100, halflife_samples=100, rampup=None) == 0.5  # one half-life per step
    early, late = ema_beta(800, 8, 2_000, 0.05), ema_beta(800_000, 8, 2_000, 0.05)
    assert early == 0.5 ** (8 / 40) and late == 0.5 ** (8 / 2_000)  # ramp-up: short half-life early on
    model = torch.nn.Linear(2, 2)
    ema = EMA(model)
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.update(model, beta=0.75)
    torch.testing.assert_close(ema.model.weight, model.weight - 0.75)


def test_optimizer_state_round_trips_through_safe_files():
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), betas=(0.8, 0.9))
    for _ in range(2):
        model(torch.randn(4, 3)).sum().backward()
        opt.step()
    tensors, structure = optimizer_to_files(opt.state_dict())
    structure = json.loads(json.dumps(structure))  # what the metadata holds
    opt2 = torch.optim.AdamW(torch.nn.Linear(3, 2).parameters())
    opt2.load_state_dict(optimizer_from_files(tensors, structure))
    a, b = opt.state_dict(), opt2.state_dict()
    assert a["param_groups"] == b["param_groups"]
    assert all(torch.equal(a["state"][i][k], b["state"][i][k]) for i in a["state"] for k in a["state"][i])


def test_recover_an_interrupted_save(tmp_path):
    (tmp_path / "last.old").mkdir()
    (tmp_path / "last.old" / "state.json").write_text('{"step": 4}')
    (tmp_path / "last.tmp-123").mkdir()  # a save killed while writing
    recover(tmp_path)
    assert read_state(tmp_path) == {"step": 4} and sorted(p.name for p in tmp_path.iterdir()) == ["last"]
    (tmp_path / "last.old").mkdir()  # killed after the second rename: `last` is the new one
    recover(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last"]


def test_data_order_is_seeded_resumable_and_split_like_one_process():
    order = DataOrder(10, seed=3)
    first = order.take(7) + order.take(7)  # crosses into epoch 1
    assert sorted(first[:10]) == list(range(10)) and order.position() == {"epoch": 1, "index": 4}
    resumed = DataOrder(10, seed=3, epoch=1, index=4)
    assert resumed.take(6) == order.take(6)
    one = list(micro_batches(DataOrder(10, 3), 3, 4, 1, rank=0, world_size=1))
    r0 = list(micro_batches(DataOrder(10, 3), 3, 4, 1, rank=0, world_size=2))
    r1 = list(micro_batches(DataOrder(10, 3), 3, 4, 1, rank=1, world_size=2))
    assert one == [m for step in range(3) for m in r0[2 * step : 2 * step + 2] + r1[2 * step : 2 * step + 2]]


def test_registry_and_cli_offer_the_toy_stage():
    assert STAGES["toy"] is ToyStage
    with pytest.raises(ValueError, match="own `name`"):
        register_stage(type("Nameless", (ToyStage,), {"name": ""}))
