"""The package's shape, checked: no import circle, imports only point down the layers, no module over 450
lines, the task bodies import only ops, core and their UI module, and tasks.py only imaging.cli."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "imaging"
RANK = {"core": 0, "model": 1, "plans": 2, "state": 2, "settings": 2, "images": 2, "providers": 3, "engine": 4,
        "ops": 5, "cli": 6}
MAX_LINES = 450


def _name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_name(p): p for p in PACKAGE.rglob("*.py")}


def _imports(path: Path) -> set[str]:
    """Every imaging module ``path`` imports (anywhere in the file, type-checking imports included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            assert node.level == 0, f"{path}: relative import (use absolute imaging.* imports)"
            targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        for t in targets:
            while t and t not in MODULES:
                t = t.rpartition(".")[0]
            if t.startswith("imaging"):
                found.add(t)
    return found


GRAPH = {n: _imports(p) - {n} for n, p in MODULES.items()}


def _layer(name: str) -> str | None:
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else None


def test_every_module_is_in_a_layer_folder() -> None:
    assert [n for n in MODULES if n != "imaging" and _layer(n) not in RANK] == []


def test_no_import_points_up() -> None:
    upward = [f"{n} -> {d}" for n, deps in GRAPH.items() for d in deps
              if _layer(n) in RANK and _layer(d) in RANK and RANK[_layer(d)] > RANK[_layer(n)]]
    assert upward == []


def test_no_import_circle() -> None:
    seen: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(n: str, path: list[str]) -> None:
        seen[n] = 1
        for d in sorted(GRAPH[n]):
            if seen.get(d) == 1:
                raise AssertionError("import circle: " + " -> ".join([*path[path.index(d):], d]))
            if d not in seen:
                visit(d, [*path, d])
        seen[n] = 2

    for n in sorted(GRAPH):
        if n not in seen:
            visit(n, [n])


def test_no_module_is_too_large() -> None:
    big = {n: len(p.read_text(encoding="utf-8").splitlines()) for n, p in MODULES.items()}
    assert {n: lines for n, lines in big.items() if lines > MAX_LINES} == {}


def test_task_bodies_import_only_ops_core_and_their_ui() -> None:
    allowed = ("imaging.ops", "imaging.core", "imaging.cli.ui")
    bad = {n: sorted(d for d in deps if not d.startswith(allowed) and d != "imaging.cli")
           for n, deps in GRAPH.items() if n.startswith("imaging.cli")}
    assert {n: d for n, d in bad.items() if d} == {}


def test_tasks_py_only_gathers_the_cli() -> None:
    deps = {d for d in _imports(ROOT / "tasks.py")}
    assert deps and all(d == "imaging.cli" or d.startswith("imaging.cli.") for d in deps), deps


def test_the_check_itself_sees_a_circle_and_an_upward_import(tmp_path: Path) -> None:
    """The walk above must be able to fail: a fake upward import is caught by the same rule."""
    fake = {"imaging.core.a": {"imaging.ops.b"}, "imaging.ops.b": set()}
    upward = [f"{n} -> {d}" for n, deps in fake.items() for d in deps if RANK[_layer(d)] > RANK[_layer(n)]]
    assert upward == ["imaging.core.a -> imaging.ops.b"]
