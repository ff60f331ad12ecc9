"""Every input the SVD UNet is conditioned on, in one place (Blattmann et al. 2023, Sec. 4, App. D).

    clip_image.py   the CLIP branch: clean frame -> antialiased 224x224 -> CLIP -> one image token
    frame.py        the VAE branch: frame in [-1, 1] -> + cond_aug * noise -> latent at the mode
    micro.py        the micro-conditioning ids (fps - 1, motion_bucket_id, cond_aug)
    batch.py        `Conditioning`: all of it batched, its unconditional version (guidance), conditioning
                    dropout (training), and the network that concatenates the frame latent for the UNet

Sampling (`minisvd.pipelines`) and training (`minisvd.train`) build their inputs with these functions.
"""

from minisvd.conditioning.batch import Conditioning, conditioned_network  # noqa: F401
from minisvd.conditioning.clip_image import CLIP_MEAN, CLIP_STD, clip_embed, clip_pixels, encode_image  # noqa: F401
from minisvd.conditioning.frame import encode_latent, image_to_tensor, noise_augment, resize_for_vae  # noqa: F401
from minisvd.conditioning.micro import fps_id, micro_conditioning  # noqa: F401
