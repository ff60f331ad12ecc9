"""`python -m minisvd demo`, the README's main job, end to end at a fraction of its steps."""

import json

import pytest

from minisvd.demo import DemoConfig, run_demo
from minisvd.train import get_stage
from minisvd.train.stages.chain import ORDER


@pytest.fixture
def tiny_demo(tmp_path, monkeypatch):
    monkeypatch.setenv("MINISVD_CACHE", str(tmp_path / "cache"))
    cfg = DemoConfig(out=tmp_path / "demo", fast=True, fast_step_fraction=0.01)
    cfg.raw_videos, cfg.examples, cfg.sample_steps = 4, 1, 2
    return cfg


def test_demo_writes_every_output_and_a_second_run_resumes(tiny_demo, capsys):
    result = run_demo(tiny_demo)
    out = tiny_demo.out
    for name in ("video.mp4", "video.gif", "report.md", "report.json", "model/model_index.json"):
        assert (out / name).is_file(), name
    report = json.loads((out / "report.json").read_text())
    assert list(report["stages"]) == list(ORDER)
    for s in ORDER:  # 1% of each stage's default steps, at least 4
        assert report["stages"][s]["step"] == max(4, int(get_stage(s).default_config().steps * 0.01)), s
    assert set(report["motion"]["mean_motion_per_bucket"]) == {str(b) for b in tiny_demo.buckets}
    assert report["samples"]["mse_copy_first"] > 0 and report["samples"]["motion_truth"] > 0
    rising = [result["motion"]["mean_motion_per_bucket"][b] for b in tiny_demo.buckets]
    assert result["motion"]["motion_rises_with_bucket"] == (rising == sorted(set(rising)))
    from PIL import Image

    gif = Image.open(out / "video.gif")  # one example: truth | one column per bucket, 32 px each
    assert gif.size == (32 * (1 + len(tiny_demo.buckets)), 32) and gif.n_frames == 8
    assert "| i2v | 10 |" in (out / "report.md").read_text()

    capsys.readouterr()
    run_demo(tiny_demo)  # everything finished: kept, nothing trained again
    log = capsys.readouterr().out
    assert all(f"stage {s}: finished earlier, kept" in log for s in ORDER)
