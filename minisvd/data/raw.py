"""A raw, web-like video set with known defects, to run the real curation pipeline on (Blattmann et al. 2023, Sec. 3.1).

SVD's data curation exists because raw web video is full of things a video model should not learn
from: cuts and fades inside what looks like one clip, still images "videos", burned-in text and
logos, and the same video uploaded many times. `write_raw_set` writes real H.264 MP4 files (PyAV, via
`minisvd.curation.video_io.write_video`) made of toy-world scenes, with such defects at rates you choose,
and a `manifest.json` with the ground truth of every video: where each scene starts and ends, what is
in it, which transitions join the scenes, and which defects it has. Then

    python -m minisvd curate RAW --out CURATED --workers 2

cuts, scores and captions it like any other folder, and `label_clips` / `curation_summary` compare the
resulting `clips.csv` with the ground truth: did the cut detector split the videos, do static scenes get
low motion scores and text scenes high text areas, and which defects do the quantile filters drop?

**Resolution.** The text detector (DBNet via rapidocr, `minisvd.curation.text`) scales frames to a
256-px short side, but it still needs letters about 8 px tall in the source: we measured white text
with a black outline found reliably at 128 px when it is >= 6% of the frame height (8 px) and at 256 px
from 4%, at 64 px only from 9%, and almost never at 32 px. The raw set is therefore written at 128 px
(`world_preset("raw")`), with text 8-12% of the frame high; the training readers (`curated.CuratedClips`)
resize the curated clips down to 32 or 64 px. **Frame rate.** Raw videos are 24 fps, like web video and
like the cut cascade's tuning (`CutConfig.reference_fps`): at 12 fps a 0.75 s dissolve changes so much
per frame that the hard-cut detector fired inside it. `CuratedClips(stride=3)` gives 8-fps clips.

**Measured** (`scripts/make_toy_world.py raw --videos 40 --seed 1 --curate`, default rates): 97 clips;
all 57 cuts and dissolves found, no clip spanning two scenes; static clips score motion <= 0.006 px/frame,
every other clip >= 0.04; the stand-in filters drop 17/17 static, 16/17 text and 16/16 dull clips, and
17/49 clean ones (4 by the motion quantile, 9 by DBNet false positives on the clock, cup and horse over
plain backgrounds, 4 by the aesthetic quantile). Near-duplicates are not caught: the paper's filters have
no deduplication step (5 of 11 kept).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from minisvd.curation.video_io import write_video
from minisvd.data.world import WorldConfig, caption_of, render, sample_scene, world_preset

WORDS = ["BREAKING NEWS", "SUBSCRIBE", "LIVE", "SALE 50% OFF", "TOP 10", "WOW", "FOLLOW ME", "HD VIDEO"]


@dataclass
class DefectRates:
    """How often each raw-web defect occurs."""

    dissolve: float = 0.3  # fraction of the joins between scenes that are dissolves (the rest are hard cuts)
    static: float = 0.2  # fraction of scenes where nothing moves (still object, still camera)
    text: float = 0.2  # fraction of scenes with burned-in text
    dull: float = 0.15  # fraction of scenes that are dark, blurred and washed out (bad "aesthetics")
    duplicate: float = 0.15  # fraction of videos that are a near-duplicate of an earlier one
    dissolve_seconds: float = 0.75  # length of a dissolve
    text_height: tuple[float, float] = (0.08, 0.12)  # letter height / frame height


@dataclass
class RawScene:
    """Ground truth of one scene of a raw video (frames [start, end] inclusive are this scene alone)."""

    start: int
    end: int
    caption: str
    object: str
    background: str
    direction: str
    speed_px_per_frame: float
    camera: str
    static: bool
    dull: bool = False
    text: str = ""  # the burned-in words, "" if none
    text_area: float = 0.0  # fraction of the frame covered by the text box


# ----------------------------------------------------------------------------- drawing defects
def burn_text(frames: np.ndarray, words: str, height: float, top: bool) -> float:
    """Draw large white text with a black outline on every frame (in place); returns its box area fraction."""
    size = frames.shape[1]
    font = cv2.FONT_HERSHEY_DUPLEX
    (_, h1), _ = cv2.getTextSize(words, font, 1.0, 1)
    scale = height * size / h1
    thick = max(1, round(scale * 1.5))
    (w, h), base = cv2.getTextSize(words, font, scale, thick)
    if w > 0.95 * size:  # too wide: shrink to fit
        scale *= 0.95 * size / w
        (w, h), base = cv2.getTextSize(words, font, scale, thick)
    x = (size - w) // 2
    y = int(size * 0.08) + h if top else int(size * 0.92) - base
    for f in frames:
        cv2.putText(f, words, (x, y), font, scale, (0, 0, 0), 3 * thick, cv2.LINE_AA)
        cv2.putText(f, words, (x, y), font, scale, (255, 255, 255), thick, cv2.LINE_AA)
    return float(w * (h + base) / size**2)


def make_dull(frames: np.ndarray) -> np.ndarray:
    """Underexposed, soft and washed out: blurred, a third of the contrast, dark. (T, H, W, 3) uint8."""
    sigma = frames.shape[1] / 100
    out = np.stack([cv2.GaussianBlur(f, (0, 0), sigma) for f in frames]).astype(np.float32)
    grey = out.mean(-1, keepdims=True)
    out = 0.5 * grey + 0.5 * out  # half the colour
    out = 35 + 0.3 * (out - out.mean())  # dark, a third of the contrast
    return np.clip(out, 0, 255).astype(np.uint8)


def dissolve(a: np.ndarray, b: np.ndarray, n: int) -> np.ndarray:
    """The last n frames of `a` cross-fading into the first n of `b`: (n, H, W, 3) uint8."""
    w = (np.arange(1, n + 1) / (n + 1))[:, None, None, None]
    return np.round((1 - w) * a[-n:] + w * b[:n]).astype(np.uint8)


# ----------------------------------------------------------------------------- one video
def make_video(
    config: WorldConfig, rng: np.random.Generator, defects: DefectRates, n_scenes: int,
    scene_seconds: tuple[float, float],
) -> tuple[np.ndarray, dict]:  # fmt: skip
    """Frames (T, H, W, 3) uint8 of a few scenes joined by cuts or dissolves, and its ground truth."""
    fps = int(config.fps_choices[int(rng.integers(len(config.fps_choices)))])
    parts, scenes, transitions = [], [], []
    n_dissolve = max(2, round(defects.dissolve_seconds * fps))
    total = 0
    for k in range(n_scenes):
        n = int(round(rng.uniform(*scene_seconds) * fps))
        others = tuple(b for b in config.backgrounds if not scenes or b != scenes[-1].background)
        cfg = replace(config, num_frames=n, fps_choices=(fps,), backgrounds=others or config.backgrounds)
        still = bool(rng.random() < defects.static)
        scene = sample_scene(cfg, rng, still=still)
        frames, _ = render(scene)
        dull = bool(rng.random() < defects.dull)
        if dull:
            frames = make_dull(frames)
        text, area = "", 0.0
        if rng.random() < defects.text:
            text = WORDS[int(rng.integers(len(WORDS)))]
            area = burn_text(frames, text, float(rng.uniform(*defects.text_height)), bool(rng.random() < 0.5))
        start = total
        if k > 0 and rng.random() < defects.dissolve:
            prev = parts.pop()
            parts += [prev[:-n_dissolve], dissolve(prev, frames, n_dissolve), frames[n_dissolve:]]
            start = total - n_dissolve
            transitions.append({"type": "dissolve", "start": start, "end": start + n_dissolve - 1})
            scenes[-1].end = start - 1
            start += n_dissolve
        else:
            if k > 0:
                transitions.append({"type": "cut", "start": total, "end": total})
            parts.append(frames)
        total = sum(len(p) for p in parts)
        scenes.append(RawScene(start, total - 1, caption_of(scene, cfg), scene.object, scene.background,
                               scene.direction, round(scene.speed_px_per_frame, 4), scene.camera, still,
                               dull, text, round(area, 4)))  # fmt: skip
    video = np.concatenate(parts)
    defect_list = sorted(
        {d for s in scenes for d in ["static"] * s.static + ["text"] * bool(s.text) + ["dull"] * s.dull}
    )
    defect_list += ["cut"] * any(t["type"] == "cut" for t in transitions)
    defect_list += ["dissolve"] * any(t["type"] == "dissolve" for t in transitions)
    entry = {"fps": fps, "n_frames": len(video), "scenes": [asdict(s) for s in scenes],
             "transitions": transitions, "defects": defect_list, "duplicate_of": None}  # fmt: skip
    return video, entry


def near_duplicate(video: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, str, int]:
    """A tiny change of a video: brighter, shifted by a pixel, or re-encoded at a lower quality.

    Returns the frames, the change, and the crf offset for the encoder.
    """
    change = ["brightness", "shift", "recompress"][int(rng.integers(3))]
    if change == "brightness":
        return np.clip(video.astype(np.int16) + 6, 0, 255).astype(np.uint8), "brightness +6", 0
    if change == "shift":
        return np.ascontiguousarray(np.roll(video, 1, axis=2)), "shifted 1 px right", 0
    return video, "re-encoded at crf + 6", 6


# ----------------------------------------------------------------------------- the set
def write_raw_set(
    folder: str | Path,
    n_videos: int = 8,
    config: WorldConfig | None = None,  # the scenes' world; default `world_preset("raw")` (128 px, 24 fps)
    defects: DefectRates | None = None,
    seed: int = 0,
    scenes_per_video: tuple[int, int] = (2, 3),  # inclusive range
    scene_seconds: tuple[float, float] = (2.5, 4.0),
    gop_seconds: float = 0.5,  # keyframe interval: clips are cut on keyframes, so shorter = tighter clips
    crf: int = 23,
    progress: bool = False,
) -> dict:
    """Write `n_videos` MP4 files and `manifest.json` into `folder`; returns the manifest."""
    config = config or world_preset("raw")
    defects = defects or DefectRates()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    videos, originals = [], {}
    for v in tqdm(range(n_videos), desc="raw videos", disable=not progress):
        rng = np.random.default_rng([seed, v, 1])
        name = f"raw_{v:03d}.mp4"
        extra_crf = 0
        if originals and rng.random() < defects.duplicate:
            src = sorted(originals)[int(rng.integers(len(originals)))]
            frames, change, extra_crf = near_duplicate(originals[src][0], rng)
            entry = {**originals[src][1], "duplicate_of": src, "change": change}
            entry["defects"] = entry["defects"] + ["duplicate"]
        else:
            n_scenes = int(rng.integers(scenes_per_video[0], scenes_per_video[1] + 1))
            frames, entry = make_video(config, rng, defects, n_scenes, scene_seconds)
            originals[name] = (frames, entry)
        gop = max(1, round(gop_seconds * entry["fps"]))
        write_video(folder / name, frames, fps=entry["fps"], gop=gop, crf=crf + extra_crf)
        videos.append({"file": name, **entry, "gop": gop})
    manifest = {"size": config.size, "seed": seed, "defect_rates": asdict(defects), "world": asdict(config),
                "videos": videos}  # fmt: skip
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return manifest


# ----------------------------------------------------------------------------- comparing with curation
def frame_owners(video: dict, blend: float = 0.25) -> np.ndarray:
    """Which scene each frame of a raw video shows: its index, or -1 for a visible mix of two scenes.

    A dissolve frame belongs to a scene if the other one makes up at most `blend` of it (the first and
    last frames of a dissolve look like one scene; the middle ones show both).
    """
    owner = np.full(video["n_frames"], -1, np.int64)
    for k, sc in enumerate(video["scenes"]):
        owner[sc["start"] : sc["end"] + 1] = k
    for t in video["transitions"]:
        if t["type"] != "dissolve":
            continue
        n = t["end"] - t["start"] + 1
        w = np.arange(1, n + 1) / (n + 1)  # weight of the next scene in each dissolve frame
        before = int(owner[t["start"] - 1]) if t["start"] > 0 else -1
        after = int(owner[t["end"] + 1]) if t["end"] + 1 < len(owner) else -1
        owner[t["start"] : t["end"] + 1] = np.where(w <= blend, before, np.where(w >= 1 - blend, after, -1))
    return owner


def label_clips(manifest: dict, clips: list[dict], tolerance: int = 2) -> list[dict]:
    """Ground truth for each row of a `clips.csv`: its scene and defects.

    A clip is "mixed" if more than `tolerance` of its frames show another scene or a visible blend of
    two (`frame_owners`); it inherits "static", "text" and "dull" from its main scene and "duplicate" from
    its video.
    """
    by_file = {v["file"]: v for v in manifest["videos"]}
    owners = {name: frame_owners(v) for name, v in by_file.items()}
    labels = []
    for c in clips:
        v = by_file.get(c["video"])
        if v is None:
            labels.append({"clip_id": c["clip_id"], "scene": None, "defects": ["unknown video"]})
            continue
        own = owners[c["video"]][int(c["start"]) : int(c["end"])]  # clip frames [start, end)
        k = int(np.bincount(own[own >= 0], minlength=len(v["scenes"])).argmax()) if (own >= 0).any() else 0
        sc = v["scenes"][k]
        defects = ["mixed"] if int((own != k).sum()) > tolerance else []
        defects += (
            ["static"] * bool(sc["static"]) + ["text"] * bool(sc["text"]) + ["dull"] * bool(sc.get("dull"))
        )
        defects += ["duplicate"] * bool(v.get("duplicate_of"))
        labels.append({"clip_id": c["clip_id"], "video": c["video"], "scene": k, "caption": sc["caption"],
                       "defects": defects})  # fmt: skip
    return labels


def true_captions(manifest: dict, clips: list[dict]) -> dict[str, str]:
    """clip_id -> the caption of the scene the clip shows (for `CuratedClips(captions=...)`)."""
    return {lab["clip_id"]: lab["caption"] for lab in label_clips(manifest, clips) if lab.get("caption")}


def dropped_by(clips: list[dict], filters: list) -> list[str]:
    """For each clip, the label of the first filter that drops it ("" if kept), applying them in order."""
    from minisvd.curation.filtering import apply_filters

    stage = [""] * len(clips)
    for k in range(1, len(filters) + 1):
        keep, funnel = apply_filters(clips, filters[:k])
        label = funnel[-1].stage if len(funnel) > 1 else ""
        for i, kept in enumerate(keep):
            if not kept and not stage[i]:
                stage[i] = label
    return stage


def curation_summary(labels: list[dict], stages: list[str]) -> dict[str, dict[str, int]]:
    """Per ground-truth defect (and "clean"): clips, kept, and how many each filter dropped.

    `stages` comes from `dropped_by` ("" = kept). A clip with two defects counts under both.
    """
    out: dict[str, dict[str, int]] = {}
    for lab, st in zip(labels, stages):
        for d in lab["defects"] or ["clean"]:
            row = out.setdefault(d, {"clips": 0, "kept": 0})
            row["clips"] += 1
            key = st or "kept"
            row[key] = row.get(key, 0) + 1
    return out


def format_summary(summary: dict[str, dict[str, int]]) -> str:
    """Plain-text table of `curation_summary`: one row per defect, one column per filter."""
    cols = sorted({k for r in summary.values() for k in r} - {"clips", "kept"})
    short = [c.removeprefix("drop ").split(" (")[0][:22] for c in cols]
    lines = [f"{'ground truth':<12} {'clips':>5} {'kept':>5}  " + "  ".join(f"{c:>22}" for c in short)]
    for name in sorted(summary, key=lambda n: (n == "clean", n)):
        r = summary[name]
        lines.append(
            f"{name:<12} {r['clips']:>5} {r['kept']:>5}  " + "  ".join(f"{r.get(c, 0):>22}" for c in cols)
        )
    return "\n".join(lines)
