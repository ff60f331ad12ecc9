"""`python -m minisvd generate`: end to end on tiny random weights, and the errors a user meets first."""

from __future__ import annotations

import shutil

import numpy as np
import PIL.Image
import pytest
import torch

from minisvd.__main__ import main
from minisvd.pipelines import tiny_random_pipeline


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny_weights")
    tiny_random_pipeline(seed=2, num_frames=3).save_pretrained(folder)
    return folder


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "in.png"
    rng = np.random.RandomState(0)
    PIL.Image.fromarray((rng.rand(48, 80, 3) * 255).astype(np.uint8)).save(path)
    return path


def test_generate_writes_a_video_with_a_progress_bar(weights, image, tmp_path, capsys):
    out = tmp_path / "out.gif"
    rc = main(
        [
            "generate",
            str(image),
            "--weights",
            str(weights),
            "--out",
            str(out),
            "--height",
            "64",
            "--width",
            "64",
            "--frames",
            "3",
            "--steps",
            "2",
            "--fps",
            "5",
            "--motion-bucket",
            "30",
            "--max-guidance",
            "2.5",
            "--seed",
            "1",
            "--device",
            "cpu",
            "--dtype",
            "fp32",
        ]
    )
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "wrote" in captured.out and "3 frames" in captured.out
    assert "2/2" in captured.err  # tqdm's bar over the steps
    with PIL.Image.open(out) as im:
        assert im.n_frames == 3 and im.size == (64, 64)


@pytest.mark.parametrize("size, nearest", [(("--height", "100"), "128"), (("--width", "1000"), "1024")])
def test_sizes_not_multiple_of_64_propose_the_nearest(weights, image, capsys, size, nearest):
    rc = main(["generate", str(image), "--weights", str(weights), *size])
    assert rc == 2
    assert f"nearest valid: {nearest}" in capsys.readouterr().err


def test_unreadable_or_missing_image(weights, tmp_path, capsys):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"this is not a png")
    assert main(["generate", str(bad), "--weights", str(weights)]) == 2
    assert "cannot read image" in capsys.readouterr().err
    assert main(["generate", str(tmp_path / "absent.png"), "--weights", str(weights)]) == 2
    assert "image not found" in capsys.readouterr().err


