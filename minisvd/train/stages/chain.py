"""The chain of the course's stages and the folders each hands to the next (Blattmann et al. 2023, Sec. 3-4).

    vae  ->  clip  ->  image (stage I)  ->  video (stage II)  ->  hires (stage III)  ->  i2v

Each stage's run folder OUT holds `OUT/final/` with everything the next stage needs, and the next stage's
`--init` takes that run folder (or its final/ folder):

    final/vae/     our VideoVAE as a diffusers `AutoencoderKLTemporalDecoder` folder; its config's
                   scaling_factor is measured on the training data (latents of unit variance)
    final/clip/    the tiny CLIP: `CLIPModel` + tokenizer + image processor (`minisvd.models.clip.save_clip_folder`)
    final/unet/    our UNet as a diffusers `UNetSpatioTemporalConditionModel` folder (stages I, II, III, i2v)
    i2v only:      image_encoder/, feature_extractor/, scheduler/, model_index.json: the SVD diffusers layout,
                   which `diffusers.StableVideoDiffusionPipeline` and `minisvd.load_pipeline` read

A stage copies forward the parts it does not train (`carry`), so every final/ folder is complete on its own.
"""

from __future__ import annotations

import shutil
from pathlib import Path

ORDER = ("vae", "clip", "image", "video", "hires", "i2v")
MADE_BY = {"vae": "vae", "clip": "clip", "unet": "image"}  # which stage first writes each part


def final_folder(init: str | Path) -> Path:
    """`init` as given to --init: a run folder (OUT, holding final/) or a final/ folder itself."""
    path = Path(init)
    if (path / "final").is_dir():
        return path / "final"
    if not path.is_dir():
        raise FileNotFoundError(f"--init {path}: no such folder")
    return path


def require(final: Path, part: str, stage: str) -> Path:
    """final/part, or an error naming the stage that makes it and the command to run."""
    folder = final / part
    if not (folder / "config.json").exists():
        maker = MADE_BY.get(part, part)
        raise FileNotFoundError(
            f"stage {stage} needs {part}/ from an earlier stage, and {final} has none: run "
            f"`python -m minisvd train {maker} --out DIR` (and the stages after it), then pass --init DIR"
        )
    return folder


def carry(src_final: Path | None, dst_final: Path, parts: tuple[str, ...]) -> None:
    """Copy the parts this stage did not change from the init's final/ into ours."""
    if src_final is None:
        return
    for part in parts:
        if (src_final / part).is_dir() and not (dst_final / part).exists():
            shutil.copytree(src_final / part, dst_final / part)


def load_vae(final: Path, stage: str):
    """The frozen VideoVAE of an earlier stage (eval, no grad)."""
    from minisvd.models.vae import VideoVAE
    from minisvd.pretrained.load import load_model_folder

    return load_model_folder(require(final, "vae", stage), VideoVAE)


def load_clip(final: Path, stage: str):
    """(CLIPModel, tokenizer) of an earlier stage, frozen."""
    from minisvd.models.clip import load_clip_folder

    model, tokenizer = load_clip_folder(require(final, "clip", stage))
    return model.eval().requires_grad_(False), tokenizer


def load_unet(final: Path, stage: str, **config_overrides):
    """The UNet of an earlier stage, trainable (requires_grad on, train mode)."""
    from minisvd.models.unet import UNet
    from minisvd.pretrained.load import load_model_folder

    unet = load_model_folder(require(final, "unet", stage), UNet, **config_overrides)
    return unet.train().requires_grad_(True)
