"""The course's shipped checkpoints: every stage's `final/` folder, stored small in the repository and
unpacked to the complete folder on first use.

`scripts/train_checkpoints.py` trains the chain (vae -> clip -> image -> video -> hires -> i2v) with
`python -m minisvd train` and packs each final/ folder into `checkpoints/<preset>/<stage>/`:

    - only the parts the stage made: the frozen vae/ and clip/ that later stages carry forward are stored
      once, in the vae and clip stages' folders (they are byte-identical copies in the run folders);
    - floating-point weights in fp16: half the bytes (1.3M-parameter UNets: 2.6 MB each). The rounding is
      2^-11 relative, far below what the tiny models resolve (the notebooks' checks hold on the unpacked
      weights).

`unpack` (used by `minisvd.course.shipped_checkpoint`) rebuilds the complete final/ folder, fp32, in
`$MINISVD_CACHE/shipped/` (default ~/.cache/minisvd): loadable by `load_pipeline`, `--init` and diffusers
exactly as `train` wrote it, up to the fp16 rounding. It unpacks again when the shipped files change.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

CARRIED = ("vae", "clip")  # parts made by one stage and copied forward by every later one


def _convert_file(f: Path, out: Path, dtype: torch.dtype) -> None:
    """Copy one file; floating-point safetensors weights cast to `dtype`."""
    out.parent.mkdir(parents=True, exist_ok=True)
    if f.suffix == ".safetensors":
        sd = load_file(f)
        save_file({k: v.to(dtype) if v.is_floating_point() else v for k, v in sd.items()}, out)
    else:
        shutil.copy2(f, out)


def _convert(src: Path, dst: Path, dtype: torch.dtype) -> None:
    """Copy a file or a folder, casting floating-point safetensors weights to `dtype`."""
    if src.is_file():
        return _convert_file(src, dst, dtype)
    for f in sorted(p for p in src.rglob("*") if p.is_file()):
        _convert_file(f, dst / f.relative_to(src), dtype)


def pack(final: Path, dst: Path, stage: str) -> None:
    """A stage's run final/ -> its shipped folder: its own parts only, weights in fp16."""
    final, dst = Path(final), Path(dst)
    if dst.exists():
        shutil.rmtree(dst)
    dst.mkdir(parents=True)
    for entry in sorted(final.iterdir()):
        if entry.name in CARRIED and entry.name != stage:
            continue  # stored by the stage that made it
        _convert(entry, dst / entry.name, torch.float16)


def fingerprint(*folders: Path) -> str:
    """A hash of every file's bytes under the folders: unpack again when a shipped file changes."""
    h = hashlib.sha1()
    for folder in folders:
        for f in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
            h.update(str(f.relative_to(folder)).encode())
            h.update(f.read_bytes())
    return h.hexdigest()[:16]


def unpack(shipped_root: Path, stage: str, cache: Path | None = None) -> Path:
    """The complete fp32 final/ folder of `stage`, rebuilt from `shipped_root` (checkpoints/<preset>/)."""
    shipped_root = Path(shipped_root)
    src = shipped_root / stage
    if not src.is_dir():
        raise FileNotFoundError(
            f"no shipped checkpoint {src}: train it with `python scripts/train_checkpoints.py`"
        )
    sources = [src] + [
        shipped_root / p / p for p in CARRIED if p != stage and (shipped_root / p / p).is_dir()
    ]
    if cache is None:
        from minisvd.train.stages.diffusion import cache_root

        cache = cache_root() / "shipped"
    out = Path(cache) / shipped_root.name / stage
    key = fingerprint(*sources)
    if (out / ".shipped").exists() and (out / ".shipped").read_text() == key:
        return out
    tmp = out.with_name(f".{stage}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    _convert(src, tmp, torch.float32)
    for part in sources[1:]:
        _convert(part, tmp / part.name, torch.float32)
    (tmp / ".shipped").write_text(key)
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)  # whole or not at all: a crash never leaves a half-unpacked folder in use
    return out
