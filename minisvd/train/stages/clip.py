"""Stage 0, "clip": the course's own tiny CLIP, trained contrastively on frames of the toy world.

SVD conditions on CLIP (Radford et al. 2021): its image model (SD 2.1) on CLIP text, image-to-video on the
CLIP image embedding of the first frame (Blattmann et al. 2023, Sec. 4). The course trains a CLIP of its
own so that every part of the chain is ours and the embeddings mean something in the toy world:

  model    transformers' `CLIPModel(tiny_clip_config(tokenizer))` (models/clip.py): a ViT over 224 x 224
           inputs in 28 px patches and a text transformer, projected to the UNet's cross_attention_dim
  text     a word-level tokenizer over EVERY word the world can say (`world_captions`: all combinations
           of object, background, direction, speed and camera, written by the world's own caption code),
           plus the captions of `--data`; long enough for the longest caption (no word cut off)
  images   single frames (`ToyFrames`), prepared exactly as SVD prepares the conditioning frame:
           `clip_pixels(frames01, size=224)` (anti-aliased resize, CLIP mean/std; conditioning/clip_image.py),
           computed by `pixels_of` as the two matrix products that resize is (equal to 1e-5, 3x faster)
  pairs    (frame, frame caption): "a cat on grass". A single frame cannot show motion, so the motion
           captions of clips ("a cat moving left quickly on grass") are not used as targets here
  loss     CLIP's symmetric InfoNCE, per sample: (CE(row i of logits_per_image) + CE(row i of
           logits_per_text)) / 2, whose batch mean is exactly `CLIPModel(..., return_loss=True).loss`

Which text the later stages use: stage I encodes the frame caption; stages II / III encode the clip's full
caption (motion words included). The tokenizer knows every motion word, so "left" and "right" are distinct
tokens and give distinct text embeddings (measured in clip_report.json: `motion_caption_cosine`), but
CLIP never learned what they mean -- no frame shows it; the video UNet learns their meaning from the clips.

`--init` a vae run (its final/vae/ is carried into our final/, so final/ holds all that stage I needs);
without --init final/ holds only clip/. Evaluation on held-out frames (zero-shot retrieval among all
object x background captions) is written to OUT/final/clip_report.json.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import re
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from minisvd.train.stage import Stage, register_stage
from minisvd.train.stages.chain import carry, final_folder, require

HELD_OUT = 1_000_000  # held-out frames are make_frame(world, HELD_OUT + i): never in a training set


# ----------------------------------------------------------------------------------------------------------
# The world's vocabulary


def world_captions(world) -> list[str]:
    """Every caption the toy world `world` (a `WorldConfig`) can write, frame and clip captions, sorted:
    each object x background x direction x speed word x camera, through the world's own caption code."""
    from minisvd.data.world import Scene, caption_of, image_caption

    speeds = {"still": 0.0, "slowly": min(world.slow), "quickly": max(world.fast)}  # -> the three words
    cameras = [("static", ""), ("pan", "left"), ("pan", "right"), ("zoom", "in"), ("zoom", "out")]
    out = set()
    for obj in world.objects:
        for bg in world.backgrounds:
            base = Scene(obj, bg, "static", 0.0, 8, "static", "", 0.0, 1.0, (0.0, 0.0), (0.0, 0.0),
                         world.size, world.num_frames)  # fmt: skip
            out.add(image_caption(base))
            for direction in world.directions:
                for speed in speeds.values() if direction != "static" else (0.0,):
                    for camera, cam_dir in cameras:
                        scene = dataclasses.replace(
                            base, direction=direction, speed_px_per_s=speed, camera=camera,
                            camera_direction=cam_dir, camera_speed=1.0 if camera != "static" else 0.0,
                        )  # fmt: skip
                        out.add(caption_of(scene, world))
    return sorted(out)


def frame_captions(world) -> list[str]:
    """The motion-free captions of single frames: one per object x background ("a cat on grass")."""
    from minisvd.data.world import Scene, image_caption

    return [
        image_caption(Scene(o, b, "static", 0.0, 8, "static", "", 0.0, 1.0, (0.0, 0.0), (0.0, 0.0), 1, 1))
        for o in world.objects
        for b in world.backgrounds
    ]


