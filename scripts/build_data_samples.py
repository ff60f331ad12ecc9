"""Build `data_samples/`: real H.264 clips made from scikit-image photographs, with ground truth.

Each video is a timeline of shots (a photograph seen through a moving virtual camera: pan, zoom,
rotation at a known speed, or static) joined by hard cuts, cross-fades (dissolves) and fades to
black, with single-frame flashes and burned-in text (subtitles, logos, title cards). Because we drew
every frame, we know the truth: `manifest.json` records every transition with its type and frame
range, each shot's camera speed (mean optical-flow magnitude in pixels per frame, computed from the
exact camera transform), and the text area per frame.

The build is deterministic (fixed seeds, single-threaded x264), so rerunning it gives the same
manifest and the same decoded frames:

    python scripts/build_data_samples.py              # rebuild everything
    python scripts/build_data_samples.py --only pans  # one video
"""

from __future__ import annotations

import argparse
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from skimage import data as skdata
from tqdm import tqdm

from minisvd.curation.video_io import write_video

W, H, FPS, GOP, CRF = 320, 180, 24, 12, 23
OUT = Path(__file__).resolve().parents[1] / "data_samples"


# ----------------------------------------------------------------------------- source photographs
def photo(name: str) -> np.ndarray:
    """A scikit-image sample photograph as (H, W, 3) uint8 RGB."""
    img = {"motorcycle": lambda: skdata.stereo_motorcycle()[0], "hubble": skdata.hubble_deep_field}.get(
        name, getattr(skdata, name, None)
    )()
    if img.ndim == 2:
        img = np.stack([img] * 3, -1)
    return np.ascontiguousarray(img[..., :3]).astype(np.uint8)


# ----------------------------------------------------------------------------- camera and text
@dataclass
class Text:
    """Burned-in text: `kind` is subtitle, logo or title; frames are relative to the shot start."""

    text: str
    org: tuple[int, int]  # bottom-left of the text in output pixels
    scale: float
    kind: str
    start: int = 0
    end: int | None = None  # exclusive; None = until the end of the shot
    thickness: int = 1


@dataclass
class Shot:
    """One shot: a photograph under a camera moving at constant speed, for `n` frames."""

    image: str
    n: int
    motion: str = "static"  # static | pan | zoom | rotate | card
    speed: float = 0.0  # pan: px/frame (along `direction`); zoom: relative scale/frame; rotate: deg/frame
    direction: tuple[float, float] = (1.0, 0.0)
    texts: list[Text] = field(default_factory=list)
    flashes: list[int] = field(default_factory=list)  # frames (relative) replaced by a white flash


def camera(shot: Shot, t: float) -> np.ndarray:
    """3x3 map from output pixel coordinates (centred) to world coordinates at frame t."""
    if shot.motion == "pan":
        dx, dy = np.array(shot.direction) / np.hypot(*shot.direction) * shot.speed * t
        return np.array([[1, 0, dx], [0, 1, dy], [0, 0, 1.0]])
    if shot.motion == "zoom":  # zoom in: world visible shrinks by (1 + speed) per frame
        s = (1 + shot.speed) ** -t
        return np.diag([s, s, 1.0])
    if shot.motion == "rotate":
        a = np.deg2rad(shot.speed * t)
        return np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1.0]])
    return np.eye(3)


def true_speed(shot: Shot) -> float:
    """Mean flow magnitude (px/frame) over the shot: |C_{t+1}^-1 C_t p - p| averaged over pixels and t."""
    if shot.motion in ("static", "card"):
        return 0.0
    ys, xs = np.mgrid[0:H:4, 0:W:4]
    p = np.stack([xs - W / 2 + 0.5, ys - H / 2 + 0.5, np.ones_like(xs)], 0).reshape(3, -1).astype(float)
    mags = []
    for t in range(shot.n - 1):
        q = np.linalg.inv(camera(shot, t + 1)) @ camera(shot, t) @ p
        mags.append(np.hypot(*(q[:2] - p[:2])).mean())
    return float(np.mean(mags))


