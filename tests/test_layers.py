"""The package's layers, kept by a test: every import of every module, read from its source.

    core      uniad_mini/*.py and kernels/ (uniad_mini.kernels): the model path, from images to scores, and the
              baselines it is compared against
    shortcut  uniad_mini/shortcut/: the notebooks' identical-shortcut experiments
    bench     uniad_mini/bench/: the benchmarks and the sweep
    course    uniad_mini/course/: the assignments, the student copy, the grader
    app       uniad_mini/app/ and uniad_mini/__main__.py: the user's application, the `uniad-mini` command line

An import may point down or sideways, never up: app may import every layer; bench the core and shortcut; course
and shortcut the core only (bench and course share a rank, so an import between them is caught on its own).
No chain of imports may come back to where it started. Imports inside functions count as much as those at the
top. The graded tests (uniad_mini/course/graded_tests/) are data the grader runs against a student's package,
not modules of it: they are left out.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RANK = {"core": 0, "shortcut": 1, "bench": 2, "course": 2, "app": 3}
MAY_NOT = {("bench", "course"), ("course", "bench"), ("course", "shortcut")}  # beside the ranks


def module_files() -> dict[str, Path]:
    """Dotted module name -> source file, for the package and its kernels sub-package."""
    files = {}
    for base, prefix in ((ROOT / "uniad_mini", "uniad_mini"), (ROOT / "kernels", "uniad_mini.kernels")):
        for path in sorted(p for p in base.rglob("*.py") if "graded_tests" not in p.parts):
            parts = list(path.relative_to(base).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            files[".".join([prefix, *parts])] = path
    return files


def layer(module: str) -> str:
    parts = module.split(".")
    if len(parts) > 1 and parts[1] in ("app", "__main__"):
        return "app"
    if len(parts) > 1 and parts[1] in ("shortcut", "bench", "course"):
        return parts[1]
    return "core"


def imported(module: str, path: Path, known: set[str]) -> set[str]:
    """The package modules that `module` imports: the target modules, not the packages above `module`
    (Python imports those first for any module, so they say nothing about its layer)."""
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                stem = ".".join(base + ([node.module] if node.module else []))
            else:
                stem = node.module
            # `from X import y` imports X, and X.y when y is a module
            names = [stem] + [f"{stem}.{a.name}" for a in node.names]
        else:
            continue
        found |= {n for n in names if n in known and n != module and not module.startswith(n + ".")}
    return found


def import_graph() -> dict[str, set[str]]:
    files = module_files()
    return {m: imported(m, p, set(files)) for m, p in files.items()}


def wrong_way(graph: dict[str, set[str]]) -> list[str]:
    return [f"{a} ({layer(a)}) imports {b} ({layer(b)})" for a, targets in graph.items() for b in sorted(targets)
            if RANK[layer(b)] > RANK[layer(a)] or (layer(a), layer(b)) in MAY_NOT]


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected group of more than one module (Tarjan), each a circle of imports."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v), on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                out.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_every_import_points_down_the_layers():
    assert wrong_way(import_graph()) == []


def test_no_module_imports_itself_back_through_a_circle():
    assert cycles(import_graph()) == []


def test_the_checks_catch_a_planted_wrong_arrow_and_circle():
    graph = import_graph()
    assert "uniad_mini.model" in graph and "uniad_mini.app.cli" in graph  # the walk found the package
    graph["uniad_mini.model"] = graph["uniad_mini.model"] | {"uniad_mini.app.cli"}  # core -> app
    assert wrong_way(graph) == ["uniad_mini.model (core) imports uniad_mini.app.cli (app)"]
    graph["uniad_mini.model"] -= {"uniad_mini.app.cli"}
    graph["uniad_mini.bench.sweep"] = graph["uniad_mini.bench.sweep"] | {"uniad_mini.app.runs"}  # bench -> app
    graph["uniad_mini.course.grading"] = graph["uniad_mini.course.grading"] | {"uniad_mini.shortcut.identity"}
    assert wrong_way(graph) == ["uniad_mini.bench.sweep (bench) imports uniad_mini.app.runs (app)",
                                "uniad_mini.course.grading (course) imports uniad_mini.shortcut.identity (shortcut)"]
    graph["uniad_mini.neighbors"] = {"uniad_mini.attention"}  # attention -> neighbors -> attention
    assert any({"uniad_mini.attention", "uniad_mini.neighbors"} <= set(c) for c in cycles(graph))


@pytest.mark.parametrize("module", sorted(module_files()))
def test_every_module_stays_under_400_lines(module):
    assert len(module_files()[module].read_text().splitlines()) <= 400
