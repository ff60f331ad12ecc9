"""Training clips from a `python -m minisvd curate` output folder (Blattmann et al. 2023, Sec. 3.1 -> Sec. 4).

The curation pipeline (`minisvd.curation.curate`) writes `OUT/clips.csv` (one row per clip: where it
came from, its motion, text and aesthetic scores, captions) and the clip files under `OUT/clips/`.
`CuratedClips` turns that folder into the same samples as the toy datasets (`datasets.py`):

1. read `clips.csv` and keep the clips that pass the quantile filters (the paper's, or the offline
   stand-ins `STANDIN_FILTERS`; `minisvd.curation.filtering.apply_filters`), or a list of clip ids;
2. decode every kept clip file once, resize it to cover `size` and centre-crop it (any aspect ratio),
   and keep all of them in one uint8 tensor, saved next to the tables (`OUT/minisvd_cache/`) so the next
   run loads it in a fraction of a second. The cache is named after the contents of `clips.csv` and the
   settings, so editing the table (or re-running curate) invalidates it;
3. cut `num_frames` frames from a clip (consecutive, or every `stride`-th: a 24-fps clip with stride 3
   becomes 8 fps) and return frames in [-1, 1] with the caption, the frame rate, and the motion score.

`motion` is the table's `motion` column (the curation score, px / frame of the source clip) converted to
pixels per frame *of the returned frames*: times the resize factor and the stride. That is the scale of
the toy datasets' `motion`, so both give the same `motion_bucket_id` for the same motion.

Captions come from `caption_summary` (or the first caption column present); `captions={clip_id: text}`
replaces them, e.g. with the toy world's true captions (`raw.true_captions`).

A clip file that cannot be decoded is skipped and counted (`skipped`, with one warning line), and so is a
clip shorter than the frames asked for (`too_short`).
"""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm import tqdm

from minisvd.curation.filtering import STANDIN_FILTERS, Filter, apply_filters
from minisvd.curation.outputs import read_table
from minisvd.curation.video_io import iter_frames
from minisvd.data.datasets import to_pixels
from minisvd.data.motion_bucket import motion_bucket_id

CAPTION_COLUMNS = ("caption_summary", "caption_clip", "caption_frame", "caption")
CACHE_VERSION = 1
HOW_TO = "run `python -m minisvd curate VIDEOS --out {folder}` first"


def resize_cover(rgb: np.ndarray, height: int, width: int) -> tuple[np.ndarray, float]:
    """Scale (H, W, 3) so it covers height x width, centre-crop; returns the crop and the scale factor."""
    h0, w0 = rgb.shape[:2]
    s = max(height / h0, width / w0)
    h1, w1 = max(height, round(h0 * s)), max(width, round(w0 * s))
    img = cv2.resize(rgb, (w1, h1), interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR)
    y, x = (h1 - height) // 2, (w1 - width) // 2
    return img[y : y + height, x : x + width], s


def decode_clip(path: Path, height: int, width: int, max_frames: int | None) -> tuple[np.ndarray, float]:
    """All frames of a clip file, resized and cropped: (T, 3, height, width) uint8, and the scale factor."""
    frames, scale = [], 1.0
    for _, rgb in iter_frames(path):
        img, scale = resize_cover(rgb, height, width)
        frames.append(img.transpose(2, 0, 1))  # (3, H, W)
        if max_frames and len(frames) >= max_frames:
            break
    if not frames:
        raise ValueError("no decodable frames")
    return np.stack(frames), scale


def as_float(x) -> float:
    try:
        return float(x)
    except (TypeError, ValueError):
        return float("nan")