def render_shot(shot: Shot, rng: np.random.Generator) -> tuple[np.ndarray, list[list[list[int]]]]:
    """Frames (n, H, W, 3) uint8 and, per frame, the ground-truth text boxes [x0, y0, x1, y1]."""
    src = photo(shot.image).astype(np.float32)
    corners = np.array([[-W / 2, -H / 2, 1], [W / 2, -H / 2, 1], [W / 2, H / 2, 1], [-W / 2, H / 2, 1]]).T
    seen = np.concatenate([(camera(shot, t) @ corners)[:2] for t in range(shot.n)], 1)
    half = np.abs(seen).max(1)  # the world region seen, as half-extents around the centre
    scale = max(2 * half[0] / src.shape[1], 2 * half[1] / src.shape[0])  # world px per source px
    boxes_per_frame, frames = [], []
    for t in range(shot.n):
        # output pixel -> world (camera) -> source pixel
        to_src = np.array([[1 / scale, 0, src.shape[1] / 2], [0, 1 / scale, src.shape[0] / 2], [0, 0, 1]])
        to_centred = np.array([[1, 0, -W / 2 + 0.5], [0, 1, -H / 2 + 0.5], [0, 0, 1]])
        m = (to_src @ camera(shot, t) @ to_centred)[:2]
        img = cv2.warpAffine(
            src, m, (W, H), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REFLECT
        )
        if shot.motion == "card":  # title card: dark, blurred background
            img = cv2.GaussianBlur(img, (0, 0), 6) * 0.3
        img = img + rng.normal(0, 1.5, img.shape).astype(np.float32)  # mild sensor noise
        img = np.clip(img, 0, 255).astype(np.uint8)
        boxes = []
        for tx in shot.texts:
            if tx.start <= t < (tx.end if tx.end is not None else shot.n):
                boxes.append(draw_text(img, tx))
        if t in shot.flashes:
            img = np.full_like(img, 250)
            boxes = []
        frames.append(img)
        boxes_per_frame.append(boxes)
    return np.stack(frames), boxes_per_frame


def draw_text(img: np.ndarray, tx: Text) -> list[int]:
    """Draw white text with a black outline; return its tight box [x0, y0, x1, y1] (x1, y1 exclusive)."""
    font = cv2.FONT_HERSHEY_DUPLEX
    (w, h), base = cv2.getTextSize(tx.text, font, tx.scale, tx.thickness)
    x, y = tx.org
    cv2.putText(img, tx.text, (x, y), font, tx.scale, (0, 0, 0), tx.thickness + 2, cv2.LINE_AA)
    cv2.putText(img, tx.text, (x, y), font, tx.scale, (255, 255, 255), tx.thickness, cv2.LINE_AA)
    pad = tx.thickness + 1
    return [max(x - pad, 0), max(y - h - pad, 0), min(x + w + pad, W), min(y + base + pad, H)]


def text_area(boxes: list[list[int]]) -> float:
    """Union area of the boxes as a fraction of the frame."""
    mask = np.zeros((H, W), bool)
    for x0, y0, x1, y1 in boxes:
        mask[y0:y1, x0:x1] = True
    return float(mask.mean())


# ----------------------------------------------------------------------------- timelines
SUB = dict(scale=0.45, kind="subtitle")
LOGO = dict(scale=0.4, kind="logo")


