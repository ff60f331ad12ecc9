"""CLIP (Radford et al. 2021) as SVD uses it, and the tiny CLIP the course trains itself.

SVD conditions image-to-video on the CLIP image embedding of the first frame (OpenCLIP ViT-H/14, shipped as
transformers' `CLIPVisionModelWithProjection`); its image model, SD 2.1, was conditioned on CLIP text.
The course trains a tiny CLIP of its own on the toy world ("stage 0"): transformers' `CLIPModel` with tiny
configs, trained contrastively, then split into the two towers the stages use:

    CLIPTextModelWithProjection     caption -> text_embeds (B, D): the context of stages I-III
    CLIPVisionModelWithProjection   frame   -> image_embeds (B, D): the context of image-to-video

A departure from SD 2.1, chosen for a CPU: our text stages condition on the *projected* text embedding (one
token in CLIP's joint space), not on the sequence of text hidden states. Image and text embeddings then live
in the same space, so the image-to-video fine-tune starts from a model that already follows that space,
and one-token cross-attention is cheap (`Attention` returns V directly for a single key).

Captions are split into words by a word-level tokenizer (Hugging Face `tokenizers`), saved beside the model
so that `CLIPProcessor.from_pretrained(folder)` (e.g. the curation CLIP scorer) loads the whole thing.
"""

from __future__ import annotations

from pathlib import Path

import torch

SPECIAL = ("<pad>", "<unk>", "<bos>")  # ids 0, 1, 2; <eos> is the LAST id (see build_tokenizer)


def tiny_clip_vision_config(projection_dim: int = 32, image_size: int = 224, patch_size: int = 32):
    """A 2-layer ViT of width 32 (about 40k parameters): the same code paths as ViT-H/14, on a CPU."""
    from transformers import CLIPVisionConfig

    return CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=image_size,
        patch_size=patch_size,
        projection_dim=projection_dim,
    )


def svd_clip_vision_config():
    """The image encoder of SVD / SVD-XT (image_encoder/config.json): OpenCLIP ViT-H/14, 632M parameters."""
    from transformers import CLIPVisionConfig

    return CLIPVisionConfig(
        hidden_size=1280,
        intermediate_size=5120,
        num_hidden_layers=32,
        num_attention_heads=16,
        image_size=224,
        patch_size=14,
        projection_dim=1024,
        hidden_act="gelu",
    )


# ----- the course's own CLIP --------------------------------------------------------------------------------
def build_tokenizer(captions: list[str], max_length: int = 16):
    """A word-level tokenizer over the words of `captions`: "<bos> w1 w2 ... <eos>", unknown words -> <unk>.

    <eos> gets the largest id, so the text tower pools at it whichever rule transformers applies (the
    position of `eos_token_id`, or the legacy argmax over ids)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    words = sorted({w for c in captions for w in c.lower().replace(",", " ").split()} - set(SPECIAL))
    vocab = {t: i for i, t in enumerate([*SPECIAL, *words, "<eos>"])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A <eos>", special_tokens=[("<bos>", vocab["<bos>"]), ("<eos>", vocab["<eos>"])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
        model_max_length=max_length,
    )


def tiny_clip_config(
    tokenizer,
    projection_dim: int = 32,
    width: int = 64,
    layers: int = 2,
    image_size: int = 224,
    patch_size: int = 28,
):
    """`CLIPConfig` of the course's tiny CLIP: a ViT over 8 x 8 patches, a text transformer over the tokenizer's
    words, both `layers` deep and `width` wide, projected to `projection_dim` (= the UNet's cross_attention_dim).

    The ViT takes 224 x 224 inputs like SVD's ViT-H/14, because SVD's preprocessing (ours and diffusers') always
    resizes the conditioning frame to 224: our 32 px frames are upsampled, and 28 px patches keep it cheap."""
    from transformers import CLIPConfig

    tower = dict(
        hidden_size=width, intermediate_size=2 * width, num_hidden_layers=layers, num_attention_heads=4
    )
    return CLIPConfig(
        text_config=dict(
            **tower,
            vocab_size=len(tokenizer),
            max_position_embeddings=tokenizer.model_max_length,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        ),
        vision_config=dict(**tower, image_size=image_size, patch_size=patch_size),
        projection_dim=projection_dim,
    )


def clip_image_processor_config(image_size: int) -> dict:
    """`CLIPImageProcessor` settings for frames of `image_size` (resize + centre crop to it, CLIP mean/std)."""
    from minisvd.conditioning.clip_image import CLIP_MEAN, CLIP_STD

    return {
        "crop_size": {"height": image_size, "width": image_size},
        "do_center_crop": True,
        "do_convert_rgb": True,
        "do_normalize": True,
        "do_rescale": True,
        "do_resize": True,
        "image_mean": list(CLIP_MEAN),
        "image_processor_type": "CLIPImageProcessor",
        "image_std": list(CLIP_STD),
        "resample": 3,
        "rescale_factor": 1 / 255,
        "size": {"shortest_edge": image_size},
    }


def save_clip_folder(model, tokenizer, folder: str | Path) -> Path:
    """Write `CLIPModel` + tokenizer + image processor: `CLIPModel.from_pretrained(folder)` and
    `CLIPProcessor.from_pretrained(folder)` load it (and so does the curation CLIP scorer)."""
    from transformers import CLIPImageProcessor

    folder = Path(folder)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    CLIPImageProcessor(**clip_image_processor_config(model.config.vision_config.image_size)).save_pretrained(
        folder
    )
    return folder


def load_clip_folder(folder: str | Path):
    """(CLIPModel, tokenizer) from a folder written by `save_clip_folder` (or any local CLIP folder)."""
    from transformers import AutoTokenizer, CLIPModel

    folder = Path(folder)
    if not (folder / "config.json").exists():
        raise FileNotFoundError(
            f"no CLIP model in {folder}: train one with `python -m minisvd train clip --out DIR`, "
            "then pass DIR/final/clip"
        )
    model = CLIPModel.from_pretrained(folder, local_files_only=True)
    return model, AutoTokenizer.from_pretrained(folder, local_files_only=True)


def split_towers(model):
    """`CLIPModel` -> (CLIPVisionModelWithProjection, CLIPTextModelWithProjection) holding the same weights:
    the state-dict names of each tower are the CLIPModel's own (vision_model.*, visual_projection.*, ...)."""
    from transformers import CLIPTextModelWithProjection, CLIPVisionModelWithProjection

    cfg = model.config
    vision = CLIPVisionModelWithProjection(
        cfg.vision_config.__class__(**{**cfg.vision_config.to_dict(), "projection_dim": cfg.projection_dim})
    )
    text = CLIPTextModelWithProjection(
        cfg.text_config.__class__(**{**cfg.text_config.to_dict(), "projection_dim": cfg.projection_dim})
    )
    sd = model.state_dict()
    for tower in (vision, text):
        tower.load_state_dict({k: sd[k] for k in tower.state_dict()}, strict=True)
    return vision.eval(), text.eval()


@torch.no_grad()
def encode_text(text_model, tokenizer, captions: list[str], device=None) -> torch.Tensor:
    """Captions -> projected CLIP text embeddings as one context token each, (B, 1, D)."""
    p = next(text_model.parameters())
    enc = tokenizer(list(captions), padding="max_length", truncation=True, return_tensors="pt")
    out = text_model(input_ids=enc.input_ids.to(p.device), attention_mask=enc.attention_mask.to(p.device))
    return out.text_embeds[:, None].to(device or p.device)  # (B, 1, D)
