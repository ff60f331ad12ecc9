"""`python -m minisvd curate FOLDER --out DIR`: run the SVD data-curation pipeline and print the funnel."""

from __future__ import annotations

import argparse
import sys


def register(sub) -> None:
    p = sub.add_parser(
        "curate",
        help="cut, score, caption and filter a folder of videos (SVD Sec. 3.1); resumable",
        description="Cut detection cascade, optical-flow motion, text area, stand-in or CLIP scores and "
        "captions for every video in FOLDER; tables in OUT (clips.csv, videos.csv); prints the funnel.",
        epilog="exit status: 0 every video curated; 2 a setting that cannot work (nothing run); "
        "3 some videos failed (counted in the last line; the others' clips are kept).",
    )
    p.add_argument("folder", help="folder with video files")
    p.add_argument("--out", required=True, help="output folder (clips/, clips.csv, videos.csv)")
    p.add_argument("--workers", type=int, default=2, help="processes (default 2)")
    p.add_argument(
        "--clip-dir", default=None, help="local CLIP model folder (transformers); else an offline stand-in"
    )
    p.add_argument(
        "--aesthetic-weights", default=None, help="LAION aesthetic MLP weights (.pth) for --clip-dir"
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from minisvd.curation.curate import CurateConfig, curate_folder
    from minisvd.curation.filtering import apply_filters, format_funnel, score_choice

    cfg = CurateConfig(workers=args.workers, clip_dir=args.clip_dir, aesthetic_weights=args.aesthetic_weights)
    try:
        rep = curate_folder(args.folder, args.out, cfg)
    except ValueError as e:  # a setting that cannot work (e.g. --clip-dir): one line, nothing written
        print(f"error: {e}", file=sys.stderr)
        return 2
    errors = [v for v in rep.videos if v.get("status") == "error"]
    print(
        f"{len(rep.videos)} videos, {len(rep.clips)} clips, computed this run: {dict(rep.computed) or 'nothing'}"
    )
    for v in errors:
        print(f"  skipped {v['video']}: {v['reason']}")
    _, filters = score_choice(cfg.clip_dir)
    _, funnel = apply_filters(rep.clips, filters)
    print(format_funnel(funnel))
    if errors:
        print(
            f"{len(errors)} of {len(rep.videos)} videos failed (skipped above); the others' clips are kept. "
            "Fix or remove those files and run again.",
            file=sys.stderr,
        )
        return 3
    return 0
