"""`python -m minisvd generate`: end to end on tiny random weights, and the errors a user meets first."""

from __future__ import annotations

import numpy as np
import PIL.Image
import pytest

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
    ):
        assert opt in out
