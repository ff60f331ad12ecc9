"""The toy video world: photographed objects moving over photographed backgrounds, with a caption.

SVD is trained in three stages (Blattmann et al. 2023, Sec. 3): image pretraining (stage I), video
pretraining on a large curated set (stage II) and finetuning on a small high-quality set (stage III),
and it is conditioned on the frame rate and the amount of motion (Sec. 4.1, "micro-conditioning").
To try all of this on a laptop CPU in minutes we need videos whose content, motion and frame rate we
control exactly. A clip here is one object (`photos.OBJECTS`) over one background (`photos.BACKGROUNDS`):

* the object moves left / right / up / down or stays still, at a speed in **pixels per second**, so the
  displacement per frame depends on the frame rate (4, 8 or 12 fps): what `fps_id` has to teach;
* the camera is static, pans horizontally, or zooms in or out (at pixels / scale change per second);
* everything is drawn at sub-pixel positions: each frame warps the cached sprite and background with
  one bilinear affine map (`cv2.warpAffine`), so slow motion is smooth, not a one-pixel jump every few
  frames;
* the caption says what happens: "a cat moving left slowly on grass, the camera pans right".

`make_clip(config, index)` is a pure function of (config.seed, index): a `numpy` Generator seeded from
both draws every choice, so clip 17 is the same clip in every run, process and DataLoader worker.
A 32x32 clip of 8 frames takes ~0.8 ms on this project's 2-core CPU, 64x64 ~1.5 ms (`scripts/make_toy_world.py
bench`); objects are at least 68% visible in 99% of frames (the start position keeps the centre's path
20% inside the frame, and too fast object / pan speeds are scaled down together).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import lru_cache

import cv2
import numpy as np
import torch

from minisvd.data.motion_bucket import predict_score, score_pairs
from minisvd.data.photos import BACKGROUNDS, OBJECTS, background, sprite

DIRECTIONS = {
    "left": (-1.0, 0.0),
    "right": (1.0, 0.0),
    "up": (0.0, -1.0),
    "down": (0.0, 1.0),
    "static": (0.0, 0.0),
}
CAMERAS = ("static", "pan", "zoom")


@dataclass
class WorldConfig:
    """What the world may contain. Speeds are in pixels (of this `size`) per second; `None` ranges are the
    32-px defaults scaled by size / 32, so a 64-px world looks like the 32-px one at twice the resolution."""

    size: int = 32  # frames are size x size
    num_frames: int = 8
    fps_choices: tuple[int, ...] = (4, 8, 12)
    objects: tuple[str, ...] = tuple(OBJECTS)
    backgrounds: tuple[str, ...] = tuple(BACKGROUNDS)
    directions: tuple[str, ...] = ("left", "right", "up", "down", "static")
    slow_px_per_s: tuple[float, float] | None = None  # None: (3, 6) * size / 32
    fast_px_per_s: tuple[float, float] | None = None  # None: (10, 18) * size / 32
    camera_probs: tuple[float, float, float] = (0.5, 0.3, 0.2)  # static, pan, zoom
    pan_px_per_s: tuple[float, float] | None = None  # None: (4, 10) * size / 32
    zoom_per_s: tuple[float, float] = (0.10, 0.30)  # log scale change per second (0.2: x1.22 per second)
    object_scale: tuple[float, float] = (0.35, 0.6)  # the object's longer side / frame size
    max_travel: float = 0.7  # on screen the object's centre moves at most this fraction of the frame
    seed: int = 0

    def scaled(self, r: tuple[float, float] | None, default: tuple[float, float]) -> tuple[float, float]:
        return r if r is not None else (default[0] * self.size / 32, default[1] * self.size / 32)

    @property
    def slow(self) -> tuple[float, float]:
        return self.scaled(self.slow_px_per_s, (3.0, 6.0))

    @property
    def fast(self) -> tuple[float, float]:
        return self.scaled(self.fast_px_per_s, (10.0, 18.0))

    @property
    def pan(self) -> tuple[float, float]:
        return self.scaled(self.pan_px_per_s, (4.0, 10.0))

    @property
    def quick_above(self) -> float:
        """Object speeds (px/s) above this are captioned "quickly", below "slowly"."""
        return (self.slow[1] + self.fast[0]) / 2


PRESETS = {
    "tiny": WorldConfig(size=32),  # stage I/II on a laptop: a batch of 16 clips trains in ~0.2 s
    "small": WorldConfig(size=64),
    "moving": WorldConfig(size=32, directions=("left", "right", "up", "down"), camera_probs=(1, 0, 0)),
    "raw": WorldConfig(size=128, num_frames=72, fps_choices=(24,), camera_probs=(0.4, 0.4, 0.2)),
}


def world_preset(name: str, **overrides) -> WorldConfig:
    """A copy of a preset ("tiny", "small", "moving", "raw") with some fields changed."""
    if name not in PRESETS:
        raise ValueError(f"unknown world preset {name!r}; choose from {sorted(PRESETS)}")
    return WorldConfig(**{**asdict(PRESETS[name]), **overrides})


# ----------------------------------------------------------------------------- one scene = every random choice
@dataclass
class Scene:
    """Everything that defines one clip; `render` turns it into frames."""

    object: str
    background: str
    direction: str  # left | right | up | down | static
    speed_px_per_s: float  # the object's speed in the world (0 when static)
    fps: int
    camera: str  # static | pan | zoom
    camera_direction: str  # pan: "left" | "right"; zoom: "in" | "out"; "" when static
    camera_speed: float  # pan: px / s; zoom: log scale change / s
    object_px: float  # the object's longer side in pixels at zoom 1
    start: tuple[float, float]  # the object's centre at t = 0 in world (= screen at t = 0) coordinates
    texture_origin: tuple[float, float]  # world position of the background texture's pixel (0, 0)
    size: int
    num_frames: int

    @property
    def speed_px_per_frame(self) -> float:
        return self.speed_px_per_s / self.fps

    @property
    def velocity(self) -> np.ndarray:
        """The object's world velocity in px / s, (2,)."""
        return np.array(DIRECTIONS[self.direction]) * self.speed_px_per_s

    def zoom(self, s: np.ndarray) -> np.ndarray:
        """Camera zoom factor at times s (seconds); >1 = closer than at t = 0."""
        if self.camera != "zoom":
            return np.ones_like(s)
        return np.exp((1 if self.camera_direction == "in" else -1) * self.camera_speed * s)

    def pan_offset(self, s: np.ndarray) -> np.ndarray:
        """How far the camera has moved (world px) at times s: (len(s), 2). Panning right = +x."""
        off = np.zeros((len(s), 2))
        if self.camera == "pan":
            off[:, 0] = (1 if self.camera_direction == "right" else -1) * self.camera_speed * s
        return off

    def screen_centre(self, frames: np.ndarray) -> np.ndarray:
        """Where the object's centre is on screen at the given frame indices: (len(frames), 2)."""
        s = np.asarray(frames, np.float64) / self.fps
        c = (self.size - 1) / 2
        p = np.asarray(self.start) + s[:, None] * self.velocity
        return c + self.zoom(s)[:, None] * (p - c - self.pan_offset(s))


