"""`python -m minisvd COMMAND`: the command line. One module per command, each with `register(subparsers)`.

    env.py        check dependencies, print the device
    demo.py       the README's main job: a tiny SVD trained end to end, animated samples
    generate.py   image-to-video with SVD weights
    curate.py     the data-curation pipeline over a folder of videos
    train.py      train a stage (toy, ...) with the engine of minisvd.train

Commands are imported explicitly: a command that fails to import fails loudly, it is never dropped.
Each module imports its heavy dependencies inside its command function, so `--help` stays fast.
"""

from __future__ import annotations

import argparse

from minisvd.cli import curate, demo, env, generate, train

COMMANDS = (env, demo, train, generate, curate)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m minisvd",
        description="minisvd: Stable Video Diffusion, readable. Commands:",
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    for command in COMMANDS:
        command.register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    return int(args.func(args) or 0)
