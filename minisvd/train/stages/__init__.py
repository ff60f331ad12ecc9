"""The training stages; importing this package registers each in `minisvd.train.STAGES`.

    toy.py    EDM denoising of synthetic moving squares with a tiny UNet: the engine's smallest example

Each stage subclasses `minisvd.train.Stage` (stage.py documents the contract) and is registered with
`@register_stage`. Add a stage by writing its module here and importing it below.
"""

from minisvd.train.stages import toy  # noqa: F401