def make_tokenizer(captions: list[str]):
    """`build_tokenizer` over the words of `captions`, long enough for the longest one (a multiple of 8).
    Words and punctuation are split as its `Whitespace` pre-tokenizer splits them (a comma is a token,
    <unk>: `build_tokenizer` leaves commas out of the vocabulary)."""
    from minisvd.models.clip import build_tokenizer

    longest = max(len(re.findall(r"\w+|[^\w\s]+", c)) for c in captions) + 2  # + <bos>, <eos>
    return build_tokenizer(captions, max_length=8 * math.ceil(longest / 8))


# ----------------------------------------------------------------------------------------------------------
# The loss


def clip_loss_per_sample(logits_per_image: torch.Tensor) -> torch.Tensor:
    """CLIP's symmetric InfoNCE, one value per pair i: (CE over texts for image i + CE over images for
    text i) / 2, (B,). Its mean is `CLIPModel`'s loss (transformers' `clip_loss`); the positive of row i
    is column i, so two equal captions in a batch are negatives of each other, as in CLIP."""
    labels = torch.arange(len(logits_per_image), device=logits_per_image.device)
    per_image = F.cross_entropy(logits_per_image, labels, reduction="none")  # image i -> its text
    per_text = F.cross_entropy(logits_per_image.t(), labels, reduction="none")  # text i -> its image
    return (per_image + per_text) / 2


@functools.lru_cache(maxsize=16)
def resize_operators(height: int, width: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`clip_pixels`' resize as the linear map it is: R(x) = A_h x A_w^T per channel, A_h (size, height),
    A_w (size, width), read off `clip_pixels` itself (mean 0, std 1) applied to rows and columns of ones.

    The blur (normalised, reflect-padded) and the bicubic resize are separable, linear and keep constants,
    so R(e_i 1^T)[:, 0] is column i of A_h. Two matmuls then give clip_pixels' output (to ~1e-5, float
    rounding; tested) 3x faster than `upsample_bicubic2d`, which on a CPU cost half of a training step."""
    from minisvd.conditioning.clip_image import clip_pixels

    zero, one = (0.0,), (1.0,)
    rows = torch.eye(height, dtype=torch.float64)[:, None, :, None].expand(height, 1, height, width)
    cols = torch.eye(width, dtype=torch.float64)[:, None, None, :].expand(width, 1, height, width)
    a_h = clip_pixels(rows.contiguous(), mean=zero, std=one, size=size)[:, 0, :, 0].T  # (size, height)
    a_w = clip_pixels(cols.contiguous(), mean=zero, std=one, size=size)[:, 0, 0, :].T  # (size, width)
    return a_h.float(), a_w.float()


def pixels_of(images: torch.Tensor, size: int) -> torch.Tensor:
    """Frames (B, 3, H, W) in [-1, 1] -> the CLIP vision tower's input (B, 3, size, size), what
    `clip_pixels((images + 1) / 2, size=size)` gives -- SVD's preparation of the conditioning frame --
    computed with `resize_operators`."""
    from minisvd.conditioning.clip_image import CLIP_MEAN, CLIP_STD

    x = (images.float() + 1) / 2  # [0, 1], as clip_pixels takes it
    a_h, a_w = (a.to(x.device) for a in resize_operators(x.shape[-2], x.shape[-1], size))
    mean = torch.tensor(CLIP_MEAN, device=x.device).reshape(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, device=x.device).reshape(1, 3, 1, 1)
    with torch.autocast(x.device.type, enabled=False):  # pixels in float32 also under bf16 training
        return (a_h @ x @ a_w.T - mean) / std


# ----------------------------------------------------------------------------------------------------------
# Data


class CuratedFrames(Dataset):
    """The middle frame of each kept clip of a curate output folder, with the clip's caption."""

    def __init__(self, folder: Path, size: int):
        from minisvd.data import CuratedClips

        self.clips = CuratedClips(folder, size=size, num_frames=1, sample="center")

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, i: int) -> dict:
        item = self.clips[i]
        return {"image": item["frames"][0], "caption": item["caption"]}


# ----------------------------------------------------------------------------------------------------------
# The stage


