"""Load real SVD weights into minisvd, and write them back in the diffusers layout.

Three sources, one function (`load_pipeline`):

  - a folder in the Hugging Face / diffusers layout (`model_index.json`, `unet/`, `vae/`, `image_encoder/`,
    `feature_extractor/`, `scheduler/`), e.g. a download of stabilityai/stable-video-diffusion-img2vid-xt;
    `variant="fp16"` reads the `*.fp16.safetensors` files;
  - a repo id ("stabilityai/stable-video-diffusion-img2vid-xt") already in the local Hugging Face cache;
    nothing is ever downloaded here, the error says how to download;
  - an original single-file checkpoint (`svd.safetensors`, `svd_xt.safetensors`): UNet, VAE and the open_clip
    image conditioner converted with the key tables of `minisvd.pretrained` (original_unet, original_vae,
    original_clip), so the file alone is enough; `image_encoder=` (a transformers CLIP folder) overrides its
    conditioner.

Every weight file goes through `minisvd.pretrained.weights`: safetensors, or `torch.load(weights_only=True)`, and a
key/shape check that names missing, unexpected and mis-shaped keys before anything is copied.

GroupNorm eps: by default the UNet follows the original SVD code (eps 1e-5 everywhere). diffusers, as shipped,
uses 1e-6 in 72 ResBlock norms (about 4e-5 difference on the UNet output); `match_diffusers=True` reproduces it.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from pathlib import Path

import torch
from safetensors import SafetensorError

from minisvd.models.unet import UNet, UNetConfig
from minisvd.models.vae import VAEConfig, VideoVAE
from minisvd.pretrained.weights import build_checked, load_file

KNOWN_REPOS = {
    "svd": "stabilityai/stable-video-diffusion-img2vid",  # 14 frames
    "svd_xt": "stabilityai/stable-video-diffusion-img2vid-xt",  # 25 frames
}
PRESET_FRAMES = {"svd": 14, "svd_xt": 25}  # the only difference between the two: same shapes, other weights

DOWNLOAD_HELP = (
    "minisvd never downloads weights at run time. Get them once (about 10 GB in fp16; accept the licence on the\n"
    "model page first, then `huggingface-cli login`):\n"
    "    huggingface-cli download {repo} --include '*.json' '*.fp16.safetensors' --local-dir svd-weights\n"
    "then pass --weights svd-weights --variant fp16 (Python: load_pipeline('svd-weights', variant='fp16')), or\n"
    "set MINISVD_SVD_WEIGHTS=svd-weights and leave the path out.\n"
    "Without --local-dir the files land in the Hugging Face cache, where the repo id alone finds them."
)


# ----- finding the weights -------------------------------------------------------------------------------
def find_in_hf_cache(repo_id: str) -> Path | None:
    """The newest snapshot folder of `repo_id` in the local Hugging Face cache ($HF_HUB_CACHE), or None. Offline."""
    from huggingface_hub import snapshot_download

    cache_dir = os.environ.get("HF_HUB_CACHE")  # read now, not at import, so a changed env var is seen
    try:
        return Path(snapshot_download(repo_id, cache_dir=cache_dir, local_files_only=True))
    except Exception:  # noqa: BLE001 - any failure means "not in the cache"
        return None


def find_svd_weights() -> Path | None:
    """Real SVD weights on this machine: $MINISVD_SVD_WEIGHTS, else either SVD repo in the HF cache, else None."""
    env = os.environ.get("MINISVD_SVD_WEIGHTS")
    if env and Path(env).expanduser().exists():
        return Path(env).expanduser()
    for repo in KNOWN_REPOS.values():
        found = find_in_hf_cache(repo)
        if found is not None and (found / "model_index.json").exists():
            return found
    return None


def _hf_cache() -> str:
    return os.environ.get("HF_HUB_CACHE", "~/.cache/huggingface/hub")


def locate_weights(path: str | os.PathLike | None = None) -> Path:
    """What `load_components` reads: `path` if it exists (a file or folder), else the snapshot of the repo id
    `path` in the local Hugging Face cache; with no path, $MINISVD_SVD_WEIGHTS, else either SVD repo in the
    cache (`find_svd_weights`). A FileNotFoundError that says how to get the weights otherwise."""
    if path is None:
        env = os.environ.get("MINISVD_SVD_WEIGHTS")
        if env and not Path(env).expanduser().exists():
            raise FileNotFoundError(
                f"MINISVD_SVD_WEIGHTS={env} does not exist: point it at the weights, or unset it and pass their path"
            )
        found = find_svd_weights()
        if found is None:
            raise FileNotFoundError(
                "no weights given, MINISVD_SVD_WEIGHTS is not set, and neither SVD repo is in the local Hugging "
                f"Face cache ({_hf_cache()}).\n" + DOWNLOAD_HELP.format(repo=KNOWN_REPOS["svd_xt"])
            )
        return found
    p = Path(path).expanduser()
    if p.exists():
        return p
    if re.fullmatch(r"[\w.-]+/[\w.-]+", str(path)):
        found = find_in_hf_cache(str(path))
        if found is None:
            raise FileNotFoundError(
                f"{path} is neither a file, a folder, nor in the local Hugging Face cache ({_hf_cache()}).\n"
                + DOWNLOAD_HELP.format(repo=path)
            )
        return found
    raise FileNotFoundError(f"weights not found: {path}\n" + DOWNLOAD_HELP.format(repo=KNOWN_REPOS["svd_xt"]))


DTYPES = {
    "fp32": torch.float32,
    "float32": torch.float32,
    "float": torch.float32,
    "fp16": torch.float16,
    "float16": torch.float16,
    "half": torch.float16,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
}


def resolve_dtype(dtype: torch.dtype | str | None) -> torch.dtype | None:
    """None, a floating torch.dtype, or one of the names in DTYPES ("fp16", "half", "torch.bfloat16", ...)."""
    if dtype is None or (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        return dtype
    if isinstance(dtype, str) and dtype.lower().removeprefix("torch.") in DTYPES:
        return DTYPES[dtype.lower().removeprefix("torch.")]
    raise ValueError(f"unknown dtype {dtype!r}: use a floating torch.dtype or one of {', '.join(DTYPES)}")


def _read_json(path: Path) -> dict:
    """A JSON config file; a broken one (a cut download, an edit gone wrong) is a ValueError that names it."""
    try:
        return json.loads(Path(path).read_text())
    except ValueError as e:  # json.JSONDecodeError, UnicodeDecodeError
        raise ValueError(f"{path} is not valid JSON ({e}): repair it or download it again") from None


def _weights_file(folder: Path, stem: str, variant: str | None) -> Path:
    """`stem[.variant].safetensors` in folder, else the `.bin` of the same name; a clear error otherwise."""
    suffix = f".{variant}" if variant else ""
    for ext in (".safetensors", ".bin"):
        p = folder / f"{stem}{suffix}{ext}"
        if p.exists():
            return p
    present = sorted(p.name for p in folder.glob("*")) if folder.exists() else []
    hint = " (try variant='fp16')" if not variant and any(".fp16." in n for n in present) else ""
    raise FileNotFoundError(f"no {stem}{suffix}.safetensors (or .bin) in {folder}{hint}; found: {present}")


def _check_preset(preset: str | None, num_frames: int, where: str) -> None:
    """SVD and SVD-XT have identical shapes: only the frame count (from a config or a file name) tells them apart."""
    if preset is None:
        return
    if preset not in PRESET_FRAMES:
        raise ValueError(
            f"unknown preset {preset!r}; choose one of {sorted(PRESET_FRAMES)} (or pass unet_config=)"
        )
    if PRESET_FRAMES[preset] != num_frames:
        other = [k for k, v in PRESET_FRAMES.items() if v == num_frames]
        holds = other[0] if other else f"a {num_frames}-frame model"
        fix = f"; use preset={other[0]!r}" if other else ""
        raise ValueError(
            f"{where} holds weights for {holds} (num_frames={num_frames}) but preset={preset!r} "
            f"expects num_frames={PRESET_FRAMES[preset]}{fix}"
        )


def _load_clip(folder: Path, variant: str | None, dtype: torch.dtype | None):
    from transformers import CLIPVisionModelWithProjection

    if not (folder / "config.json").exists():
        raise FileNotFoundError(
            f"no CLIP image encoder in {folder} (expected config.json and model weights of a "
            "transformers CLIPVisionModelWithProjection, e.g. the image_encoder/ folder of "
            f"{KNOWN_REPOS['svd_xt']})"
        )
    from transformers.utils import logging as hf_logging

    kw = {"variant": variant} if variant and any(folder.glob(f"*.{variant}.*")) else {}
    bar = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # no "Loading weights" bar for one small file, as for the UNet and VAE
    try:
        enc = CLIPVisionModelWithProjection.from_pretrained(folder, local_files_only=True, **kw)
    except SafetensorError as e:  # a cut download: transformers names no file
        files = ", ".join(str(f) for f in sorted(folder.glob("*.safetensors")))
        raise ValueError(f"{files} is truncated or corrupt ({e}): download it again") from None
    finally:
        if bar:
            hf_logging.enable_progress_bar()
    return enc.to(dtype=dtype or torch.float32).eval().requires_grad_(False)


def load_model_folder(folder: str | Path, model_cls, variant: str | None = None, **config_overrides):
    """A diffusers model folder (config.json + weights) -> minisvd `UNet` or `VideoVAE` (float32, eval,
    frozen), every key and shape checked; `save_model_folder` writes it."""
    folder = Path(folder)
    what = {"UNet": "UNet", "VideoVAE": "VAE"}[model_cls.__name__]
    if not (folder / "config.json").exists():
        raise FileNotFoundError(f"no {what} in {folder}: config.json is missing")
    config_cls = UNetConfig if model_cls is UNet else VAEConfig
    config = config_cls.from_diffusers(_read_json(folder / "config.json"), **config_overrides)
    weights = _weights_file(folder, "diffusion_pytorch_model", variant)
    return build_checked(model_cls, config, load_file(weights), what, weights)


# ----- the three sources -----------------------------------------------------------------------------------
def load_diffusers_folder(folder: Path, variant=None, dtype=None, match_diffusers=False, preset=None) -> dict:
    """A folder in the diffusers layout -> the pipeline's components (float32 unless `dtype`)."""
    folder = Path(folder)
    for sub in ("unet", "vae", "image_encoder"):
        if not (folder / sub).is_dir():
            raise FileNotFoundError(f"{folder} is not a diffusers SVD folder: {sub}/ is missing")
    ucfg = _read_json(folder / "unet" / "config.json")
    _check_preset(preset, ucfg.get("num_frames", UNetConfig().num_frames), folder)
    unet = load_model_folder(folder / "unet", UNet, variant, diffusers_resnet_eps=match_diffusers)
    vae = load_model_folder(folder / "vae", VideoVAE, variant)
    image_encoder = _load_clip(folder / "image_encoder", variant, dtype)
    fe = folder / "feature_extractor" / "preprocessor_config.json"
    sc = folder / "scheduler" / "scheduler_config.json"
    return _components(
        unet,
        vae,
        image_encoder,
        dtype,
        feature_config=_read_json(fe) if fe.exists() else None,
        scheduler_config=_read_json(sc) if sc.exists() else None,
    )


