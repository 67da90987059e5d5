"""The package's layers, kept by a test: every import of every module, read from its source.

    core      uniad_mini/*.py: the paper's path (images to maps and scores, the training step), the data, the
              metrics and the baselines the benchmarks compare against
    kernels   kernels/ (uniad_mini.kernels): the fused Triton attention
    shortcut  uniad_mini/shortcut/: the notebooks' identical-shortcut experiments
    bench     uniad_mini/bench/: the benchmarks (quality, speed, sweep, roofline, the kernel bench)
    course    uniad_mini/course/: the assignments, the student copy, the grader
    app       uniad_mini/app/ and uniad_mini/__main__.py: the user's application, the `uniad-mini` command line

`MAY_IMPORT` says, for every layer, which layers it may import; every other pair is a wrong arrow. Two doors
are narrower still: the core reaches the kernels only through `attention.py` (the attention backend), and
the kernels read nothing of the core but the mask's definition (`neighbors.py`). No chain of imports may come
back to where it started. Imports inside functions count as much as those at the top. The graded tests
(uniad_mini/course/graded_tests/) are data the grader runs against a student's package, not modules of it:
they are left out.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MAY_IMPORT = {
    "kernels": {"kernels", "core"},  # the core: only the mask's definition (DOORS)
    "core": {"core", "kernels"},  # the kernels: only from the attention backend (DOORS)
    "shortcut": {"shortcut", "core"},
    "bench": {"bench", "core", "shortcut", "kernels"},
    "course": {"course", "core"},
    "app": {"app", "core", "bench", "course"},
}
LAYERS = sorted(MAY_IMPORT)
# (from layer, to layer): (the only modules that may import across, the only modules that may be imported)
DOORS = {("core", "kernels"): ({"uniad_mini.attention"}, None),
         ("kernels", "core"): (None, {"uniad_mini.neighbors"})}


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
    if len(parts) > 1 and parts[1] in ("kernels", "shortcut", "bench", "course"):
        return parts[1]
    return "core"


def allowed(a: str, b: str) -> bool:
    """May module a import module b?"""
    la, lb = layer(a), layer(b)
    if lb not in MAY_IMPORT[la]:
        return False
    importers, imported_ = DOORS.get((la, lb), (None, None))
    return (importers is None or a in importers) and (imported_ is None or b in imported_)


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
            if not allowed(a, b)]


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


def test_every_layer_has_modules_and_a_rule():
    assert {layer(m) for m in module_files()} == set(LAYERS)


WRONG = [(a, b) for a in LAYERS for b in LAYERS if b not in MAY_IMPORT[a]]


@pytest.mark.parametrize("source, target", WRONG, ids=[f"{a}->{b}" for a, b in WRONG])
def test_a_planted_wrong_arrow_between_any_two_layers_is_caught(source, target):
    graph = import_graph()
    a = next(m for m in sorted(graph) if layer(m) == source)
    b = next(m for m in sorted(graph) if layer(m) == target)
    graph[a] = graph[a] | {b}
    assert wrong_way(graph) == [f"{a} ({source}) imports {b} ({target})"]


def test_the_doors_between_the_core_and_the_kernels_are_narrow():
    graph = import_graph()
    assert "uniad_mini.kernels" in graph["uniad_mini.attention"]  # the one door in use
    planted = {"uniad_mini.model": {"uniad_mini.kernels.fused_attention"},  # the core around the backend
               "uniad_mini.kernels.tiles": {"uniad_mini.environment"}}  # the kernels reading more than the mask
    for module, targets in planted.items():
        graph[module] = graph[module] | targets
    assert sorted(wrong_way(graph)) == [
        "uniad_mini.kernels.tiles (kernels) imports uniad_mini.environment (core)",
        "uniad_mini.model (core) imports uniad_mini.kernels.fused_attention (kernels)"]


def test_a_planted_circle_is_caught():
    graph = import_graph()
    graph["uniad_mini.neighbors"] = {"uniad_mini.attention"}  # attention -> neighbors -> attention
    assert any({"uniad_mini.attention", "uniad_mini.neighbors"} <= set(c) for c in cycles(graph))


TESTS = ROOT / "tests"


def files_of(folder: str) -> list[Path]:
    return sorted((TESTS / folder).glob("test_*.py"))


# a layer's tests may import what the layer may, and the benchmarks' and the course's tests their command line
TESTS_MAY_IMPORT = {**MAY_IMPORT, "bench": MAY_IMPORT["bench"] | {"app"}, "course": MAY_IMPORT["course"] | {"app"}}


@pytest.mark.parametrize("folder", LAYERS)
def test_each_layers_tests_import_only_what_the_layer_may(folder):
    """tests/<layer>/ mirrors the package: a core test that needs the command line belongs with the app's."""
    known = set(module_files())
    wrong = [f"{path.relative_to(ROOT)} imports {target}" for path in files_of(folder)
             for target in sorted(imported("tests." + path.stem, path, known))
             if layer(target) not in TESTS_MAY_IMPORT[folder]]
    assert wrong == []


def test_every_test_file_sits_in_a_layers_folder_or_project():
    assert sorted(p.parent.name for p in TESTS.rglob("test_*.py") if p.parent.name not in LAYERS + ["project"]) == []
    assert all(files_of(folder) for folder in LAYERS)


@pytest.mark.parametrize("module", sorted(module_files()))
def test_every_module_stays_under_400_lines(module):
    assert len(module_files()[module].read_text().splitlines()) <= 400
