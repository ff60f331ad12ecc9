"""Data curation as in SVD (Blattmann et al. 2023, Sec. 3.1, App. C, App. E.2.2).

Cut detection (a three-rate cascade), optical-flow motion scores, text-area scores, CLIP-style and
aesthetic scores, three captions per clip, quantile filtering with a Table-1 funnel, and a resumable
pipeline over a folder (`python -m minisvd curate FOLDER --out DIR`).
"""

from minisvd.curation.cuts import CutConfig, Transition, detect_cuts, scenes, snap_to_keyframes  # noqa: F401
from minisvd.curation.evaluate import PRF, match_transitions, spearman  # noqa: F401
from minisvd.curation.video_io import VideoInfo, extract_clip, probe, read_frames, write_video  # noqa: F401