def speed_word(scene: Scene, config: WorldConfig) -> str:
    """The speed word: "still", "slowly" or "quickly", from the speed in the world (px / s), not per frame."""
    if scene.direction == "static" or scene.speed_px_per_s == 0:
        return "still"
    return "quickly" if scene.speed_px_per_s > config.quick_above else "slowly"


def article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def caption_of(scene: Scene, config: WorldConfig) -> str:
    """The clip's caption, e.g. "a cat moving left slowly on grass", "a rocket standing still in front of a
    brick wall, the camera pans right", "a cup moving up quickly on gravel, the camera zooms in"."""
    where = BACKGROUNDS[scene.background].place
    word = speed_word(scene, config)
    what = "standing still" if word == "still" else f"moving {scene.direction} {word}"
    cap = f"{article(scene.object)} {scene.object} {what} {where}"
    if scene.camera == "pan":
        cap += f", the camera pans {scene.camera_direction}"
    elif scene.camera == "zoom":
        cap += f", the camera zooms {scene.camera_direction}"
    return cap


def image_caption(scene: Scene) -> str:
    """The caption of a single frame (stage I): no motion words. "a cat on grass"."""
    return f"{article(scene.object)} {scene.object} {BACKGROUNDS[scene.background].place}"


def scene_rng(seed: int, index: int) -> np.random.Generator:
    """The Generator of clip `index`: seeded from both numbers, independent of any other clip."""
    return np.random.default_rng([int(seed), int(index)])