@register_stage
class ClipStage(Stage):
    name = "clip"
    SIZES = {  # preset -> world preset, training frames, tower width, tower depth, UNet preset (projection)
        "tiny": ("tiny", 2048, 64, 2, "tiny"),
        "small": ("small", 16384, 128, 4, "small"),
    }
    # tiny: measured on the 2-core CPU, ~45 s of one core; small: ~2 min on one H100 (docs/training.md)
    SCHEDULES = {
        "tiny": dict(steps=350, batch_size=32, lr=5e-4, warmup_steps=10, ema_halflife_samples=1_000,
                     log_every=10, ckpt_every=350, sample_every=0),
        "small": dict(steps=3_000, batch_size=128, lr=1e-3, warmup_steps=100, log_every=50,
                      ckpt_every=500, sample_every=0),
    }  # fmt: skip
    eval_frames = 360  # held-out frames for the retrieval accuracy in clip_report.json

    def __init__(self, preset: str = "tiny"):
        super().__init__(preset)
        if preset not in self.SIZES:
            raise ValueError(f"unknown preset {preset!r} for stage clip; choose one of {sorted(self.SIZES)}")
        world_name, self.num_frames, self.width, self.layers, unet_preset = self.SIZES[preset]
        from minisvd.data import world_preset
        from minisvd.models.unet import UNetConfig

        self.world = world_preset(world_name)
        self.projection_dim = getattr(UNetConfig, unet_preset)().cross_attention_dim  # = the context width
        self.init_final: Path | None = None
        self.tokenizer = None
        self.extra_captions: list[str] = []  # captions of --data that the world does not write

    def default_config(self, **overrides):
        from minisvd.train.config import preset_config

        return preset_config(self.preset, **{**self.SCHEDULES[self.preset], **overrides})

    # ----- the contract -------------------------------------------------------------------------------
    def setup(self, init: Path | None) -> None:
        """--init: a vae run (or its final/), whose vae/ we carry forward; the chain's error if none."""
        self.init_final = None
        if init is not None:
            self.init_final = final_folder(init)
            require(self.init_final, "vae", self.name)
        elif int(os.environ.get("RANK", 0)) == 0:
            print("note: stage clip without --init: final/ will hold clip/ only (no vae/ for stage image)")

    def dataset(self, data: Path | None) -> Dataset:
        from minisvd.data import ToyFrames

        if data is None:
            ds = ToyFrames(self.world, self.num_frames, cache=True)
        else:
            ds = CuratedFrames(Path(data), self.world.size)
            known = set(world_captions(self.world))
            captions = {ds[i]["caption"] for i in range(len(ds))}
            self.extra_captions = sorted(captions - known)
        self.tokenizer = make_tokenizer(world_captions(self.world) + self.extra_captions)
        return ds

    def collate(self, items: list) -> dict:
        from minisvd.data import collate

        batch = collate(items)
        enc = self.tokenizer(batch["caption"], padding="max_length", truncation=True, return_tensors="pt")
        return {"image": batch["image"], "input_ids": enc.input_ids, "attention_mask": enc.attention_mask}

    def build_model(self, init: Path | None) -> nn.Module:
        """A new tiny CLIPModel; `init` (the vae run) holds no CLIP weights, it is only carried forward."""
        from transformers import CLIPModel

        from minisvd.models.clip import tiny_clip_config

        if self.tokenizer is None:
            self.tokenizer = make_tokenizer(world_captions(self.world) + self.extra_captions)
        config = tiny_clip_config(
            self.tokenizer, projection_dim=self.projection_dim, width=self.width, layers=self.layers
        )
        return CLIPModel(config)

    def loss(self, model: nn.Module, batch: dict, generator: torch.Generator):
        out = model(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            pixel_values=pixels_of(batch["image"], self.image_size(model)),
        )
        logits = out.logits_per_image  # (B, B): image i vs text j, times exp(logit_scale)
        ids = batch["input_ids"]
        picked = ids[logits.argmax(dim=1)]  # the caption each image retrieves in the batch
        correct = (picked == ids).all(dim=1).float()  # right caption (or an identical one)
        return clip_loss_per_sample(logits), {"batch_top1": correct}

    @staticmethod
    def image_size(model: nn.Module) -> int:
        model = getattr(model, "module", model)  # DDP
        return model.config.vision_config.image_size

    def save_final(self, model: nn.Module, ema: nn.Module | None, out_dir: Path) -> Path:
        """final/clip/ (`save_clip_folder`: CLIPModel + tokenizer + image processor), final/vae/ carried
        from --init, final/clip_report.json (held-out retrieval accuracy)."""
        from minisvd.models.clip import save_clip_folder

        clip = (ema if ema is not None else model).eval()
        out_dir.mkdir(parents=True, exist_ok=True)
        save_clip_folder(clip, self.tokenizer, out_dir / "clip")
        carry(self.init_final, out_dir, ("vae",))
        report = {"preset": self.preset, **evaluate_clip(clip, self.tokenizer, self.world, self.eval_frames)}
        (out_dir / "clip_report.json").write_text(json.dumps(report, indent=2) + "\n")
        return out_dir