def test_missing_weights_say_how_to_get_them(image, tmp_path, capsys):
    assert (
        main(
            [
                "generate",
                str(image),
                "--weights",
                str(tmp_path / "no-weights"),
                "--height",
                "64",
                "--width",
                "64",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "weights not found" in err and "huggingface-cli download" in err


def test_help_lists_the_options(capsys):
    with pytest.raises(SystemExit):
        main(["generate", "--help"])
    out = capsys.readouterr().out
    for opt in (
        "--weights",
        "--frames",
        "--steps",
        "--fps",
        "--motion-bucket",
        "--min-guidance",
        "--seed",
        "--device",
        "--dtype",
        "--offload",
        "--debug",
    ):
        assert opt in out
    assert (
        "exit status:" in out and "2  a setting that cannot work" in out and "3  broken weight files" in out
    )


# ----- issue 12.2: every bad setting is one line before anything loads; broken weights name the file ----------
def one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("\n") == 1 and err.startswith("error: "), err
    return err.strip()


@pytest.mark.parametrize(
    "setting, message",
    [
        (["--steps", "0"], "--steps must be >= 1 (got 0)"),
        (["--frames", "0"], "--frames must be >= 1 (got 0), or left out for the model's default"),
        (["--frames", "-2"], "--frames must be >= 1 (got -2)"),
        (
            ["--fps", "0"],
            "--fps must be >= 1 (got 0): the video plays at fps and SVD is conditioned on fps - 1",
        ),
        (["--fps", "-3"], "--fps must be >= 1 (got -3)"),
        (["--height", "0"], "--height must be a multiple of 64, at least 64 (got 0); nearest valid: 64"),
        (["--decode-chunk", "0"], "--decode-chunk must be >= 1 (got 0), or left out to decode all frames"),
        (["--noise-aug", "-0.5"], "--noise-aug must be >= 0 (got -0.5)"),
        (["--device", "nonsense"], "--device nonsense is not a device: use cuda, cuda:N, mps or cpu"),
    ],
)
def test_bad_settings_are_one_line_before_the_image_and_weights_load(tmp_path, capsys, setting, message):
    absent = str(tmp_path / "absent")  # neither image nor weights exist: the settings error must win
    assert main(["generate", absent + ".png", "--weights", absent, *setting]) == 2
    assert message in one_line_error(capsys)


def test_every_bad_setting_in_one_line(tmp_path, capsys):
    absent = str(tmp_path / "absent")
    assert main(["generate", absent + ".png", "--weights", absent, "--steps", "0", "--width", "30"]) == 2
    err = one_line_error(capsys)
    assert "--width must be a multiple of 64, at least 64 (got 30)" in err and "--steps must be >= 1" in err


def test_cuda_on_a_machine_without_it(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    absent = str(tmp_path / "absent")
    assert main(["generate", absent + ".png", "--weights", absent, "--device", "cuda"]) == 2
    err = one_line_error(capsys)
    assert err.startswith("error: --device cuda: ") and err.endswith("; use --device cpu")


def test_tiny_image_is_one_line(tmp_path, capsys):
    path = tmp_path / "dot.png"
    PIL.Image.new("RGB", (1, 1)).save(path)
    assert main(["generate", str(path), "--weights", str(tmp_path / "absent")]) == 2
    assert "the image is 1x1 pixels; at least 8x8 is needed" in one_line_error(capsys)


def broken_copy(weights, tmp_path, name: str, damage) -> tuple:
    folder = tmp_path / "broken"
    shutil.copytree(weights, folder)
    damage(folder / name)
    return folder, folder / name


def truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 9 // 10])


@pytest.mark.parametrize(
    "name, damage, says",
    [
        ("unet/diffusion_pytorch_model.safetensors", truncate, "is truncated or corrupt"),
        ("vae/diffusion_pytorch_model.safetensors", truncate, "is truncated or corrupt"),
        ("image_encoder/model.safetensors", truncate, "is truncated or corrupt"),
        ("unet/config.json", lambda p: p.write_text('{"num_frames": 3,'), "is not valid JSON"),
    ],
)
def test_broken_weight_files_are_named_in_one_line(weights, image, tmp_path, capsys, name, damage, says):
    folder, broken = broken_copy(weights, tmp_path, name, damage)
    args = [
        "generate",
        str(image),
        "--weights",
        str(folder),
        "--height",
        "64",
        "--width",
        "64",
        "--device",
        "cpu",
    ]
    assert main(args) == 3
    err = one_line_error(capsys)
    assert f"error: {broken} {says}" in err and "again" in err


def test_unexpected_errors_are_one_line_unless_debug(weights, image, capsys, monkeypatch):
    import minisvd.pipelines.image_to_video as i2v

    def boom(*a, **k):
        raise RuntimeError("boom\nsecond line")

    monkeypatch.setattr(i2v, "load_pipeline", boom)
    args = [
        "generate",
        str(image),
        "--weights",
        str(weights),
        "--height",
        "64",
        "--width",
        "64",
        "--device",
        "cpu",
    ]
    assert main(args) == 1
    assert one_line_error(capsys) == "error: RuntimeError: boom (--debug shows the traceback)"
    assert main([*args, "--debug"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and err.strip().splitlines()[-1] == "error: RuntimeError: boom"


def test_weights_default_to_minisvd_svd_weights(weights, image, tmp_path, capsys, monkeypatch):
    out = tmp_path / "out.gif"
    monkeypatch.setenv("MINISVD_SVD_WEIGHTS", str(weights))
    args = ["generate", str(image), "--out", str(out), "--height", "64", "--width", "64"]
    assert main([*args, "--frames", "2", "--steps", "1", "--device", "cpu"]) == 0, capsys.readouterr().err
    with PIL.Image.open(out) as im:
        assert im.n_frames == 2
    monkeypatch.delenv("MINISVD_SVD_WEIGHTS")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))  # an empty cache: nothing to fall back to
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "no weights given, MINISVD_SVD_WEIGHTS is not set" in err and "huggingface-cli download" in err
