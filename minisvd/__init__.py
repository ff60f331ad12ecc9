"""minisvd: Stable Video Diffusion (Blattmann et al., 2023, arXiv 2311.15127), rebuilt to be read.

edm.py          the math of the paper: noise schedule, preconditioning, loss, guidance, samplers
models/         everything with weights: UNet, VAE, their blocks, inflation, CLIP configs
conditioning/   every input the UNet is conditioned on (CLIP token, frame latent, micro-conditioning)
pipelines/      sampling: image-to-video
pretrained/     real weights in and out (diffusers layout, original key tables, safe files)
curation/       the data-curation pipeline (Sec. 3.1)
data/, train/   training data and the training engine
cli/            `python -m minisvd ...`
"""

from minisvd import edm  # noqa: F401
from minisvd.device import pick_device  # noqa: F401
from minisvd.models.unet import UNet, UNetConfig  # noqa: F401
from minisvd.models.vae import VAEConfig, VideoVAE  # noqa: F401
from minisvd.pipelines.image_to_video import ImageToVideo, load_pipeline  # noqa: F401

__version__ = "0.1.0"
