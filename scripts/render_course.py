"""Run every notebook of the course by hand-mode (not fast) and write HTML with its outputs to docs/course/.

    python scripts/render_course.py                       # every notebook, MINISVD_FAST=0 (tens of minutes)
    python scripts/render_course.py 01 09                 # only the notebooks whose names start so
    python scripts/render_course.py --fast                # fast mode (a check that rendering works)

So a student can read the results before running anything: docs/course/index.html links each notebook with
its measured run time. The notebooks in git stay without outputs (tests/test_layout.py checks); docs/course/
is not committed (.gitignore): it holds inline videos and figures, several MB. Each notebook runs in its own
kernel with the notebook's folder as working directory, like `pytest --nbmake`; a notebook that fails is rendered up
to the failing cell, reported, and the script exits 1 after the others.
"""

from __future__ import annotations

import argparse
import html
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def render(notebook: Path, out_dir: Path, timeout: int) -> tuple[float, str | None]:
    """Execute `notebook` in a fresh kernel and write OUT/<name>.html; (seconds, error or None)."""
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError
    from nbconvert import HTMLExporter

    nb = nbformat.read(notebook, as_version=4)
    where = {"metadata": {"path": str(notebook.parent)}}  # the notebook's folder, as under pytest --nbmake
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3", resources=where)
    t0, error = time.time(), None
    try:
        client.execute()
    except CellExecutionError as e:
        error = str(e).strip().splitlines()[-1][:300]
    except Exception as e:  # noqa: BLE001 - a dead kernel (out of memory?), a timeout: report, go on
        error = f"{type(e).__name__}: {e}"[:300]
    seconds = time.time() - t0
    body, _ = HTMLExporter().from_notebook_node(nb)
    (out_dir / f"{notebook.stem}.html").write_text(body)
    return seconds, error


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("only", nargs="*", help="render only notebooks whose names start with these (e.g. 01 09)")
    p.add_argument("--fast", action="store_true", help="MINISVD_FAST=1, as under pytest")
    p.add_argument("--out", default=str(ROOT / "docs" / "course"))
    p.add_argument("--timeout", type=int, default=3600, help="seconds a cell may run")
    args = p.parse_args(argv)

    os.environ["MINISVD_FAST"] = "1" if args.fast else "0"  # the kernels inherit it
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    notebooks = [n for n in sorted((ROOT / "notebooks").glob("*.ipynb"))
                 if not args.only or any(n.name.startswith(o) for o in args.only)]  # fmt: skip
    rows, failed = [], 0
    for nb in notebooks:
        print(f"{nb.name} ...", end=" ", flush=True)
        seconds, error = render(nb, out_dir, args.timeout)
        failed += error is not None
        print(f"{seconds:.0f} s" + (f"  FAILED: {error}" if error else ""), flush=True)
        rows.append((nb.stem, seconds, error))
    mode = "fast mode (MINISVD_FAST=1)" if args.fast else "by hand (MINISVD_FAST=0)"
    runs = out_dir / "runs.json"  # earlier renders into the same folder stay listed
    known = {r[0]: r for r in (json.loads(runs.read_text()) if runs.exists() else [])}
    known.update({r[0]: list(r) for r in rows})
    rows = sorted(known.values())
    runs.write_text(json.dumps(rows, indent=1) + "\n")
    items = "\n".join(
        f'<li><a href="{html.escape(stem)}.html">{html.escape(stem)}</a>: {s:.0f} s'
        + (f" <b>failed</b>: {html.escape(e)}" if e else "")
        + "</li>"
        for stem, s, e in rows
    )
    (out_dir / "index.html").write_text(
        f"<html><body><h1>minisvd course, rendered</h1><p>Executed {mode} on "
        f"{time.strftime('%Y-%m-%d')}.</p><ul>\n{items}\n</ul></body></html>\n"
    )
    size = sum(f.stat().st_size for f in out_dir.glob("*.html")) / 2**20
    print(f"wrote {out_dir}/index.html ({len(rows)} notebooks listed), {size:.1f} MB of HTML in all")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
