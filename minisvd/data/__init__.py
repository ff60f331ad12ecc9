"""Training data for a tiny SVD on a laptop CPU (Blattmann et al. 2023, Sec. 3-4).

    photos.py        objects (cat, astronaut, cup, rocket, horse, clock) and backgrounds (grass, gravel, brick
                     wall, moon, colour wheel, table) cut from scikit-image's photographs, cached per size
    world.py         the toy video world: `WorldConfig`, `make_clip(config, index)` -> `Clip` (frames, caption,
                     object, direction, speed, fps, camera, motion), `make_frame` for stage I
    datasets.py      `ToyClips` / `ToyFrames` (on the fly, or cached in one uint8 tensor), `collate`
    motion_bucket.py `motion_bucket_id(score)` 0..255 and `measure_motion(frames, fps)`: the curation's score
    raw.py           `write_raw_set`: web-like MP4s with cuts, dissolves, static scenes, burned-in text, dull
                     scenes and near-duplicates, with a ground-truth manifest, for `python -m minisvd curate`
    curated.py       `CuratedClips(folder)`: the kept clips of any curate output folder as training samples

Every dataset returns the same sample dicts: `frames` (F, 3, H, W) in [-1, 1], `caption`, `fps`, `motion`
(px / frame at this resolution) and `motion_bucket_id`, plus metadata.
"""

from minisvd.data.curated import CuratedClips  # noqa: F401
from minisvd.data.datasets import ToyClips, ToyFrames, collate  # noqa: F401
from minisvd.data.motion_bucket import measure_motion, motion_bucket_id, motion_from_bucket  # noqa: F401
from minisvd.data.raw import DefectRates, label_clips, true_captions, write_raw_set  # noqa: F401
from minisvd.data.world import PRESETS, Clip, Frame, WorldConfig, make_clip, make_frame, world_preset  # noqa: F401
