"""The training engine: one loop for the toy denoiser, the tiny VAE and CLIP, and the UNet stages I (image),
II (video), III (high resolution) and image-to-video, with EMA, checkpoints, exact resume and DDP.

    config.py        TrainConfig: every knob of the loop, presets tiny/small, json round trip
    stage.py         the contract a stage implements (build_model, dataset, loss, ...) and the registry
    engine.py        train(stage, config, out_dir): the loop, read top to bottom
    data.py          the seeded data order (epoch permutations), micro-batches, moving batches to the device
    ema.py           EMA of the weights with EDM's half-life and ramp-up
    checkpoint.py    OUT/last/: safetensors + state.json, written atomically, read back exactly
    metrics.py       OUT/metrics.jsonl (loss, lr, grad norm, speed, loss per sigma bin) and OUT/loss.png
    distributed.py   DistributedDataParallel under torchrun
    stages/          the stages; `toy` is the smallest complete one

From Python:  minisvd.train.train("toy", TrainConfig.tiny(steps=200), "runs/toy")
From a shell: python -m minisvd train toy --out runs/toy --steps 200       (docs/training.md)
Weight files of pretrained models live in `minisvd.pretrained`, training checkpoints here.
"""

from minisvd.train import stages  # noqa: F401  (importing it registers the stages)
from minisvd.train.config import PRESETS, TrainConfig, preset_config  # noqa: F401
from minisvd.train.ema import EMA, ema_beta  # noqa: F401
from minisvd.train.engine import NonFiniteLoss, TrainError, train  # noqa: F401
from minisvd.train.stage import STAGES, Stage, get_stage, load_init, register_stage  # noqa: F401