def load_single_file(
    path: Path,
    image_encoder: str | Path | None,
    preset: str | None = None,
    unet_config: UNetConfig | None = None,
    vae_config: VAEConfig | None = None,
    variant=None,
    dtype=None,
    match_diffusers=False,
) -> dict:
    """An original checkpoint (svd.safetensors / svd_xt.safetensors) -> the components. Its open_clip image
    conditioner becomes the CLIP image encoder unless `image_encoder` (a transformers CLIP folder) is given."""
    from minisvd.pretrained.original_clip import VISUAL, load_original_clip
    from minisvd.pretrained.original_unet import convert_unet_state_dict
    from minisvd.pretrained.original_vae import convert_vae_state_dict, svd_vae_parts

    path = Path(path)
    named = "svd_xt" if "xt" in path.stem.lower() else ("svd" if "svd" in path.stem.lower() else None)
    if unet_config is None:
        preset = preset or named
        if preset is None:
            raise ValueError(
                f"cannot tell the size of {path.name}: pass preset='svd' or 'svd_xt', or unet_config="
            )
        if named is not None:
            _check_preset(preset, PRESET_FRAMES[named], path.name)
        unet_config = getattr(UNetConfig, preset)()
    unet_config = unet_config.replace(diffusers_resnet_eps=match_diffusers)
    sd = load_file(path)
    unet_sd = {k: v for k, v in sd.items() if k.startswith("model.diffusion_model.")}
    vae_sd = {k: v for k, v in sd.items() if k.startswith("first_stage_model.")}
    if not unet_sd or not vae_sd:
        raise ValueError(
            f"{path} has no model.diffusion_model.* or first_stage_model.* keys: not an original SVD file"
        )
    try:
        unet_conv = convert_unet_state_dict(unet_sd, unet_config)
    except (KeyError, ValueError) as e:
        raise ValueError(
            f"the UNet in {path.name} does not fit the {preset or 'given'} size preset: {e}"
        ) from None
    unet = build_checked(UNet, unet_config, unet_conv, "UNet", path.name)
    vae_parts, encoder_gap = svd_vae_parts(sd)
    if encoder_gap:  # None: no conditioner copy; 0.0: the two copies are equal, as in Stability's releases
        warnings.warn(
            f"{path.name}: the conditioner's VAE encoder differs from first_stage_model.encoder (max abs "
            f"{encoder_gap:.3g}); minisvd uses the conditioner's, which encodes the conditioning frame in the "
            "reference code",
            stacklevel=2,
        )
    vae_sd = convert_vae_state_dict(vae_parts, prefix="")
    vae = build_checked(VideoVAE, vae_config or VAEConfig.svd(), vae_sd, "VAE", path.name)
    if image_encoder is not None:
        clip = _load_clip(Path(image_encoder), variant, dtype)
    elif any(k.startswith(VISUAL) for k in sd):
        clip = load_original_clip(sd, source=path.name)
    else:
        raise ValueError(
            f"{path.name} has no image conditioner ({VISUAL}*): pass image_encoder=<folder of a "
            f"transformers CLIPVisionModelWithProjection>, e.g. the image_encoder/ folder of {KNOWN_REPOS['svd_xt']}"
        )
    return _components(unet, vae, clip, dtype)


