"""The shipped checkpoints: packed small (own parts, fp16), unpacked to complete fp32 final/ folders."""

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from minisvd.train.shipped import pack, unpack

REPO = Path(__file__).resolve().parents[1]


def _final(root: Path, parts: dict[str, torch.Tensor]) -> Path:
    """A fake run final/ folder: one weights file and a config per part."""
    for part, w in parts.items():
        (root / part).mkdir(parents=True)
        save_file({"w": w, "step": torch.tensor([3])}, root / part / "model.safetensors")
        (root / part / "config.json").write_text('{"part": "%s"}' % part)
    (root / "stage.json").write_text("{}")
    return root


def test_pack_keeps_own_parts_in_fp16_and_unpack_restores_the_whole_folder(tmp_path):
    g = torch.Generator().manual_seed(0)
    vae, clip, unet = (torch.randn(64, generator=g) for _ in range(3))
    runs, ship = tmp_path / "runs", tmp_path / "ship" / "tiny"
    pack(_final(runs / "vae", {"vae": vae}), ship / "vae", "vae")
    pack(_final(runs / "clip", {"vae": vae, "clip": clip}), ship / "clip", "clip")
    pack(_final(runs / "image", {"vae": vae, "clip": clip, "unet": unet}), ship / "image", "image")

    assert sorted(p.name for p in (ship / "image").iterdir()) == ["stage.json", "unet"]  # carried parts: once
    assert sorted(p.name for p in (ship / "clip").iterdir()) == ["clip", "stage.json"]
    stored = load_file(ship / "image" / "unet" / "model.safetensors")
    assert stored["w"].dtype == torch.float16 and stored["step"].dtype == torch.int64

    out = unpack(ship, "image", cache=tmp_path / "cache")
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == [
        "clip",
        "stage.json",
        "unet",
        "vae",
    ]
    for part, w in (("vae", vae), ("clip", clip), ("unet", unet)):
        sd = load_file(out / part / "model.safetensors")
        assert sd["w"].dtype == torch.float32
        assert torch.equal(sd["w"], w.half().float())  # exactly the fp16 rounding
        assert (sd["w"] - w).abs().max() <= 1e-3 * w.abs().max()
        assert (out / part / "config.json").read_text() == '{"part": "%s"}' % part

    # unpacked once; a changed shipped file unpacks again
    marker = out / "unet" / "mine.txt"
    marker.write_text("x")
    assert unpack(ship, "image", cache=tmp_path / "cache") == out and marker.exists()
    save_file(
        {"w": unet.half() * 2, "step": torch.tensor([3])}, ship / "image" / "unet" / "model.safetensors"
    )
    out = unpack(ship, "image", cache=tmp_path / "cache")
    assert not marker.exists()
    assert torch.equal(load_file(out / "unet" / "model.safetensors")["w"], (unet.half() * 2).float())


def test_unpack_names_a_missing_stage(tmp_path):
    with pytest.raises(FileNotFoundError, match="train_checkpoints"):
        unpack(tmp_path, "video", cache=tmp_path / "cache")


SHIPPED = REPO / "checkpoints" / "tiny"


@pytest.mark.skipif(
    not (SHIPPED / "MANIFEST.json").exists(), reason="no shipped checkpoints in this checkout"
)
def test_the_shipped_checkpoints_are_small_recorded_and_load(tmp_path, monkeypatch):
    import json

    from minisvd.course import shipped_checkpoint
    from minisvd.pipelines import load_pipeline
    from minisvd.train.stages.chain import ORDER

    monkeypatch.setenv("MINISVD_CACHE", str(tmp_path))
    monkeypatch.delenv("MINISVD_SHIPPED", raising=False)
    size = sum(f.stat().st_size for f in SHIPPED.rglob("*") if f.is_file())
    assert size <= 20e6, f"shipped checkpoints {size / 1e6:.1f} MB > 20 MB"
    manifest = json.loads((SHIPPED / "MANIFEST.json").read_text())
    assert set(manifest["commands"]) == set(ORDER)
    assert all("-m minisvd train " + stage in cmd for stage, cmd in manifest["commands"].items())
    for stage in ORDER:
        final = shipped_checkpoint(stage)
        assert (final / ("vae" if stage == "vae" else "unet" if stage not in ("clip",) else "clip")).is_dir()
    pipe = load_pipeline(shipped_checkpoint("i2v"), match_diffusers=True)
    frames = pipe(torch.rand(3, 32, 32), height=32, width=32, num_frames=4, num_inference_steps=2)
    assert frames.shape == (4, 3, 32, 32) and torch.isfinite(frames).all()
