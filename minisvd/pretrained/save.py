"""Write SVD in the diffusers layout, which `diffusers.StableVideoDiffusionPipeline.from_pretrained` and
`minisvd.load_pipeline` both read: model_index.json, unet/, vae/ (config.json + safetensors),
image_encoder/ (transformers), feature_extractor/, scheduler/."""

from __future__ import annotations

import json
from pathlib import Path

import torch


def _diffusers_version() -> str:
    try:
        import diffusers

        return diffusers.__version__
    except ImportError:  # pragma: no cover
        return "0.30.0"


DIFFUSERS_CLASS = {"UNet": "UNetSpatioTemporalConditionModel", "VideoVAE": "AutoencoderKLTemporalDecoder"}


def write_json(path: Path, d: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(d, indent=2, sort_keys=True) + "\n")


def save_model_folder(folder: str | Path, model: torch.nn.Module, variant: str | None = None) -> Path:
    """One minisvd UNet or VideoVAE as a diffusers model folder: config.json + diffusion_pytorch_model.safetensors
    (`UNetSpatioTemporalConditionModel.from_pretrained(folder)` / `AutoencoderKLTemporalDecoder...` load it)."""
    from safetensors.torch import save_file

    folder = Path(folder)
    cls = DIFFUSERS_CLASS[type(model).__name__]
    cfg = {**model.config.extra, **model.config.to_diffusers()}
    write_json(
        folder / "config.json", {"_class_name": cls, "_diffusers_version": _diffusers_version(), **cfg}
    )
    sd = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    suffix = f".{variant}" if variant else ""
    save_file(sd, str(folder / f"diffusion_pytorch_model{suffix}.safetensors"), metadata={"format": "pt"})
    return folder


def save_diffusers_folder(
    folder: str | Path,
    unet: torch.nn.Module,  # minisvd UNet
    vae: torch.nn.Module,  # minisvd VideoVAE
    image_encoder: torch.nn.Module,  # transformers CLIPVisionModelWithProjection
    feature_config: dict,  # CLIPImageProcessor config
    scheduler_config: dict,  # EulerDiscreteScheduler config
    variant: str | None = None,  # e.g. "fp16": writes *.fp16.safetensors
) -> Path:
    """Write the layout `StableVideoDiffusionPipeline.from_pretrained` reads (model_index.json, unet/, ...)."""
    folder = Path(folder)
    version = _diffusers_version()
    save_model_folder(folder / "unet", unet, variant)
    save_model_folder(folder / "vae", vae, variant)
    image_encoder.save_pretrained(folder / "image_encoder", **({"variant": variant} if variant else {}))
    write_json(folder / "feature_extractor" / "preprocessor_config.json", feature_config)
    write_json(
        folder / "scheduler" / "scheduler_config.json",
        {**scheduler_config, "_class_name": "EulerDiscreteScheduler", "_diffusers_version": version},
    )
    write_json(
        folder / "model_index.json",
        {
            "_class_name": "StableVideoDiffusionPipeline",
            "_diffusers_version": version,
            "feature_extractor": ["transformers", "CLIPImageProcessor"],
            "image_encoder": ["transformers", "CLIPVisionModelWithProjection"],
            "scheduler": ["diffusers", "EulerDiscreteScheduler"],
            "unet": ["diffusers", "UNetSpatioTemporalConditionModel"],
            "vae": ["diffusers", "AutoencoderKLTemporalDecoder"],
        },
    )
    return folder
