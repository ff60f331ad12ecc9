"""Objects and backgrounds of the toy video world, cut from the photographs that ship inside scikit-image.

SVD learns motion from millions of web videos (Blattmann et al. 2023, Sec. 3). To watch the same ideas
work on a laptop CPU we need a world small enough to learn in minutes but real enough to look like
video: photographed objects (a cat's head, an astronaut, a coffee cup, a rocket, a horse, a clock) moving
over photographed backgrounds (grass, gravel, a brick wall, the moon, a colour wheel, a wooden table).
Every picture comes from `skimage.data`, which is inside the scikit-image wheel, so nothing is downloaded.

* An **object** is an RGBA sprite: the photo cropped to a box, with an alpha mask (a soft ellipse, a
  threshold of the photo, or scikit-image's own horse silhouette) so that it can be pasted over any
  background. Sprites are stored *premultiplied* (rgb * alpha), the form that bilinear resampling and
  compositing handle correctly at the edges.
* A **background** is an RGB texture, twice the frame size, so a camera can pan across it. Grey textures
  are colourised so that the backgrounds also differ in colour (grass is green, a brick wall red).

Both are resized once per target size (INTER_AREA, no aliasing) and kept in memory (`lru_cache`): the
renderer in `world.py` only ever warps these small arrays.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np


@dataclass(frozen=True)
class ObjectSpec:
    """How to cut one object out of a photograph."""

    name: str  # the word used in captions
    photo: str  # a `skimage.data` function name
    box: tuple[float, float, float, float]  # crop (x0, y0, x1, y1) as fractions of the photo
    mask: str  # "ellipse" (inscribed in the box) | "red" (red channel above a threshold) | "horse"
    tint: tuple[float, float, float] | None = None  # colourise a grey photo (RGB gains) / fill colour
    scale: float = 1.0  # thin objects (the rocket) are drawn larger so that they stay visible at 32 px


@dataclass(frozen=True)
class BackgroundSpec:
    """How to make one background texture."""

    name: str  # the word used in metadata ("brick wall")
    place: str  # how a caption says where the object is ("in front of a brick wall")
    photo: str
    box: tuple[float, float, float, float] = (0.0, 0.0, 1.0, 1.0)
    tint: tuple[float, float, float] | None = None  # grey textures get a colour


OBJECTS: dict[str, ObjectSpec] = {
    s.name: s
    for s in [
        ObjectSpec("cat", "chelsea", (0.10, 0.00, 0.95, 1.00), "ellipse"),
        ObjectSpec("astronaut", "astronaut", (0.04, 0.00, 0.70, 1.00), "ellipse"),
        ObjectSpec("cup", "coffee", (0.20, 0.0, 0.90, 0.75), "ellipse"),  # cup and saucer
        ObjectSpec("rocket", "rocket", (0.455, 0.26, 0.555, 0.88), "red", scale=1.4),
        ObjectSpec("horse", "horse", (0.0, 0.0, 1.0, 1.0), "horse", tint=(0.75, 0.50, 0.30), scale=1.2),
        ObjectSpec("clock", "clock", (0.33, 0.27, 0.67, 0.73), "ellipse", tint=(1.0, 0.85, 0.45)),
    ]
}

# Fine textures are seen from closer up (a crop of the photo), so that grass blades stay wider than a pixel.
CLOSE = (0.2, 0.2, 0.6, 0.6)
BACKGROUNDS: dict[str, BackgroundSpec] = {
    s.name: s
    for s in [
        BackgroundSpec("grass", "on grass", "grass", CLOSE, tint=(0.45, 0.85, 0.30)),
        BackgroundSpec("gravel", "on gravel", "gravel", CLOSE, tint=(0.90, 0.78, 0.60)),
        BackgroundSpec("brick wall", "in front of a brick wall", "brick", CLOSE, tint=(0.90, 0.42, 0.30)),
        BackgroundSpec("moon", "on the moon", "moon", CLOSE, tint=(0.70, 0.78, 0.95)),
        BackgroundSpec("colour wheel", "in front of a colour wheel", "colorwheel", (0.2, 0.2, 0.8, 0.8)),
        BackgroundSpec("table", "on a wooden table", "coffee", (0.75, 0.0, 1.0, 0.4)),
    ]
}


# ----------------------------------------------------------------------------- source photographs
@lru_cache(maxsize=None)
def photo(name: str) -> np.ndarray:
    """A `skimage.data` picture as (H, W, 3) uint8 RGB (grey ones repeated over 3 channels).

    The horse is a boolean silhouette (True = background); it is returned as 255 = horse, 0 = not.
    """
    from skimage import data as skdata

    img = getattr(skdata, name)()
    if img.dtype == bool:
        img = np.where(img, 0, 255).astype(np.uint8)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, -1)
    return np.ascontiguousarray(img[..., :3])


def crop(img: np.ndarray, box: tuple[float, float, float, float]) -> np.ndarray:
    """The part of `img` inside a box given as fractions (x0, y0, x1, y1)."""
    h, w = img.shape[:2]
    x0, y0, x1, y1 = box
    return img[int(round(y0 * h)) : int(round(y1 * h)), int(round(x0 * w)) : int(round(x1 * w))]


def colourise(grey: np.ndarray, tint: tuple[float, float, float]) -> np.ndarray:
    """Grey (H, W) or (H, W, 3) uint8 -> RGB uint8: contrast stretched to 2..98 percentiles, times `tint`."""
    g = grey[..., 0] if grey.ndim == 3 else grey
    lo, hi = np.percentile(g, [2, 98])
    g = np.clip((g.astype(np.float32) - lo) / max(hi - lo, 1.0), 0, 1)  # (H, W) in [0, 1]
    rgb = (0.15 + 0.85 * g[..., None]) * np.asarray(tint, np.float32)  # keep some light in the shadows
    return np.clip(rgb * 255, 0, 255).round().astype(np.uint8)


# ----------------------------------------------------------------------------- objects
def ellipse_mask(h: int, w: int) -> np.ndarray:
    """A filled ellipse inscribed in an (h, w) box, float32 in [0, 1]."""
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    r = ((xs - (w - 1) / 2) / (w / 2)) ** 2 + ((ys - (h - 1) / 2) / (h / 2)) ** 2
    return (r <= 1).astype(np.float32)


def largest_component(mask: np.ndarray) -> np.ndarray:
    """Keep the largest 8-connected blob of a 0/1 uint8 mask."""
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    if n <= 1:
        return mask
    best = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    return (labels == best).astype(np.uint8)


@lru_cache(maxsize=None)
def object_rgba(name: str) -> np.ndarray:
    """The full-resolution sprite of an object: (h, w, 4) float32, premultiplied RGB and alpha in [0, 1]."""
    spec = OBJECTS[name]
    rgb = crop(photo(spec.photo), spec.box)
    h, w = rgb.shape[:2]
    if spec.mask == "ellipse":
        alpha = ellipse_mask(h, w)
    elif spec.mask == "red":  # the rocket: bright, warm metal against a dark blue sky
        m = (rgb[..., 0] > 90).astype(np.uint8)
        m = cv2.morphologyEx(m, cv2.MORPH_CLOSE, np.ones((7, 7), np.uint8))
        m = cv2.morphologyEx(m, cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))
        alpha = largest_component(m).astype(np.float32)
    elif spec.mask == "horse":  # a silhouette: fill it with a colour, textured by gravel so flow can see it
        sil = rgb[..., 0] > 127
        ys, xs = np.nonzero(sil)
        y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
        alpha = sil[y0:y1, x0:x1].astype(np.float32)
        texture = cv2.resize(photo("gravel")[..., 0], (x1 - x0, y1 - y0), interpolation=cv2.INTER_AREA)
        rgb = colourise(texture, spec.tint)
        rgb = (0.6 * rgb + 0.4 * np.asarray(spec.tint) * 255).astype(np.uint8)  # mostly the fill colour
        h, w = alpha.shape
    else:
        raise ValueError(f"unknown mask kind {spec.mask!r}")
    if spec.tint is not None and spec.mask != "horse":
        rgb = colourise(rgb, spec.tint)
    feather = max(h, w) / 150  # a soft edge of ~1/150 of the object: antialiased after any resize
    alpha = cv2.GaussianBlur(alpha, (0, 0), feather)[..., None]  # (h, w, 1)
    return np.concatenate([rgb.astype(np.float32) / 255 * alpha, alpha], -1)  # (h, w, 4) premultiplied


@lru_cache(maxsize=None)
def object_master(name: str, long_side: int = 256) -> np.ndarray:
    """The sprite at a 256-px longer side (or its own size if smaller), the source of every smaller one."""
    full = object_rgba(name)
    s = min(1.0, long_side / max(full.shape[:2]))
    size = (max(1, round(full.shape[1] * s)), max(1, round(full.shape[0] * s)))
    return cv2.resize(full, size, interpolation=cv2.INTER_AREA)


@lru_cache(maxsize=4096)
def sprite(name: str, long_side: int) -> np.ndarray:
    """The object resized so that its longer side is `long_side` px: (h, w, 4) float32, premultiplied."""
    full = object_master(name) if long_side <= 256 else object_rgba(name)
    h, w = full.shape[:2]
    s = long_side / max(h, w)
    size = (max(1, round(w * s)), max(1, round(h * s)))
    return cv2.resize(full, size, interpolation=cv2.INTER_AREA)


# ----------------------------------------------------------------------------- backgrounds
@lru_cache(maxsize=None)
def background_full(name: str) -> np.ndarray:
    """The background picture at its own resolution, colourised: (H, W, 3) uint8."""
    spec = BACKGROUNDS[name]
    img = crop(photo(spec.photo), spec.box)
    return colourise(img, spec.tint) if spec.tint is not None else np.ascontiguousarray(img)


@lru_cache(maxsize=64)
def background(name: str, side: int) -> np.ndarray:
    """The background as a (side, side, 3) uint8 square texture (a camera sees part of it)."""
    return cv2.resize(background_full(name), (side, side), interpolation=cv2.INTER_AREA)


def contact_sheet(size: int = 64) -> np.ndarray:
    """Every object over every background, one row per object: (n_obj * size, n_bg * size, 3) uint8."""
    rows = []
    for obj in OBJECTS:
        spr = sprite(obj, int(size * 0.8))
        h, w = spr.shape[:2]
        y0, x0 = (size - h) // 2, (size - w) // 2
        row = []
        for bg in BACKGROUNDS:
            img = background(bg, size).astype(np.float32) / 255
            a = spr[..., 3:]
            img[y0 : y0 + h, x0 : x0 + w] = img[y0 : y0 + h, x0 : x0 + w] * (1 - a) + spr[..., :3]
            row.append(img)
        rows.append(np.concatenate(row, 1))
    return (np.concatenate(rows, 0) * 255).round().astype(np.uint8)