# ----------------------------------------------------------------------------------------------------------
# Evaluation


@torch.no_grad()
def embed_text(model, tokenizer, captions: list[str]) -> torch.Tensor:
    """Unit-norm projected text embeddings (N, D)."""
    p = next(model.parameters())
    enc = tokenizer(captions, padding="max_length", truncation=True, return_tensors="pt").to(p.device)
    emb = model.get_text_features(input_ids=enc.input_ids, attention_mask=enc.attention_mask)
    emb = getattr(emb, "pooler_output", emb)  # transformers >= 5 returns a ModelOutput
    return F.normalize(emb.float(), dim=-1)


@torch.no_grad()
def embed_images(model, images: torch.Tensor, chunk: int = 64) -> torch.Tensor:
    """Unit-norm projected image embeddings (N, D) of frames (N, 3, H, W) in [-1, 1]."""
    p = next(model.parameters())
    size = model.config.vision_config.image_size
    out = []
    for i in range(0, len(images), chunk):
        emb = model.get_image_features(pixel_values=pixels_of(images[i : i + chunk].to(p.device), size))
        out.append(F.normalize(getattr(emb, "pooler_output", emb).float(), dim=-1))
    return torch.cat(out)


@torch.no_grad()
def evaluate_clip(model, tokenizer, world, n: int = 360) -> dict:
    """Zero-shot retrieval on `n` held-out frames: the frame's caption among all object x background
    captions, top-1 (and whether the object / the background is right); chance is 1 / #captions. Also
    how close the text embeddings of captions differing only in motion words are (mean cosine)."""
    from minisvd.data.datasets import to_pixels
    from minisvd.data.photos import BACKGROUNDS
    from minisvd.data.world import article, make_frame

    model = model.eval()
    frames = [make_frame(world, HELD_OUT + i) for i in range(n)]
    images = torch.stack([to_pixels(f.image) for f in frames])  # (n, 3, H, W) in [-1, 1]
    captions = frame_captions(world)
    pairs = [(o, b) for o in world.objects for b in world.backgrounds]  # same order as frame_captions
    sim = embed_images(model, images) @ embed_text(model, tokenizer, captions).T  # (n, #captions)
    best = [pairs[j] for j in sim.argmax(dim=1).tolist()]
    truth = [(f.object, f.background) for f in frames]
    top1 = sum(b == t for b, t in zip(best, truth)) / n
    objects = sum(b[0] == t[0] for b, t in zip(best, truth)) / n
    backgrounds = sum(b[1] == t[1] for b, t in zip(best, truth)) / n
    # captions that differ only in motion: their embeddings differ, though CLIP never saw motion
    obj, where = world.objects[0], BACKGROUNDS[world.backgrounds[0]].place
    variants = [f"{article(obj)} {obj} moving {d} quickly {where}" for d in ("left", "right", "up", "down")]
    t = embed_text(model, tokenizer, variants)
    cos = (t @ t.T)[~torch.eye(len(t), dtype=torch.bool)]
    return {
        "held_out_frames": n,
        "captions": len(captions),
        "retrieval_top1": round(top1, 4),
        "object_top1": round(objects, 4),
        "background_top1": round(backgrounds, 4),
        "chance": round(1 / len(captions), 4),
        "motion_caption_cosine": round(cos.mean().item(), 4),
        "motion_captions": variants,
        "vocabulary": len(tokenizer),
        "max_length": tokenizer.model_max_length,
    }
