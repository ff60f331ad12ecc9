"""CLIP towers (Radford et al. 2021) as SVD uses them: transformers' `CLIPVisionModelWithProjection`
(the image encoder of image-to-video, ViT-H/14 in the real model) and, for the course's text stages,
`CLIPTextModelWithProjection`. Here: the tiny configs our tests, notebooks and training use.
"""

from __future__ import annotations


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
