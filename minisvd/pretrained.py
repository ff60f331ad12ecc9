"""Load real SVD weights into minisvd, and write them back in the diffusers layout.

Three sources, one function (`load_pipeline`):

  - a folder in the Hugging Face / diffusers layout (`model_index.json`, `unet/`, `vae/`, `image_encoder/`,
    `feature_extractor/`, `scheduler/`), e.g. a download of stabilityai/stable-video-diffusion-img2vid-xt;
    `variant="fp16"` reads the `*.fp16.safetensors` files;
  - a repo id ("stabilityai/stable-video-diffusion-img2vid-xt") already in the local Hugging Face cache;
    nothing is ever downloaded here, the error says how to download;
  - an original single-file checkpoint (`svd.safetensors`, `svd_xt.safetensors`): UNet and VAE converted with
    the key tables of `minisvd.convert`; the CLIP image encoder from a folder (`image_encoder=`), because the
    file's conditioner is an open_clip model that we do not convert.

Every weight file goes through `minisvd.checkpoint`: safetensors, or `torch.load(weights_only=True)`, and a
key/shape check that names missing, unexpected and mis-shaped keys before anything is copied.

GroupNorm eps: by default the UNet follows the original SVD code (eps 1e-5 everywhere). diffusers, as shipped,
uses 1e-6 in 72 ResBlock norms (about 4e-5 difference on the UNet output); `match_diffusers=True` reproduces it.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import torch

from minisvd.checkpoint import check_state_dict, format_problems, load_file
from minisvd.pipeline import ImageToVideo
from minisvd.unet import UNet, UNetConfig
from minisvd.vae import VAEConfig, VideoVAE

KNOWN_REPOS = {
    "svd": "stabilityai/stable-video-diffusion-img2vid",  # 14 frames
    "svd_xt": "stabilityai/stable-video-diffusion-img2vid-xt",  # 25 frames
}
PRESET_FRAMES = {"svd": 14, "svd_xt": 25}  # the only difference between the two: same shapes, other weights

DOWNLOAD_HELP = (
    "minisvd never downloads weights at run time. Get them once (about 10 GB in fp16; accept the licence on the\n"
    "model page first, then `huggingface-cli login`):\n"
    "    huggingface-cli download {repo} --include '*.json' '*.fp16.safetensors' --local-dir svd-weights\n"
    "then pass --weights svd-weights (or set MINISVD_SVD_WEIGHTS=svd-weights), and variant='fp16'.\n"
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
    if env and Path(env).exists():
        return Path(env)
    for repo in KNOWN_REPOS.values():
        found = find_in_hf_cache(repo)
        if found is not None and (found / "model_index.json").exists():
            return found
    return None


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


def _build(model_cls, config, state_dict: dict, what: str, source) -> torch.nn.Module:
    """Build `model_cls(config)` without random init (meta device), check the keys, then take the tensors."""
    with torch.device("meta"):
        model = model_cls(config)
    missing, unexpected, misshaped = check_state_dict(model, state_dict)
    if missing or unexpected or misshaped:
        raise ValueError(
            f"the weights in {source} do not fit this {what} (is the size preset right?):\n"
            + format_problems(missing, unexpected, misshaped)
        )
    model.load_state_dict(
        {k: v.float() if v.is_floating_point() else v for k, v in state_dict.items()},
        strict=True,
        assign=True,
    )
    leftover = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if leftover:  # a buffer built in __init__ and not saved: build it for real instead
        model = model_cls(config)
        model.load_state_dict(state_dict, strict=True)
    return model.eval().requires_grad_(False)


def _load_clip(folder: Path, variant: str | None, dtype: torch.dtype | None):
    from transformers import CLIPVisionModelWithProjection

    if not (folder / "config.json").exists():
        raise FileNotFoundError(
            f"no CLIP image encoder in {folder} (expected config.json and model weights of a "
            "transformers CLIPVisionModelWithProjection, e.g. the image_encoder/ folder of "
            f"{KNOWN_REPOS['svd_xt']})"
        )
    kw = {"variant": variant} if variant and any(folder.glob(f"*.{variant}.*")) else {}
    enc = CLIPVisionModelWithProjection.from_pretrained(folder, local_files_only=True, **kw)
    return enc.to(dtype=dtype or torch.float32).eval().requires_grad_(False)


# ----- the three sources -----------------------------------------------------------------------------------
def load_diffusers_folder(
    folder: Path, variant=None, dtype=None, match_diffusers=False, preset=None
) -> ImageToVideo:
    """A folder in the diffusers layout -> ImageToVideo (float32 unless `dtype`)."""
    folder = Path(folder)
    for sub in ("unet", "vae", "image_encoder"):
        if not (folder / sub).is_dir():
            raise FileNotFoundError(f"{folder} is not a diffusers SVD folder: {sub}/ is missing")
    ucfg = json.loads((folder / "unet" / "config.json").read_text())
    unet_config = UNetConfig.from_diffusers(ucfg, diffusers_resnet_eps=match_diffusers)
    _check_preset(preset, unet_config.num_frames, folder)
    unet_file = _weights_file(folder / "unet", "diffusion_pytorch_model", variant)
    unet = _build(UNet, unet_config, load_file(unet_file), "UNet", unet_file)
    vcfg = json.loads((folder / "vae" / "config.json").read_text())
    vae_file = _weights_file(folder / "vae", "diffusion_pytorch_model", variant)
    vae = _build(VideoVAE, VAEConfig.from_diffusers(vcfg), load_file(vae_file), "VAE", vae_file)
    image_encoder = _load_clip(folder / "image_encoder", variant, dtype)
    fe = folder / "feature_extractor" / "preprocessor_config.json"
    sc = folder / "scheduler" / "scheduler_config.json"
    pipe = ImageToVideo(
        unet,
        vae,
        image_encoder,
        feature_config=json.loads(fe.read_text()) if fe.exists() else None,
        scheduler_config=json.loads(sc.read_text()) if sc.exists() else None,
    )
    return pipe.to(dtype=dtype) if dtype else pipe


def load_single_file(
    path: Path,
    image_encoder: str | Path | None,
    preset: str | None = None,
    unet_config: UNetConfig | None = None,
    vae_config: VAEConfig | None = None,
    variant=None,
    dtype=None,
    match_diffusers=False,
) -> ImageToVideo:
    """An original checkpoint (svd.safetensors / svd_xt.safetensors) + a CLIP folder -> ImageToVideo."""
    from minisvd.convert import convert_unet_state_dict, convert_vae_state_dict

    path = Path(path)
    if image_encoder is None:
        raise ValueError(
            f"{path.name} is an original single-file checkpoint: its CLIP conditioner is an open_clip "
            "model minisvd does not convert. Pass image_encoder=<folder of a transformers "
            f"CLIPVisionModelWithProjection>, e.g. the image_encoder/ folder of {KNOWN_REPOS['svd_xt']}"
        )
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
    unet = _build(UNet, unet_config, unet_conv, "UNet", path.name)
    vae = _build(VideoVAE, vae_config or VAEConfig.svd(), convert_vae_state_dict(vae_sd), "VAE", path.name)
    pipe = ImageToVideo(unet, vae, _load_clip(Path(image_encoder), variant, dtype))
    return pipe.to(dtype=dtype) if dtype else pipe


def load_pipeline(
    path: str | os.PathLike,
    device: str | torch.device | None = None,
    dtype: torch.dtype | str | None = None,
    variant: str | None = None,
    image_encoder: str | os.PathLike | None = None,  # CLIP folder, for single-file checkpoints
    preset: str | None = None,  # "svd" or "svd_xt": checked against what the weights say
    match_diffusers: bool = False,  # True: diffusers' GroupNorm eps (bit-for-bit parity with diffusers)
    unet_config: UNetConfig | None = None,  # single files of other sizes (e.g. the tiny test fixture)
    vae_config: VAEConfig | None = None,
) -> ImageToVideo:
    """Load SVD weights from a diffusers folder, a cached repo id, or an original single file."""
    if isinstance(dtype, str):
        dtype = {
            "fp32": torch.float32,
            "float32": torch.float32,
            "fp16": torch.float16,
            "float16": torch.float16,
            "bf16": torch.bfloat16,
            "bfloat16": torch.bfloat16,
        }[dtype]
    p = Path(path).expanduser()
    if p.is_file():
        pipe = load_single_file(
            p, image_encoder, preset, unet_config, vae_config, variant, dtype, match_diffusers
        )
    elif p.is_dir():
        pipe = load_diffusers_folder(p, variant, dtype, match_diffusers, preset)
    elif re.fullmatch(r"[\w.-]+/[\w.-]+", str(path)):
        found = find_in_hf_cache(str(path))
        if found is None:
            raise FileNotFoundError(
                f"{path} is neither a file, a folder, nor in the local Hugging Face cache "
                f"({os.environ.get('HF_HUB_CACHE', '~/.cache/huggingface/hub')}).\n"
                + DOWNLOAD_HELP.format(repo=path)
            )
        pipe = load_diffusers_folder(found, variant, dtype, match_diffusers, preset)
    else:
        raise FileNotFoundError(
            f"weights not found: {path}\n" + DOWNLOAD_HELP.format(repo=KNOWN_REPOS["svd_xt"])
        )
    if device is not None:
        pipe.to(device)
    return pipe


# ----- export ----------------------------------------------------------------------------------------------
def _diffusers_version() -> str:
    try:
        import diffusers

        return diffusers.__version__
    except ImportError:  # pragma: no cover
        return "0.30.0"


def save_diffusers_folder(pipe: ImageToVideo, folder: str | Path, variant: str | None = None) -> Path:
    """Write `pipe` in the layout `StableVideoDiffusionPipeline.from_pretrained` reads (model_index.json, ...)."""
    from safetensors.torch import save_file

    folder = Path(folder)
    version = _diffusers_version()
    suffix = f".{variant}" if variant else ""

    def write_json(path: Path, d: dict):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(d, indent=2, sort_keys=True) + "\n")

    for name, model, cls in (
        ("unet", pipe.unet, "UNetSpatioTemporalConditionModel"),
        ("vae", pipe.vae, "AutoencoderKLTemporalDecoder"),
    ):
        cfg = {**model.config.extra, **model.config.to_diffusers()}
        write_json(folder / name / "config.json", {"_class_name": cls, "_diffusers_version": version, **cfg})
        sd = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        save_file(
            sd, str(folder / name / f"diffusion_pytorch_model{suffix}.safetensors"), metadata={"format": "pt"}
        )
    pipe.image_encoder.save_pretrained(folder / "image_encoder", **({"variant": variant} if variant else {}))
    write_json(folder / "feature_extractor" / "preprocessor_config.json", pipe.feature_config)
    write_json(
        folder / "scheduler" / "scheduler_config.json",
        {**pipe.scheduler_config, "_class_name": "EulerDiscreteScheduler", "_diffusers_version": version},
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


# ----- tiny random weights for tests, notebooks and benchmarks ---------------------------------------------
def tiny_random_pipeline(seed: int = 0, scale: float = 0.1, num_frames: int = 8) -> ImageToVideo:
    """A CPU-sized SVD with random weights (every parameter, zero-init ones too): UNet `tiny`, VAE `tiny`,
    a 2-layer CLIP ViT at 224 px. Same code paths as the real model; H and W multiples of 8."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    unet = UNet(UNetConfig.tiny(num_frames=num_frames))
    vae = VideoVAE(VAEConfig.tiny())
    clip_config = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=224,
        patch_size=32,
        projection_dim=unet.config.cross_attention_dim,
    )
    clip = CLIPVisionModelWithProjection(clip_config)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for model in (unet, vae, clip):
            for _, p in sorted(model.named_parameters()):
                p.copy_(torch.randn(p.shape, generator=g) * scale)
    return ImageToVideo(unet.eval(), vae.eval(), clip.eval())