def sample_scene(config: WorldConfig, rng: np.random.Generator, still: bool | None = None) -> Scene:
    """Draw one scene. `still=True` forces a static object and camera, `still=False` forbids that
    combination (the raw set uses this to control how many static clips it contains)."""
    c, F, size = config, config.num_frames, config.size
    pick = lambda options: options[int(rng.integers(len(options)))]  # noqa: E731 (uniform choice)
    obj, bg, fps = pick(c.objects), pick(c.backgrounds), int(pick(c.fps_choices))
    direction = pick(c.directions)
    camera = CAMERAS[int(rng.choice(3, p=np.asarray(c.camera_probs) / np.sum(c.camera_probs)))]
    if still:
        direction, camera = "static", "static"
    elif still is False and direction == "static" and camera == "static":
        camera = "pan"
    speed = 0.0 if direction == "static" else float(rng.uniform(*(c.fast if rng.random() < 0.5 else c.slow)))
    cam_dir, cam_speed = "", 0.0
    if camera == "pan":
        cam_dir, cam_speed = pick(("left", "right")), float(rng.uniform(*c.pan))
    elif camera == "zoom":
        cam_dir, cam_speed = pick(("in", "out")), float(rng.uniform(*c.zoom_per_s))
    # Keep the object on screen: scale the object and pan speeds down together if, seen from the moving
    # camera, the object would cross more than `max_travel` of the frame during the clip.
    duration = (F - 1) / fps
    pan_v = np.array([(1 if cam_dir == "right" else -1) * cam_speed if camera == "pan" else 0.0, 0.0])
    rel = np.abs(np.array(DIRECTIONS[direction]) * speed - pan_v).max() * duration
    if rel > c.max_travel * size:
        k = c.max_travel * size / rel
        speed *= k
        if camera == "pan":
            cam_speed *= k
    object_px = float(rng.uniform(*c.object_scale)) * size * OBJECTS[obj].scale
    scene = Scene(obj, bg, direction, speed, fps, camera, cam_dir, cam_speed, object_px,
                  (0.0, 0.0), (0.0, 0.0), size, F)  # fmt: skip
    scene.start = place_object(scene, rng)
    scene.texture_origin = place_texture(scene, rng)
    return scene


def place_object(scene: Scene, rng: np.random.Generator) -> tuple[float, float]:
    """A start position such that the whole on-screen path of the centre stays `margin` inside the frame
    (centred when the path is too long for that)."""
    c, size = (scene.size - 1) / 2, scene.size
    scene.start = (c, c)
    path = scene.screen_centre(np.arange(scene.num_frames))  # (F, 2) when starting at the centre
    lo, hi = path.min(0), path.max(0)
    margin = 0.2 * size
    room = (size - 1 - 2 * margin) - (hi - lo)  # (2,) free play per axis
    shift = np.where(room >= 0, margin - lo + rng.uniform(0, 1, 2) * np.maximum(room, 0), c - (lo + hi) / 2)
    return float(c + shift[0]), float(c + shift[1])


def place_texture(scene: Scene, rng: np.random.Generator) -> tuple[float, float]:
    """Where the (2 * size)-wide background texture sits in the world, so that every frame sees only it."""
    size = scene.size
    s = np.arange(scene.num_frames) / scene.fps
    c = (size - 1) / 2
    z, off = scene.zoom(s), scene.pan_offset(s)
    corners = np.array([[0, 0], [size - 1, size - 1]], np.float64)
    seen = np.concatenate([c + (corners - c) / zi + oi for zi, oi in zip(z, off)])  # world points seen
    lo, hi = seen.min(0), seen.max(0)
    side = 2 * size  # texture side (see `render`)
    low, high = hi - (side - 1), lo  # the origin must be <= lo and >= hi - (side - 1)
    t = rng.uniform(0, 1, 2)
    return tuple(float(x) for x in np.where(high >= low, low + t * (high - low), (low + high) / 2))


