"""Key tables from the original Stability single-file checkpoints (sgm layout) to minisvd/diffusers names."""

from minisvd.convert.unet import convert_unet_state_dict, unet_key_table  # noqa: F401
from minisvd.convert.vae import convert_vae_state_dict  # noqa: F401