def load_components(
    path: str | os.PathLike | None = None,  # None: $MINISVD_SVD_WEIGHTS, else SVD in the HF cache
    dtype: torch.dtype | str | None = None,
    variant: str | None = None,
    image_encoder: str | os.PathLike | None = None,  # a CLIP folder overriding a single file's conditioner
    preset: str | None = None,  # "svd" or "svd_xt": checked against what the weights say
    match_diffusers: bool = False,  # True: diffusers' GroupNorm eps (bit-for-bit parity with diffusers)
    unet_config: UNetConfig | None = None,  # single files of other sizes (e.g. the tiny test fixture)
    vae_config: VAEConfig | None = None,
) -> dict:
    """SVD's models from a diffusers folder, a cached repo id, or an original single file (no path:
    $MINISVD_SVD_WEIGHTS, else SVD in the HF cache; `locate_weights`): a dict with unet, vae, image_encoder,
    feature_config, scheduler_config (`minisvd.ImageToVideo(**components)`). `dtype`: a torch.dtype or a
    name in DTYPES ("fp16", "half", "bf16", ...)."""
    dtype = resolve_dtype(dtype)
    p = locate_weights(path)
    if p.is_file():
        return load_single_file(
            p, image_encoder, preset, unet_config, vae_config, variant, dtype, match_diffusers
        )
    return load_diffusers_folder(p, variant, dtype, match_diffusers, preset)


def _components(unet, vae, image_encoder, dtype, feature_config=None, scheduler_config=None) -> dict:
    if dtype is not None:
        for m in (unet, vae, image_encoder):
            m.to(dtype=dtype)
    return dict(
        unet=unet,
        vae=vae,
        image_encoder=image_encoder,
        feature_config=feature_config,
        scheduler_config=scheduler_config,
    )
