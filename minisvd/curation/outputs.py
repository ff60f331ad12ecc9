"""What curation keeps on disk, and when it counts as complete (resume; Blattmann et al. 2023, Sec. 3.1).

    OUT/videos.csv   one row a source file: size, mtime, status, reason, warning, fps, frames, cuts, clips
    OUT/clips.csv    one row a clip: where it came from, its scores and captions (`CLIP_COLS`)
    OUT/clips/       the clip files, `<name>_<start>_<end>.mp4`, `<name>` from the source's relative path

Tables are written through a temporary file and a rename (never half a table); a table read back drops a last
row cut short. A video is complete when its row is `ok`, it has exactly `n_clips` well-named clip rows with
every score filled, and every clip file demuxes to its frame count (`video_complete`); anything less is redone.
"""

from __future__ import annotations

import csv
import hashlib
import os
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from minisvd.curation.video_io import probe

VIDEO_EXT = {".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v"}
VIDEO_COLS = ["video", "size", "mtime", "status", "reason", "warning", "fps", "n_frames", "n_transitions",
              "n_clips"]  # fmt: skip
CLIP_COLS = ["clip_id", "video", "start", "end", "n_frames", "duration_s", "file", "motion", "motion_kind",
             "text_area", "standin_aesthetic", "standin_consistency", "clip_score", "clip_aesthetic",
             "caption_frame", "caption_clip", "caption_summary"]  # fmt: skip
STEPS = {"motion": ["motion", "motion_kind"], "text": ["text_area"], "captions": ["caption_summary"]}


def read_table(path: Path) -> list[dict]:
    """The rows of a CSV table; a last row cut short (no line end: the file was truncated) is dropped."""
    if not path.exists():
        return []
    with open(path, newline="") as f:
        text = f.read()
    rows = []
    try:
        rows.extend(csv.DictReader(text.splitlines(keepends=True)))
    except csv.Error:  # a quoted cell cut in the middle: keep the rows before it
        pass
    if text and not text.endswith("\n") and rows:
        rows.pop()
    return rows


def write_table(path: Path, rows: list[dict], cols: list[str]) -> None:
    """Write via a temporary file and rename, so a crash never leaves half a table."""
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    os.replace(tmp, path)


def _cell(row: dict | None, key: str) -> str:
    """A table cell as text; '' when absent (also for the None of a row cut short)."""
    v = (row or {}).get(key)
    return "" if v is None else str(v)


def _missing(row: dict, scorer_cols: list[str]) -> list[str]:
    """The steps whose columns are still empty in this clip row."""
    steps = [s for s, c in STEPS.items() if any(_cell(row, k) == "" for k in c)]
    if any(_cell(row, k) == "" for k in scorer_cols):
        steps.append("scores")
    return steps


def list_sources(folder: Path, out: Path) -> list[tuple[str, Path]]:
    """(path relative to `folder` with `/`, path) of every video file in `folder` and its sub-folders, sorted.

    Hidden folders and the output folder (when it lies inside `folder`) are left out.
    """
    skip = out.resolve()
    found = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and (Path(root) / d).resolve() != skip)
        for f in files:
            p = Path(root) / f
            if p.suffix.lower() in VIDEO_EXT and p.is_file():
                found.append((p.relative_to(folder).as_posix(), p))
    return sorted(found)


def clip_names(rels: Iterable[str]) -> dict[str, str]:
    """The clip-file name of each source: its relative path with `/` as `__` (`sub/a.mov` -> `sub__a.mov`).

    Names that would still be shared (`sub__a.mov` next to `sub/a.mov`; also only by case, for
    case-insensitive file systems) or are too long for a file name get `-` and 8 hex digits of the path.
    """
    rels = list(rels)
    base = {r: r.replace("/", "__") for r in rels}
    count = Counter(b.lower() for b in base.values())
    names = {}
    for r, b in base.items():
        if count[b.lower()] > 1 or len(b.encode()) > 180:
            b = b.encode()[:180].decode(errors="ignore") + "-" + hashlib.sha1(r.encode()).hexdigest()[:8]
        names[r] = b
    return names


def clip_id(name: str, start: int, end: int) -> str:
    return f"{name}_{start:06d}_{end:06d}"


def clip_file_ok(f: Path, n_frames) -> bool:
    """Whether a clip file exists and demuxes to `n_frames` packets (not missing, empty, cut short)."""
    try:
        return f.stat().st_size > 0 and probe(f).n_frames == int(n_frames)
    except Exception:  # noqa: BLE001 - anything unreadable is not a valid clip
        return False


def _well_named(c: dict, name: str) -> bool:
    """A clip row of this source as this version writes it (an older naming, or a row cut short, is not)."""
    try:
        start, end = int(c["start"]), int(c["end"])
        cid = clip_id(name, start, end)
        return (
            c.get("clip_id") == cid
            and c.get("file") == f"clips/{cid}.mp4"
            and int(c["n_frames"]) == end - start > 0
        )
    except (KeyError, TypeError, ValueError):
        return False


def cuts_recorded(vrow: dict | None, n_rows: int) -> bool:
    """The cut detection of this video is on record: an `ok` row with its transitions counted and exactly
    `n_rows` clip rows for its `n_clips` (a rerun keeps those cuts instead of detecting them again)."""
    return (
        _cell(vrow, "status") == "ok"
        and _cell(vrow, "n_clips").isdigit()
        and _cell(vrow, "n_transitions") != ""
        and int(_cell(vrow, "n_clips")) == n_rows
    )


def video_complete(vrow: dict | None, rows: list[dict], name: str, out: Path, score_cols: list[str]) -> bool:
    """Done: an `ok` row, exactly `n_clips` well-named clip rows, every score filled, every clip file valid."""
    return cuts_recorded(vrow, len(rows)) and all(
        _well_named(c, name) and not _missing(c, score_cols) and clip_file_ok(out / c["file"], c["n_frames"])
        for c in rows
    )