def timelines() -> dict[str, list]:
    """The videos: lists of Shot and transition tuples ("cut",), ("dissolve", L), ("fade", L_out, hold, L_in)."""
    logo = Text("miniSVD TV", (236, 20), **LOGO)
    return {
        "pans": [
            Shot("astronaut", 60, "pan", 1.0),
            ("cut",),
            Shot("coffee", 54, "pan", 3.0, (-1, 0)),
            ("cut",),
            Shot("rocket", 50, "pan", 2.0, (0, 1)),
            ("dissolve", 16),
            Shot("chelsea", 62, "static", flashes=[30]),
            ("cut",),
            Shot("motorcycle", 56, "pan", 5.0, (1, 0.3)),
            ("cut",),
            Shot("hubble", 50, "pan", 0.5, (0, -1)),
        ],
        "zooms": [
            Shot("coffee", 60, "zoom", 0.004),
            ("dissolve", 24),
            Shot("astronaut", 60, "zoom", 0.012),
            ("cut",),
            Shot("immunohistochemistry", 50, "zoom", 0.02),
            ("fade", 12, 4, 12),
            Shot("rocket", 60, "zoom", 0.007, flashes=[25]),
            ("cut",),
            Shot("chelsea", 48, "static"),
        ],
        "rotations": [
            Shot("colorwheel", 56, "rotate", 0.3),
            ("cut",),
            Shot("motorcycle", 60, "rotate", 0.8),
            ("dissolve", 10),
            Shot("hubble", 60, "rotate", 1.5),
            ("cut",),
            Shot("coffee", 56, "rotate", 0.15),
            ("fade", 24, 6, 24),
            Shot("astronaut", 50, "static", flashes=[20, 21]),
        ],
        "subtitles": [
            Shot(
                "astronaut",
                72,
                "static",
                texts=[
                    Text("Houston, we are ready for launch.", (40, 165), start=10, end=60, **SUB),
                    logo,
                ],
            ),
            ("cut",),
            Shot(
                "rocket",
                72,
                "pan",
                1.5,
                (0, -1),
                texts=[
                    Text("Liftoff in ten seconds", (70, 160), start=0, end=40, **SUB),
                    Text("and counting down now", (74, 172), start=40, **SUB),
                    logo,
                ],
            ),
            ("dissolve", 12),
            Shot("motorcycle", 64, "pan", 2.5, texts=[logo]),
            ("cut",),
            Shot(
                "chelsea",
                60,
                "zoom",
                0.005,
                texts=[
                    Text(
                        "The cat looks at the camera.",
                        (28, 150),
                        scale=0.6,
                        kind="subtitle",
                        start=5,
                        end=55,
                        thickness=1,
                    ),
                ],
            ),
        ],
        "titles": [
            Shot(
                "hubble",
                48,
                "card",
                texts=[
                    Text("DEEP FIELD", (38, 80), scale=1.4, kind="title", thickness=2),
                    Text("a film about galaxies", (62, 120), scale=0.6, kind="title"),
                ],
            ),
            ("fade", 8, 2, 8),
            Shot("hubble", 72, "zoom", 0.01),
            ("cut",),
            Shot(
                "coffee",
                48,
                "card",
                texts=[
                    Text("CHAPTER 2", (60, 100), scale=1.3, kind="title", thickness=2),
                ],
            ),
            ("cut",),
            Shot(
                "coffee",
                64,
                "pan",
                1.2,
                (1, 0),
                texts=[
                    Text("BREAKING NEWS: coffee is hot", (8, 172), scale=0.5, kind="subtitle"),
                ],
            ),
            ("dissolve", 20),
            Shot(
                "immunohistochemistry",
                60,
                "static",
                texts=[
                    Text("LAB CAM 3", (8, 22), scale=0.55, kind="logo"),
                ],
            ),
        ],
        "slow_fades": [
            Shot("chelsea", 84, "pan", 0.8, (1, 0)),
            ("fade", 36, 6, 36),
            Shot("rocket", 120, "static"),
            ("dissolve", 40),
            Shot("astronaut", 110, "pan", 1.0, (0, 1)),
            ("fade", 30, 0, 30),
            Shot("motorcycle", 80, "zoom", 0.003),
        ],
        "fast_motion": [
            Shot("motorcycle", 60, "pan", 7.0, (1, 0)),
            ("cut",),
            Shot("astronaut", 56, "rotate", 2.5),
            ("cut",),
            Shot("astronaut", 50, "pan", 4.0, (-1, 0.5)),
            ("cut",),
            Shot("rocket", 54, "zoom", 0.03, flashes=[27]),
            ("dissolve", 8),
            Shot("coffee", 60, "pan", 6.0, (0, 1)),
        ],
        "static_mix": [
            Shot("camera", 54, "static"),
            ("cut",),
            Shot("coins", 48, "static", flashes=[24]),
            ("cut",),
            Shot("moon", 50, "static"),
            ("dissolve", 14),
            Shot("brick", 48, "pan", 0.6, (1, 1)),
            ("cut",),
            Shot("gravel", 50, "static"),
            ("cut",),
            Shot("clock", 52, "zoom", 0.002),
        ],
    }


