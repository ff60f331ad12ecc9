"""The training stages; importing this package registers each in `minisvd.train.STAGES`.

    toy.py        EDM denoising of synthetic moving squares with a tiny UNet: the engine's smallest example
    vae.py        stage 0 "vae": the tiny VideoVAE (image phase, then its temporal decoder), scale measured
    clip.py       stage 0 "clip": the tiny CLIP, contrastive on (frame, caption) pairs of the toy world
    diffusion.py  the shared base of the UNet stages: frozen VAE/CLIP, latents encoded once, EDM loss, samples
    image.py      stage I "image": text-to-image pretraining of the spatial UNet
    video.py      stage II "video" (the inflated image model on clips) and stage III "hires" (64 px)
    i2v.py        "i2v": image-to-video, the SVD model, exported in the diffusers layout
    finetune.py   "finetune": a pretrained SVD (real or any diffusers-layout one) fine-tuned on your clips;
                  finetune_data.py cuts a curate folder or any folder of videos into training windows

Each stage subclasses `minisvd.train.Stage` (stage.py documents the contract) and is registered with
`@register_stage`. Add a stage by writing its module here and importing it below.
"""

from minisvd.train.stages import clip, finetune, i2v, image, toy, vae, video  # noqa: F401
