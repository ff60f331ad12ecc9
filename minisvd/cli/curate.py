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
        epilog="Resumable: a rerun redoes only what is missing or broken on disk, and tries failed videos "
        "again (--no-retry-failed: not while their size and mtime are unchanged). "
        "exit status: 0 every video curated; 2 a setting that cannot work (ray not installed, no cluster at "
        "--address), or no FOLDER (nothing run); "
        "3 some videos failed (counted in the last line; the others' clips are kept).",
    )
    p.add_argument("folder", help="folder with video files (sub-folders included)")
    p.add_argument("--out", required=True, help="output folder (clips/, clips.csv, videos.csv)")
    p.add_argument(
        "--workers",
        type=int,
        default=2,
        help="processes (default 2); with --engine ray and no --address, the CPUs of the local Ray started",
    )
    p.add_argument(
        "--engine",
        choices=["local", "ray"],
        default="local",
        help="local: worker processes on this machine (default); ray: one Ray task per video, on a local Ray "
        'or the cluster at --address (needs pip install "minisvd[ray]")',
    )
    p.add_argument(
        "--address",
        default=None,
        help="with --engine ray: the Ray cluster to run on (auto: the one this machine belongs to, started "
        "with `ray start`; ray://HEAD:10001: Ray Client). FOLDER and OUT must then be one shared file "
        "system, at the same path on every node: the tasks read the videos and write the clip files there. "
        "Default: start a local Ray with --workers CPUs",
    )
    p.add_argument(
        "--clip-dir", default=None, help="local CLIP model folder (transformers); else an offline stand-in"
    )
    p.add_argument(
        "--aesthetic-weights", default=None, help="LAION aesthetic MLP weights (.pth) for --clip-dir"
    )
    p.add_argument(
        "--no-retry-failed",
        action="store_true",
        help="skip videos that failed in an earlier run while their size and mtime are unchanged "
        "(default: try them again)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from minisvd.curation.curate import CurateConfig, NoInputFolder, curate_folder
    from minisvd.curation.filtering import apply_filters, format_funnel, score_choice

    cfg = CurateConfig(
        workers=args.workers,
        clip_dir=args.clip_dir,
        aesthetic_weights=args.aesthetic_weights,
        retry_failed=not args.no_retry_failed,
        engine=args.engine,
        ray_address=args.address,
    )
    if args.address and args.engine != "ray":
        print("error: --address is for --engine ray", file=sys.stderr)
        return 2
    try:
        rep = curate_folder(args.folder, args.out, cfg)
    except (ValueError, NoInputFolder) as e:  # a setting that cannot work (--clip-dir, FOLDER): one line
        print(f"error: {e}", file=sys.stderr)
        return 2
    errors = [v for v in rep.videos if v.get("status") == "error"]
    print(
        f"{len(rep.videos)} videos, {len(rep.clips)} clips, computed this run: {dict(rep.computed) or 'nothing'}"
    )
    for v in errors:
        print(f"  skipped {v['video']}: {v['reason']}")
    for v in rep.videos:
        if v.get("status") == "ok" and v.get("warning"):
            print(f"  warning {v['video']}: {v['warning']}")
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