# ----------------------------------------------------------------------------- assembling a video
def build_video(name: str, timeline: list, seed: int) -> tuple[np.ndarray, dict]:
    """Render one timeline to frames plus its ground-truth manifest entry."""
    rng = np.random.default_rng(seed)
    frames: list[np.ndarray] = []
    boxes: list[list] = []
    shots, transitions, flashes, texts = [], [], [], []
    pending = None  # the transition waiting to join the previous shot to the next one
    for item in timeline:
        if isinstance(item, tuple):
            pending = item
            continue
        f, b = render_shot(item, rng)
        start = len(frames)
        if pending is None or pending[0] == "cut":
            if pending:
                transitions.append({"type": "cut", "start": start, "end": start})
            frames += list(f)
            boxes += b
        elif pending[0] == "dissolve":
            L = pending[1]
            start = len(frames) - L  # the last L frames of the previous shot blend into the first L of this
            for k in range(L):
                a = (k + 1) / (L + 1)
                frames[start + k] = np.round((1 - a) * frames[start + k] + a * f[k]).astype(np.uint8)
                boxes[start + k] = boxes[start + k] + b[k]
            shots[-1]["end"] = start - 1
            transitions.append({"type": "dissolve", "start": start, "end": start + L - 1})
            frames += list(f[L:])
            boxes += b[L:]
            start += L
        elif pending[0] == "fade":
            L_out, hold, L_in = pending[1:]
            s0 = len(frames) - L_out
            for k in range(L_out):
                frames[s0 + k] = np.round(frames[s0 + k] * (1 - (k + 1) / (L_out + 1))).astype(np.uint8)
            shots[-1]["end"] = s0 - 1
            frames += [np.zeros_like(f[0])] * hold
            boxes += [[] for _ in range(hold)]
            start = len(frames)
            for k in range(L_in):
                f[k] = np.round(f[k] * ((k + 1) / (L_in + 1))).astype(np.uint8)
            transitions.append({"type": "fade", "start": s0, "end": start + L_in - 1})
            frames += list(f)
            boxes += b
            start += L_in
        first = len(frames) - item.n
        shots.append(
            {
                "start": start,
                "end": len(frames) - 1,
                "image": item.image,
                "motion": item.motion,
                "param": item.speed,
                "speed_px_per_frame": round(true_speed(item), 4),
            }
        )
        flashes += [{"frame": first + k} for k in item.flashes]
        for tx in item.texts:
            texts.append(
                {
                    "text": tx.text,
                    "kind": tx.kind,
                    "start": first + tx.start,
                    "end": first + (tx.end if tx.end is not None else item.n) - 1,
                }
            )
        pending = None
    entry = {
        "file": f"{name}.mp4",
        "n_frames": len(frames),
        "shots": shots,
        "transitions": transitions,
        "flashes": flashes,
        "texts": texts,
        "text_area": [round(text_area(b), 5) for b in boxes],
        "text_boxes": boxes,
    }
    return np.stack(frames), entry


def build(out: Path = OUT, only: list[str] | None = None) -> dict:
    """Render, encode and describe the videos; returns the manifest (also written to out/manifest.json)."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / "manifest.json"
    manifest = json.loads(path.read_text()) if only and path.exists() else {}
    manifest.update(
        {
            "fps": FPS,
            "width": W,
            "height": H,
            "gop": GOP,
            "crf": CRF,
            "speed_unit": "mean optical-flow magnitude, pixels per frame at 320x180",
        }
    )
    videos = {v["file"]: v for v in manifest.get("videos", [])}
    for seed, (name, timeline) in enumerate(tqdm(timelines().items(), desc="data_samples")):
        if only and name not in only:
            continue
        frames, entry = build_video(name, timeline, seed)
        write_video(out / entry["file"], frames, fps=FPS, gop=GOP, crf=CRF)
        entry["sha256"] = hashlib.sha256((out / entry["file"]).read_bytes()).hexdigest()
        videos[entry["file"]] = entry
    manifest["videos"] = [videos[k] for k in sorted(videos)]
    path.write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--only", nargs="*", help="names of the videos to rebuild (default: all)")
    a = ap.parse_args()
    m = build(a.out, a.only)
    total = sum(f.stat().st_size for f in a.out.glob("*.mp4"))
    print(f"{len(m['videos'])} videos, {total / 1e6:.2f} MB in {a.out}")
