"""Sampling pipelines: image-to-video (SVD) today; text-to-video, interpolation and multi-view later.

defaults.py         SVD's sampling defaults (steps, fps, motion bucket, cond_aug, guidance, decode chunk)
image_to_video.py   `ImageToVideo`, `load_pipeline`, `tiny_random_pipeline`
text_to_video.py    `TextToVideo`, `load_text_to_video`: the samplers of the text stages I-III
"""

from minisvd.pipelines.defaults import SAMPLING, SamplingDefaults  # noqa: F401
from minisvd.pipelines.image_to_video import ImageToVideo, load_pipeline, tiny_random_pipeline  # noqa: F401
from minisvd.pipelines.text_to_video import TextToVideo, load_text_to_video  # noqa: F401
