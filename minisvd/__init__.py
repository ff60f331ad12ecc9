"""minisvd: Stable Video Diffusion (Blattmann et al., 2023, arXiv 2311.15127), rebuilt to be read."""

from minisvd import edm  # noqa: F401
from minisvd.device import pick_device  # noqa: F401
from minisvd.pipeline import ImageToVideo  # noqa: F401
from minisvd.pretrained import load_pipeline  # noqa: F401
from minisvd.unet import UNet, UNetConfig  # noqa: F401
from minisvd.vae import VAEConfig, VideoVAE  # noqa: F401

__version__ = "0.1.0"
