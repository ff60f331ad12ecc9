"""The training engine (filled by the training issue): one loop for the VAE, CLIP and the UNet stages
I (image), II (video), III (high resolution) and image-to-video, with EMA, checkpoints and exact resume.
Weight files of pretrained models live in `minisvd.pretrained`, training checkpoints here."""
