"""Everything of SVD that has weights, read bottom-up (Blattmann et al. 2023, Sec. 3 and App. D).

    embeddings.py     sinusoidal embeddings of c_noise, the micro-conditioning ids and the frame index, + MLPs
    resnet.py         ResBlock, its temporal twin (3x1x1 convs), AlphaBlender, Down/Upsample
    attention.py      Attention, spatial and temporal transformer blocks, SpatioTemporalTransformer
    unet_config.py    UNetConfig: sizes, presets tiny/small/svd/svd_xt, diffusers config round trip
    unet.py           the spatio-temporal UNet F_theta (dropout and gradient checkpointing for training)
    distributions.py  the VAE posterior q(z|x) = N(mean, var)
    vae.py            VAEConfig and VideoVAE: image encoder, decoder with temporal layers
    inflate.py        image -> video surgery: which keys are temporal, zero-init, copying image weights
    clip.py           CLIP towers (transformers): tiny configs for tests, notebooks and training

State-dict names equal diffusers' `UNetSpatioTemporalConditionModel` / `AutoencoderKLTemporalDecoder`.
"""

from minisvd.models.unet import UNet, UNetConfig  # noqa: F401
from minisvd.models.vae import VAEConfig, VideoVAE  # noqa: F401
