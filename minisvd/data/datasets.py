"""Torch datasets over the toy world: clips (stage II / III) and single frames (stage I), on the fly or cached.

Every dataset here is map-style (index -> sample) and returns plain dicts, the same for toy clips and
for curated clips (`curated.py`), so a training loop does not care where its data came from:

    frames            (F, 3, H, W) float32 in [-1, 1]  (the VAE / pixel convention)
    caption           str
    fps               int    -> SVD's fps_id = fps - 1 (`minisvd.conditioning.micro`)
    motion            float  the curation motion score, px / frame at this resolution
    motion_bucket_id  int    0..255, from `motion` (`motion_bucket.motion_bucket_id`)
    ...               metadata (object, background, direction, speed, camera, ...)

Two ways to get clips, measured on this project's 2-core CPU (a tiny-UNet training step on 16 clips of
8 x 32 x 32 takes ~0.2 s, so data must come at >= 16 clips per 20 ms, i.e. 800 clips/s):

* `ToyClips(config, n)`: renders clip i when asked: ~1,170 clips/s at 32 px (13.7 ms per 16), ~650 at
  64 px (24.6 ms per 16: short of the budget, use the cache there).
  Its `motion` is *predicted* from the exact flow (`motion_bucket.predict_score`): cheap, close to the
  measured score (Spearman ~0.95) but not the measured score itself.
* `ToyClips(config, n, cache=True)`: renders all n clips once into one uint8 tensor (N, F, 3, H, W) and
  runs the real Farneback score on each (`motion_bucket.measure_motion`; building costs ~8 ms per clip at
  32 px, ~10 ms at 64 px); reading is then a slice and a conversion: ~16,000 clips/s at 32 px (1.0 ms
  per 16), ~7,000 at 64 px (2.3 ms). With `cache_dir` the tensor is saved as a safetensors file named
  after the config and the length, and loaded next time.

`collate` stacks tensors and numbers and keeps strings as lists, for `torch.utils.data.DataLoader`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm import tqdm

from minisvd.data.motion_bucket import measure_motion, motion_bucket_id
from minisvd.data.world import WorldConfig, make_clip, make_frame

CACHE_VERSION = 1  # bump when rendering changes, so old cache files are not reused


def to_pixels(x: torch.Tensor) -> torch.Tensor:
    """uint8 0..255 -> float32 in [-1, 1].

    Done in numpy on purpose (here and in `collate`): torch splits element-wise ops on tensors of more
    than 32k elements over its worker threads, and on a busy 2-core machine a thread waiting for a
    core made this conversion 50x slower (0.4 s instead of 8 ms for 16 clips at 64 px).
    """
    return torch.from_numpy(x.numpy().astype(np.float32) * np.float32(1 / 127.5) - np.float32(1.0))


def config_key(config: WorldConfig, length: int, kind: str) -> str:
    """A short hash naming a cache file: the same config and length give the same name."""
    text = json.dumps(
        {"config": asdict(config), "length": length, "kind": kind, "v": CACHE_VERSION}, sort_keys=True
    )
    return hashlib.sha1(text.encode()).hexdigest()[:12]


class ToyClips(Dataset):
    """`length` clips of the toy world `config`; clip i is `make_clip(config, i)`."""

    def __init__(
        self,
        config: WorldConfig | None = None,
        length: int = 1024,
        cache: bool = False,
        cache_dir: str | Path | None = None,  # where to save / find the cache file (implies cache=True)
        progress: bool = False,
    ):
        self.config = config or WorldConfig()
        self.length = int(length)
        self.cached = bool(cache or cache_dir)
        self.motion_source = "measured" if self.cached else "predicted"
        self.frames: torch.Tensor | None = None  # (N, F, 3, H, W) uint8 when cached
        self.meta: list[dict] = []
        if self.cached:
            self.frames, self.meta = self._load_or_build(cache_dir, progress)

    def __len__(self) -> int:
        return self.length

    # ------------------------------------------------------------------ the cache
    def cache_path(self, cache_dir: str | Path) -> Path:
        return Path(cache_dir) / f"toyclips_{config_key(self.config, self.length, 'clips')}.safetensors"

    def _load_or_build(self, cache_dir, progress) -> tuple[torch.Tensor, list[dict]]:
        from safetensors.torch import load_file, save_file

        path = self.cache_path(cache_dir) if cache_dir else None
        if path is not None and path.exists():
            from safetensors import safe_open

            with safe_open(str(path), "pt") as f:
                meta = json.loads(f.metadata()["clips"])
            return load_file(str(path))["frames"], meta
        c = self.config
        frames = torch.empty((self.length, c.num_frames, 3, c.size, c.size), dtype=torch.uint8)
        meta = []
        for i in tqdm(range(self.length), desc="toy clips", disable=not progress):
            clip = make_clip(c, i)
            frames[i] = clip.frames
            m = clip.metadata()
            m["motion_predicted"] = m["motion"]
            m["motion"] = round(measure_motion(clip.frames, clip.fps), 5)  # the real curation score, once
            meta.append(m)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            save_file({"frames": frames}, str(tmp), metadata={"clips": json.dumps(meta)})
            tmp.replace(path)
        return frames, meta

    # ------------------------------------------------------------------ samples
    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for {self.length} clips")
        if self.cached:
            frames, m = self.frames[index], self.meta[index]
        else:
            clip = make_clip(self.config, index)
            frames, m = clip.frames, clip.metadata()
        return {
            **m,
            "frames": to_pixels(frames),  # (F, 3, H, W) in [-1, 1]
            "motion_bucket_id": motion_bucket_id(m["motion"], self.config.size),
        }


class ToyFrames(Dataset):
    """Single frames for stage I (image pretraining): sample i is a frame of clip i, captioned without motion.

    Samples: `image` (3, H, W) float32 in [-1, 1], `caption` ("a cat on grass"), `object`, `background`.
    """

    def __init__(self, config: WorldConfig | None = None, length: int = 4096, cache: bool = False):
        self.config = config or WorldConfig()
        self.length = int(length)
        self.images: torch.Tensor | None = None  # (N, 3, H, W) uint8 when cached
        self.meta: list[dict] = []
        if cache:
            c = self.config
            self.images = torch.empty((self.length, 3, c.size, c.size), dtype=torch.uint8)
            for i in range(self.length):
                f = make_frame(c, i)
                self.images[i] = f.image
                self.meta.append(self._meta(f))

    @staticmethod
    def _meta(f) -> dict:
        return {"caption": f.caption, "object": f.object, "background": f.background, "index": f.index}

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for {self.length} frames")
        if self.images is not None:
            return {**self.meta[index], "image": to_pixels(self.images[index])}
        f = make_frame(self.config, index)
        return {**self._meta(f), "image": to_pixels(f.image)}


def collate(samples: list[dict]) -> dict:
    """A batch from sample dicts: tensors stacked (B, ...), numbers as a (B,) tensor, anything else a list."""
    out = {}
    for key in samples[0]:
        values = [s[key] for s in samples]
        if isinstance(values[0], torch.Tensor):
            out[key] = torch.from_numpy(np.stack([v.numpy() for v in values]))  # one thread, see `to_pixels`
        elif all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in values):
            out[key] = torch.tensor(values, dtype=torch.long)
        elif all(
            isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) for v in values
        ):
            out[key] = torch.tensor(values, dtype=torch.float32)
        else:
            out[key] = values
    return out