# ----------------------------------------------------------------------------- drawing
def render(
    scene: Scene, frames: np.ndarray | None = None, draw_object: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Frames (T, H, W, 3) uint8 and the object's alpha (T, H, W) float32 at the given frame indices.

    A world point W is seen at X = c + z (W - c - o) (c: frame centre, z: zoom, o: pan offset), so each
    layer is one affine map from its own pixels to the screen: bilinear, sub-pixel exact (cv2 resamples
    at 1/32 px). The sprite is only warped into (and composited over) its bounding box on screen.
    """
    t = np.arange(scene.num_frames) if frames is None else np.asarray(frames)
    size, c = scene.size, (scene.size - 1) / 2
    s = t / scene.fps  # seconds
    z, off = scene.zoom(s), scene.pan_offset(s)
    tex = background(scene.background, 2 * size)  # (2S, 2S, 3) uint8
    spr = sprite(scene.object, max(1, round(scene.object_px * float(z.max()))))  # (h, w, 4) premultiplied
    h, w = spr.shape[:2]
    q = scene.object_px / max(h, w)  # world px per sprite px
    centres = np.asarray(scene.start) + s[:, None] * scene.velocity  # (T, 2) world
    out = np.empty((len(t), size, size, 3), np.uint8)
    alpha = np.zeros((len(t), size, size), np.float32)
    ox, oy = scene.texture_origin
    for i in range(len(t)):
        zi, (px, py), (dx, dy) = z[i], centres[i], off[i]
        if i == 0 or scene.camera != "static":  # a static camera sees the same background every frame
            m_bg = np.array([[zi, 0, c + zi * (ox - c - dx)], [0, zi, c + zi * (oy - c - dy)]])
            bg = cv2.warpAffine(
                tex, m_bg, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT101
            )
        out[i] = bg
        if not draw_object:
            continue
        zq = zi * q  # screen px per sprite px
        x0 = c + zi * (px - q * (w - 1) / 2 - c - dx)  # where sprite pixel (0, 0) lands
        y0 = c + zi * (py - q * (h - 1) / 2 - c - dy)
        bx0, by0 = max(int(np.floor(x0)), 0), max(int(np.floor(y0)), 0)  # the sprite's box on screen
        bx1 = min(int(np.ceil(x0 + zq * (w - 1))) + 1, size)
        by1 = min(int(np.ceil(y0 + zq * (h - 1))) + 1, size)
        if bx1 <= bx0 or by1 <= by0:
            continue  # off screen
        m_fg = np.array([[zq, 0, x0 - bx0], [0, zq, y0 - by0]])
        fg = cv2.warpAffine(
            spr, m_fg, (bx1 - bx0, by1 - by0), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT
        )
        a = fg[..., 3:]  # (h', w', 1)
        region = out[i, by0:by1, bx0:bx1]
        region[:] = np.clip(region * (1 - a) + fg[..., :3] * 255 + 0.5, 0, 255)  # premultiplied "over"
        alpha[i, by0:by1, bx0:bx1] = a[..., 0]
    return out, alpha


@lru_cache(maxsize=8)
def _pixel_offsets(size: int) -> np.ndarray:
    """(H, W, 2) float32 pixel coordinates relative to the frame centre."""
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32)
    c = (size - 1) / 2
    return np.stack([xs - c, ys - c], -1)


def flow_field(scene: Scene, alpha: np.ndarray, i: int) -> np.ndarray:
    """The exact optical flow (H, W, 2) from frame i to frame i + 1, in px; `alpha`: (H, W) at frame i.

    A background point at screen X moves by (z1/z0 - 1)(X - c) - z1 (o1 - o0) (zoom about the centre,
    then the pan); points of the object also move with it, by z1 v dt. Mixed by the object's alpha.
    """
    s = np.array([i, i + 1]) / scene.fps
    z, off = scene.zoom(s), scene.pan_offset(s)
    bg = (z[1] / z[0] - 1) * _pixel_offsets(scene.size) - (z[1] * (off[1] - off[0])).astype(np.float32)
    obj = (z[1] * scene.velocity / scene.fps).astype(np.float32)  # (2,) extra motion of object pixels
    return bg + alpha[..., None] * obj


def motion_pair(scene: Scene) -> int:
    """The middle one of the frame pairs the curation score samples (all pairs move alike here)."""
    pairs = score_pairs(scene.num_frames, scene.fps) or [0]
    return pairs[len(pairs) // 2]


# ----------------------------------------------------------------------------- clips and frames
@dataclass
class Clip:
    """One toy video. `frames` are uint8 (0..255) to keep caches small; `frames01` gives float [0, 1]."""

    frames: torch.Tensor  # (F, 3, H, W) uint8
    alpha: torch.Tensor  # (F, H, W) float32, the object's coverage of each pixel (ground truth)
    positions: np.ndarray  # (F, 2) the object's centre on screen (x, y) in pixels
    scene: Scene
    caption: str
    speed: str  # "still" | "slowly" | "quickly"
    true_flow: float  # exact mean flow magnitude, px / frame (see `flow_field`)
    motion: float  # the curation motion score, predicted from the exact flow (`motion_bucket.predict_score`)
    index: int = 0

    @property
    def frames01(self) -> torch.Tensor:
        """(F, 3, H, W) float32 in [0, 1], what `minisvd.export.save_mp4` takes."""
        return self.frames.float() / 255

    @property
    def object(self) -> str:
        return self.scene.object

    @property
    def background(self) -> str:
        return self.scene.background

    @property
    def direction(self) -> str:
        return self.scene.direction

    @property
    def fps(self) -> int:
        return self.scene.fps

    @property
    def camera(self) -> str:
        return self.scene.camera

    @property
    def speed_px_per_frame(self) -> float:
        return self.scene.speed_px_per_frame

    def metadata(self) -> dict:
        """Plain-type description (JSON-able): everything but the pixels."""
        s = self.scene
        return {"index": self.index, "caption": self.caption, "object": s.object, "background": s.background,
                "direction": s.direction, "speed": self.speed, "speed_px_per_s": round(s.speed_px_per_s, 4),
                "speed_px_per_frame": round(s.speed_px_per_frame, 4), "fps": s.fps, "camera": s.camera,
                "camera_direction": s.camera_direction, "camera_speed": round(s.camera_speed, 4),
                "true_flow": round(self.true_flow, 4), "motion": round(self.motion, 4)}  # fmt: skip


def make_clip(config: WorldConfig, index: int) -> Clip:
    """Clip number `index` of the world `config`: the same (seed, index) always gives the same clip."""
    scene = sample_scene(config, scene_rng(config.seed, index))
    return clip_from_scene(scene, config, index)


def clip_from_scene(scene: Scene, config: WorldConfig, index: int = 0) -> Clip:
    """Render a scene into a `Clip` (frames, ground truth, caption, motion)."""
    frames, alpha = render(scene)
    i = motion_pair(scene)
    flow = flow_field(scene, alpha[i], i)  # (H, W, 2)
    return Clip(
        # numpy does the transpose: torch's (multi-threaded) copy would fight cv2's worker threads here
        frames=torch.from_numpy(np.ascontiguousarray(frames.transpose(0, 3, 1, 2))),  # (F, 3, H, W)
        alpha=torch.from_numpy(alpha),
        positions=scene.screen_centre(np.arange(scene.num_frames)),
        scene=scene,
        caption=caption_of(scene, config),
        speed=speed_word(scene, config),
        true_flow=float(np.linalg.norm(flow, axis=-1).mean()),
        motion=predict_score(frames[i], flow),
        index=index,
    )


@dataclass
class Frame:
    """One still image of the world, for stage I (image pretraining), with its caption."""

    image: torch.Tensor  # (3, H, W) uint8
    caption: str  # "a cat on grass"
    object: str
    background: str
    index: int


def make_frame(config: WorldConfig, index: int) -> Frame:
    """A single frame of clip `index`, at a time drawn from the same Generator (deterministic)."""
    rng = scene_rng(config.seed, index)
    scene = sample_scene(config, rng)
    t = int(rng.integers(0, scene.num_frames))
    img, _ = render(scene, np.array([t]))
    image = torch.from_numpy(np.ascontiguousarray(img[0].transpose(2, 0, 1)))  # (3, H, W)
    return Frame(image, image_caption(scene), scene.object, scene.background, index)
