"""The package's shape: no import circle, no module too long to read, every CLI command really there."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "minisvd"
MAX_LINES = 450


def module_name(path: Path) -> str:
    parts = path.relative_to(PKG.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PKG.rglob("*.py"))}


def imports_of(path: Path, known: dict[str, Path]) -> set[str]:
    """Every minisvd module this file imports, at the top or inside a function (a lazy import still forms a
    circle of concepts). `from minisvd.a import b` counts as minisvd.a.b when b is a module, else minisvd.a."""
    out = set()
    me = module_name(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import
                base = ".".join(
                    package.split(".")[: len(package.split(".")) - node.level + 1] + [base]
                ).strip(".")
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        out |= {n for n in names if n in known and n != me}
    return out


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done
    stack: list[str] = []

    def visit(n):
        state[n] = 1
        stack.append(n)
        for m in sorted(graph[n]):
            if state.get(m) == 1:
                return stack[stack.index(m) :] + [m]
            if m not in state and (c := visit(m)):
                return c
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state and (c := visit(n)):
            return c
    return None


def test_no_import_circle():
    known = modules()
    graph = {name: imports_of(path, known) for name, path in known.items()}
    assert graph["minisvd.pipelines.image_to_video"], "the import scan found nothing: the test is broken"
    assert find_cycle(graph) is None, "import circle: " + " -> ".join(find_cycle(graph))


def test_find_cycle_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


@pytest.mark.parametrize("name", sorted(modules()))
def test_module_length(name):
    n = len(modules()[name].read_text().splitlines())
    assert n <= MAX_LINES, f"{name} has {n} lines (> {MAX_LINES}): split it by concept"


def test_cli_lists_every_command_module():
    """Each module in minisvd/cli (but __init__) is a command the parser offers: none is dropped silently."""
    from minisvd.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    files = {p.stem for p in (PKG / "cli").glob("*.py") if p.stem != "__init__"}
    assert files <= set(sub.choices), f"commands not registered: {files - set(sub.choices)}"


NOTEBOOKS = sorted((PKG.parent / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebooks_are_stored_without_outputs(notebook):
    """Notebooks in git hold no outputs (diffs stay readable, nothing stale is shown as a result): clear them
    before committing, e.g. `jupyter nbconvert --clear-output --inplace notebooks/*.ipynb`.
    scripts/render_course.py writes the executed copies to docs/course/ instead."""
    import json

    cells = json.loads(notebook.read_text())["cells"]
    dirty = [
        i
        for i, c in enumerate(cells)
        if c["cell_type"] == "code" and (c.get("outputs") or c.get("execution_count"))
    ]
    assert not dirty, f"{notebook.name}: cells {dirty} hold outputs or execution counts: clear them"