class CuratedClips(Dataset):
    """Samples of `num_frames` frames at `size` from the kept clips of a curate output folder."""

    def __init__(
        self,
        folder: str | Path,
        size: int | tuple[int, int] = 32,  # square side, or (height, width)
        num_frames: int = 8,
        filters: list[Filter] | list[str] | None = STANDIN_FILTERS,  # filters, clip ids to keep, or None: all
        stride: int = 1,  # take every stride-th frame (fps / stride)
        sample: str = "random",  # where the frames start in a clip: "random" (per index and epoch), "first", "center"
        seed: int = 0,
        cache: bool = True,  # save / load the decoded tensor in FOLDER/minisvd_cache
        max_frames_per_clip: int | None = None,  # decode at most this many frames of each clip (memory)
        captions: dict[str, str] | None = None,  # clip_id -> caption, overriding the table's captions
        progress: bool = False,
    ):
        self.folder = Path(folder)
        self.height, self.width = (size, size) if isinstance(size, int) else size
        self.num_frames, self.stride, self.sample, self.seed = num_frames, stride, sample, seed
        self.epoch = 0  # set it each epoch (`set_epoch`) for new random windows
        self.captions = captions or {}
        if sample not in ("random", "first", "center"):
            raise ValueError(f"sample must be 'random', 'first' or 'center', got {sample!r}")
        table = self.folder / "clips.csv"
        if not self.folder.is_dir():
            raise FileNotFoundError(f"{self.folder} is not a folder: {HOW_TO.format(folder=self.folder)}")
        if not table.exists():
            raise FileNotFoundError(f"no clips.csv in {self.folder}: {HOW_TO.format(folder=self.folder)}")
        rows = read_table(table)
        if not rows:
            raise ValueError(f"{table} lists no clips: curate a folder that holds videos "
                             f"(`python -m minisvd curate VIDEOS --out {self.folder}`)")  # fmt: skip
        self.funnel = []
        if filters is None:
            keep = np.ones(len(rows), bool)
        elif all(isinstance(f, Filter) for f in filters):
            keep, self.funnel = apply_filters(rows, list(filters))
        else:
            ids = set(filters)
            keep = np.array([r["clip_id"] in ids for r in rows])
        kept = [r for r, k in zip(rows, keep) if k]
        if not kept:
            raise ValueError(
                f"no clip of {table} passes the filters: pass filters=None to keep all {len(rows)}"
            )
        self.skipped: list[tuple[str, str]] = []  # (clip_id, reason) of unreadable clip files
        self.too_short: list[str] = []
        key = self._cache_key(table, kept, max_frames_per_clip)
        path = self.folder / "minisvd_cache" / f"decoded_{self.height}x{self.width}_{key}.safetensors"
        if cache and path.exists():
            self._load(path)
        else:
            self._decode(kept, max_frames_per_clip, progress)
            if cache:
                self._save(path)
        self._select(kept)

    # ------------------------------------------------------------------ decoding and the cache
    def _cache_key(self, table: Path, kept: list[dict], max_frames: int | None) -> str:
        h = hashlib.sha1(table.read_bytes())
        files = []
        for r in kept:  # the clip files too: a replaced or repaired file must be decoded again
            f = self.folder / r["file"]
            st = f.stat() if r["file"] and f.is_file() else None
            files.append([r["clip_id"], st.st_size if st else -1, st.st_mtime_ns if st else -1])
        h.update(json.dumps([files, max_frames, CACHE_VERSION]).encode())
        return h.hexdigest()[:12]

    def _decode(self, kept: list[dict], max_frames: int | None, progress: bool) -> None:
        chunks, self.ids, self.scales, lengths = [], [], [], []
        for r in tqdm(kept, desc="decode clips", disable=not progress):
            try:
                frames, scale = decode_clip(self.folder / r["file"], self.height, self.width, max_frames)
            except Exception as e:  # noqa: BLE001 - any unreadable file is skipped and counted
                self.skipped.append((r["clip_id"], f"{type(e).__name__}: {e}"[:200]))
                continue
            chunks.append(frames)
            self.ids.append(r["clip_id"])
            self.scales.append(scale)
            lengths.append(len(frames))
        # All clips in one tensor (T_total, 3, H, W); clip i is frames[offsets[i] : offsets[i + 1]].
        self.offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        empty = np.zeros((0, 3, self.height, self.width), np.uint8)
        self.frames = torch.from_numpy(np.ascontiguousarray(np.concatenate(chunks) if chunks else empty))

    def _save(self, path: Path) -> None:
        from safetensors.torch import save_file

        path.parent.mkdir(parents=True, exist_ok=True)
        for old in path.parent.glob(f"decoded_{self.height}x{self.width}_*.safetensors"):
            old.unlink()  # an older clips.csv or other settings: stale
        meta = {"ids": self.ids, "scales": self.scales, "skipped": self.skipped}
        tmp = path.with_suffix(".tmp")
        save_file({"frames": self.frames, "offsets": torch.from_numpy(self.offsets)}, str(tmp),
                  metadata={"clips": json.dumps(meta)})  # fmt: skip
        tmp.replace(path)

    def _load(self, path: Path) -> None:
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            meta = json.loads(f.metadata()["clips"])
            self.frames, self.offsets = f.get_tensor("frames"), f.get_tensor("offsets").numpy()
        self.ids, self.scales = meta["ids"], meta["scales"]
        self.skipped = [tuple(s) for s in meta["skipped"]]

    def _select(self, kept: list[dict]) -> None:
        """Index the clips long enough for `num_frames` frames at `stride`; warn about what was left out."""
        need = (self.num_frames - 1) * self.stride + 1
        by_id = {r["clip_id"]: r for r in kept}
        self.clips = []  # (row, first frame in self.frames, number of frames, scale)
        for i, cid in enumerate(self.ids):
            n = int(self.offsets[i + 1] - self.offsets[i])
            if n < need:
                self.too_short.append(cid)
                continue
            self.clips.append((by_id[cid], int(self.offsets[i]), n, float(self.scales[i])))
        if self.skipped:
            cid, reason = self.skipped[0]
            warnings.warn(f"CuratedClips: skipped {len(self.skipped)} unreadable clip file(s) in {self.folder} "
                          f"(first: {cid}: {reason})", stacklevel=3)  # fmt: skip
        if self.too_short:
            warnings.warn(f"CuratedClips: left out {len(self.too_short)} clip(s) shorter than {need} frames "
                          f"({self.num_frames} frames at stride {self.stride})", stacklevel=3)  # fmt: skip
        if not self.clips:
            raise ValueError(f"no usable clip in {self.folder}: {len(self.skipped)} unreadable, "
                             f"{len(self.too_short)} shorter than {need} frames")  # fmt: skip

    # ------------------------------------------------------------------ samples
    @property
    def n_skipped(self) -> int:
        return len(self.skipped)

    def set_epoch(self, epoch: int) -> None:
        """New random windows each epoch (deterministic given seed, epoch and index)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < len(self.clips):
            raise IndexError(f"index {index} out of range for {len(self.clips)} clips")
        row, first, n, scale = self.clips[index]
        span = (self.num_frames - 1) * self.stride + 1
        if self.sample == "first":
            start = 0
        elif self.sample == "center":
            start = (n - span) // 2
        else:
            start = int(np.random.default_rng([self.seed, self.epoch, index]).integers(0, n - span + 1))
        idx = first + start + np.arange(self.num_frames) * self.stride
        clip_fps = as_float(row.get("n_frames")) / as_float(row.get("duration_s"))
        fps = max(1, round(clip_fps / self.stride)) if np.isfinite(clip_fps) else 0
        m_src = as_float(row.get("motion"))
        motion = m_src * scale * self.stride  # px / frame of the returned frames
        caption = self.captions.get(row["clip_id"]) or next(
            (row[c] for c in CAPTION_COLUMNS if row.get(c)), ""
        )
        return {
            "frames": to_pixels(self.frames[torch.from_numpy(idx)]),  # (F, 3, H, W) in [-1, 1]
            "caption": caption,
            "fps": int(fps),
            "motion": float(motion),
            "motion_bucket_id": motion_bucket_id(motion, min(self.height, self.width)),
            "motion_curated": m_src,  # the table's value: px / frame of the source clip
            "clip_id": row["clip_id"],
            "video": row.get("video", ""),
            "start": int(start),
        }
