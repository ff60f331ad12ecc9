"""The notebook helpers of `minisvd.course`: fast mode and where the shipped checkpoints come from."""

import pytest

from minisvd.course import fast_mode, shipped_checkpoint


def test_fast_mode_reads_the_environment(monkeypatch):
    for value, want in [("1", True), ("true", True), ("0", False), ("", False), ("false", False)]:
        monkeypatch.setenv("MINISVD_FAST", value)
        assert fast_mode() is want
    monkeypatch.delenv("MINISVD_FAST")
    assert fast_mode() is False


def test_minisvd_shipped_takes_run_folders_or_final_folders(tmp_path, monkeypatch):
    (tmp_path / "image" / "final" / "unet").mkdir(parents=True)  # a run folder (the demo's runs/image)
    (tmp_path / "video" / "unet").mkdir(parents=True)  # a final/ folder itself
    monkeypatch.setenv("MINISVD_SHIPPED", str(tmp_path))
    assert shipped_checkpoint("image") == tmp_path / "image" / "final"
    assert shipped_checkpoint("video") == tmp_path / "video"
    with pytest.raises(FileNotFoundError, match="MINISVD_SHIPPED"):
        shipped_checkpoint("i2v")
