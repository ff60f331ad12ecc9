"""Pretrained weights in and out: nothing is downloaded, nothing is unpickled.

weights.py         safe weight files (safetensors, or torch.load(weights_only=True)) and checked loading
                   that names missing, unexpected and mis-shaped keys
load.py            find SVD (folder, HF cache, original single file) and build its models
save.py            write the diffusers layout
original_unet.py   key table: original Stability checkpoint (sgm) -> our/diffusers UNet names
original_vae.py    key table: original checkpoint -> our/diffusers VAE names (incl. time_mix_conv, the
                   conditioner's VAE copy)
original_clip.py   key table: the original's open_clip ViT-H/14 conditioner -> transformers' CLIP vision model
"""

from minisvd.pretrained.load import find_in_hf_cache, find_svd_weights, load_components, load_model_folder  # noqa: F401
from minisvd.pretrained.original_clip import convert_clip_state_dict, load_original_clip  # noqa: F401
from minisvd.pretrained.original_unet import convert_unet_state_dict, unet_key_table  # noqa: F401
from minisvd.pretrained.original_vae import convert_vae_key, convert_vae_state_dict  # noqa: F401
from minisvd.pretrained.save import save_diffusers_folder, save_model_folder  # noqa: F401
from minisvd.pretrained.weights import load_file, load_state_dict_checked  # noqa: F401
