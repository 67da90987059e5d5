"""Course assignments: students write UniAD's key parts themselves (paper Sec. 3.1-3.5 and the AUROC of Sec. 4.1).

Each student part is a block inside a function body of the package, between nbgrader's marker lines
`### BEGIN SOLUTION` and `### END SOLUTION`, optionally preceded by `### HINT: ...` comment lines. The block
holds the reference solution, so the package works and reads as it always did. Three steps use the marks:

  strip(out)     a student copy of the project in `out`: each marked block becomes one line
                 `raise NotImplementedError("<hint>")` at the block's indentation; every other byte is kept.
  grade(dir)     runs each assignment's tests (ASSIGNMENTS) on the copy in `dir`, in one pytest process whose
                 working directory and PYTHONPATH are `dir`, so the copy's package is the one imported (checked:
                 `uniad_mini.__file__` must lie in `dir`); pass counts come from pytest's JUnit XML.
  check(name)    the notebooks' checkpoint: grade one assignment of the project whose package is imported.

Points: an assignment's points are shared equally by its tests; a parametrised test counts once and passes
only when all its cases pass (a skipped test does not pass). Full marks: every test of every assignment.
`uniad-mini course strip OUT` and `uniad-mini course grade DIR` run the first two (`run_command`).
The graded tests never import `uniad_mini.kernels` (which a copy does not carry inside its package).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

from ..evaluation import markdown_table

BEGIN, END, HINT = "### BEGIN SOLUTION", "### END SOLUTION", "### HINT:"
DEFAULT_HINT = "write this part (notebooks/assignments/ explain it)"
PARTS = ("uniad_mini", "kernels", "tests", "docs", "notebooks/assignments", "setup.py", "README.md")  # strip copies
STRIPPED = ("uniad_mini", "kernels")  # the package source, where marked blocks are replaced
SKIP = {"__pycache__", ".ipynb_checkpoints", ".pytest_cache", ".hypothesis"}
GRADE_TIMEOUT_S = 900


class CourseError(ValueError):
    """A mistake the user can fix (a bad folder, unbalanced markers): the CLI prints it on one line."""


@dataclass(frozen=True)
class Assignment:
    name: str
    title: str
    functions: tuple[str, ...]  # "module.qualname" in uniad_mini, each holding a marked block
    tests: tuple[str, ...]  # pytest node ids, relative to the project root
    points: int
    notebook: str


A, M, B, T = "tests/test_assignments.py::", "tests/test_model.py::", "tests/test_backbone.py::", "tests/test_attention.py::"
ASSIGNMENTS = (
    Assignment("masks", "the neighbor mask (Sec. 3.3)", ("neighbors.neighbor_mask",),
               (T + "test_neighbor_mask_matches_brute_force", T + "test_neighbor_mask_blocks_the_query_itself",
                T + "test_interior_query_sees_147_keys_and_corner_sees_180"), 10, "01_masks_and_attention"),
    Assignment("attention", "attention by hand, the plain PyTorch path (Sec. 3.3)", ("attention.attend",),
               (T + "test_attend_without_window_is_full_attention",
                A + "test_masked_attention_is_a_softmax_over_the_visible_keys",
                A + "test_blocked_keys_and_values_get_no_gradient", A + "test_attention_dropout_only_when_asked"),
               20, "01_masks_and_attention"),
    Assignment("jitter", "feature jittering (Sec. 3.4, Eq. 4)", ("transformer.feature_jitter",),
               (M + "test_jitter_noise_has_std_alpha_norm_over_c", A + "test_jitter_is_the_identity_when_off",
                A + "test_jitter_noise_follows_each_tokens_norm", A + "test_jitter_prob_skips_whole_batches"),
               15, "02_jitter_and_layerwise_query"),
    Assignment("layerwise_query", "the decoder's layer-wise query (Sec. 3.2)",
               ("transformer.ReconstructionTransformer.forward",),
               (A + "test_each_decoder_layer_starts_from_its_own_query",
                A + "test_without_layerwise_queries_later_layers_start_from_the_previous_output"),
               15, "02_jitter_and_layerwise_query"),
    Assignment("feature_stack", "multi-scale feature stacking (Sec. 3.1)", ("backbone.feature_stack",),
               (B + "test_feature_stack_taps_strides_2_4_8_16_resized_align_corners",
                B + "test_b4_has_the_papers_272_stacked_channels", A + "test_feature_stack_of_random_taps"),
               10, "03_features_and_scores"),
    Assignment("scores", "anomaly map and image score (Sec. 3.5)", ("evaluation.anomaly_map", "evaluation.image_score"),
               (M + "test_anomaly_map_is_channel_l2_upsampled_with_align_corners",
                M + "test_image_score_is_max_of_16x16_average_pool", A + "test_anomaly_map_interpolates_between_tokens",
                A + "test_image_score_of_a_hot_square_and_a_hot_pixel"), 15, "03_features_and_scores"),
    Assignment("auroc", "image and pixel AUROC by hand (Sec. 4.1)", ("metrics.auroc",),
               ("tests/test_metrics.py::test_auroc_matches_sklearn_with_ties",
                "tests/test_metrics.py::test_auroc_counts_tied_pairs_as_half",
                "tests/test_metrics.py::test_reversed_scores_give_auroc_zero_not_flipped",
                "tests/test_metrics.py::test_constant_scores_give_auroc_one_half"), 15, "04_metrics_auroc"),
)
BY_NAME = {a.name: a for a in ASSIGNMENTS}


# --------------------------------------------------------------------------------------------------
# Strip: marked block -> raise


def strip_source(text: str, where: str = "<source>") -> tuple[str, int]:
    """(text with every marked block replaced by a raise of its hint, number of blocks)."""
    lines, out, hint, blocks, i = text.splitlines(keepends=True), [], [], 0, 0
    while i < len(lines):
        line, word = lines[i], lines[i].strip()
        if word == END:
            raise CourseError(f"{where}:{i + 1}: '{END}' without a '{BEGIN}' before it")
        if word != BEGIN:
            hint = hint + [word[len(HINT):].strip()] if word.startswith(HINT) else []
            out.append(line)
            i += 1
            continue
        j = next((k for k in range(i + 1, len(lines)) if lines[k].strip() in (BEGIN, END)), None)
        if j is None or lines[j].strip() != END:
            raise CourseError(f"{where}:{i + 1}: '{BEGIN}' without its '{END}'")
        indent = line[: len(line) - len(line.lstrip())]
        if not lines[j].startswith(indent + "#"):
            raise CourseError(f"{where}:{j + 1}: '{END}' must sit at the indentation of its '{BEGIN}'")
        out.append(f"{indent}raise NotImplementedError({json.dumps(' '.join(hint) or DEFAULT_HINT)})\n")
        blocks, hint, i = blocks + 1, [], j + 1
    return "".join(out), blocks


def package_root() -> Path:
    """The project folder holding the imported `uniad_mini` package (a checkout or a student copy)."""
    return Path(__file__).resolve().parents[2]


def project_dir(path) -> Path:
    """`path` resolved, when it is a copy of the project (uniad_mini/__init__.py and tests/); else a CourseError."""
    root = Path(path).resolve()
    if not (root / "uniad_mini" / "__init__.py").is_file() or not (root / "tests").is_dir():
        raise CourseError(f"{path} is not a copy of the project (it needs uniad_mini/__init__.py and tests/)")
    return root


def _files(src: Path, part: str):
    """(relative path, absolute path) of every file of one part of the project, caches left out."""
    top = src / part
    if top.is_file():
        yield Path(part), top
        return
    for f in sorted(top.rglob("*")):
        rel = f.relative_to(src)
        if f.is_file() and not SKIP & set(rel.parts) and f.suffix != ".pyc" and not rel.parts[0].endswith(".egg-info"):
            yield rel, f


def _clear_outputs(text: str) -> str:
    """A notebook's JSON with every code cell's outputs and execution count cleared."""
    nb = json.loads(text)
    for cell in nb.get("cells", []):
        if cell.get("cell_type") == "code":
            cell["outputs"], cell["execution_count"] = [], None
    return json.dumps(nb, indent=1, ensure_ascii=False) + "\n"


def _check_out(out: Path, src: Path) -> Path:
    out = out.resolve()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise CourseError(f"{out} exists and is not an empty folder; give a new folder for the student copy")
    if any(out.is_relative_to(src / p) for p in PARTS):
        raise CourseError(f"{out} lies inside a folder the copy is made from; choose a folder outside {', '.join(PARTS)}")
    return out


def strip(out, keep_solutions: bool = False, source=None) -> dict[str, int]:
    """Write the student copy of the project `source` (default: this one) to `out`; {file: blocks stripped}.

    keep_solutions=True copies the marked blocks as they are (a solution copy, to check the grader on).
    """
    src = project_dir(source or package_root())
    if not (src / "setup.py").is_file():
        raise CourseError(f"{src} is an installed package, not the project's source: run this from a checkout")
    out = _check_out(Path(out), src)
    stripped = {}
    for part in PARTS:
        if not (src / part).exists():
            continue
        for rel, f in _files(src, part):
            dest = out / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            if f.suffix == ".py" and rel.parts[0] in STRIPPED and not keep_solutions:
                text, n = strip_source(f.read_text(), str(rel))
                dest.write_text(text)
                compile(text, str(dest), "exec")  # a block that cannot become a raise is an error here
                if n:
                    stripped[str(rel)] = n
            elif f.suffix == ".ipynb":
                dest.write_text(_clear_outputs(f.read_text()))
            else:
                dest.write_bytes(f.read_bytes())
    return stripped


# --------------------------------------------------------------------------------------------------
# Grade: each assignment's tests on a copy, counted from JUnit XML

RUNNER = """import sys
try:
    import uniad_mini
    where = uniad_mini.__file__
except Exception:  # a broken copy: its tests fail below, nothing else is imported in its place
    where = ""
open(sys.argv[1], "w").write(where)
import pytest
sys.exit(pytest.main(sys.argv[2:]))
"""


def _case_key(node_id: str) -> tuple[str, str]:
    """'tests/test_x.py::Class::test_f' -> JUnit's ('tests.test_x.Class', 'test_f')."""
    path, *rest = node_id.split("::")
    return ".".join([path[: -len(".py")].replace("/", ".")] + rest[:-1]), rest[-1]


def junit_outcomes(xml_path) -> dict[tuple[str, str], list[str]]:
    """{(classname, test name without its parameters): [failure messages, '' for a pass]} from a JUnit XML file."""
    outcomes: dict[tuple[str, str], list[str]] = {}
    for case in ET.parse(xml_path).getroot().iter("testcase"):
        key = (case.get("classname", ""), case.get("name", "").split("[")[0])
        bad = [c for c in case if c.tag in ("failure", "error", "skipped")]
        message = ((bad[0].get("message") or "").strip().splitlines() or [bad[0].tag])[0] if bad else ""
        outcomes.setdefault(key, []).append(message)
    return outcomes


def run_tests(root: Path, node_ids: list[str]):
    """Run pytest on node ids in the copy `root`; (outcomes, the uniad_mini file it imported, pytest's output)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(root), os.environ.get("PYTHONPATH")) if p)}
    env.setdefault("OMP_NUM_THREADS", "1")  # small tests: more threads only fight over the cores
    with tempfile.TemporaryDirectory() as tmp:
        xml, where = Path(tmp) / "junit.xml", Path(tmp) / "package.txt"
        cmd = [sys.executable, "-c", RUNNER, str(where), "-q", "-p", "no:cacheprovider", f"--rootdir={root}",
               "--continue-on-collection-errors", f"--junitxml={xml}", *node_ids]
        try:
            proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=GRADE_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise CourseError(f"the tests in {root} ran past {GRADE_TIMEOUT_S} s (an endless loop?)") from None
        package = where.read_text() if where.exists() else ""
        outcomes = junit_outcomes(xml) if xml.exists() else {}
    return outcomes, package, proc.stdout + proc.stderr


def score(assignment: Assignment, outcomes) -> dict:
    """One assignment's row: tests passed (a test passes when it ran and every case passed) and points."""
    failures = {}
    for node in assignment.tests:
        cases = outcomes.get(_case_key(node))
        if not cases or any(cases):
            failures[node] = next((c for c in cases or [] if c), "not run (a collection error?)")
    passed = len(assignment.tests) - len(failures)
    return {"assignment": assignment.name, "functions": list(assignment.functions), "passed": passed,
            "tests": len(assignment.tests), "points": round(assignment.points * passed / len(assignment.tests), 1),
            "max_points": assignment.points, "failures": failures}


def grade(path, names=None) -> list[dict]:
    """Grade the project copy at `path` on the named assignments (default all): one row each (see `score`)."""
    root = project_dir(path)
    unknown = [n for n in names or () if n not in BY_NAME]
    if unknown:
        raise CourseError(f"unknown assignment {unknown[0]!r}; choose from {', '.join(BY_NAME)}")
    chosen = [BY_NAME[n] for n in names] if names else list(ASSIGNMENTS)
    outcomes, package, _ = run_tests(root, [t for a in chosen for t in a.tests])
    if package and not Path(package).resolve().is_relative_to(root):
        raise CourseError(f"the tests of {root} imported uniad_mini from {package}, not from the copy itself")
    return [dict(score(a, outcomes), package=package) for a in chosen]


def full_marks(rows: list[dict]) -> bool:
    return all(r["passed"] == r["tests"] for r in rows)


def score_table(rows: list[dict], total: bool = True) -> str:
    """The rows as a Markdown table (assignment, parts, tests passed, points), with a total row."""
    cells = [[r["assignment"], ", ".join(r["functions"]), f"{r['passed']} / {r['tests']}",
              f"{r['points']:g} / {r['max_points']}"] for r in rows]
    if total:
        got, out_of = (sum(r[k] for r in rows) for k in ("points", "max_points"))
        passed, tests = (sum(r[k] for r in rows) for k in ("passed", "tests"))
        cells.append(["**total**", "", f"{passed} / {tests}", f"{round(got, 1):g} / {out_of}"])
    return markdown_table(["assignment", "parts", "tests passed", "points"], cells)


def failure_lines(rows: list[dict]) -> list[str]:
    return [f"  not yet: {node}  ({why})" for r in rows for node, why in r["failures"].items()]


def check(name: str | None = None, path=None) -> dict | list[dict]:
    """A notebook checkpoint: grade one assignment (all with None) of the project whose package is imported."""
    rows = grade(path or package_root(), [name] if name else None)
    print(score_table(rows, total=name is None))
    if full_marks(rows):
        print(f"full marks for {name or 'every assignment'}")
    else:
        print("\n".join(failure_lines(rows)))
    return rows[0] if name else rows


def parts(name: str) -> None:
    """Print where an assignment's marked blocks are (file:line) and their hints: what to open and write."""
    import importlib
    import inspect

    for qualname in BY_NAME[name].functions:
        module, *attrs = qualname.split(".")
        obj = importlib.import_module(f"uniad_mini.{module}")
        for attr in attrs:
            obj = getattr(obj, attr)
        lines, first = inspect.getsourcelines(obj)
        for i, line in enumerate(lines):  # the block, or in a student copy the raise that replaced it
            if line.strip() == BEGIN or line.strip().startswith("raise NotImplementedError(") and i and \
                    lines[i - 1].strip().startswith(HINT):
                hints = []
                for before in reversed(lines[:i]):
                    if not before.strip().startswith(HINT):
                        break
                    hints.insert(0, before.strip()[len(HINT):].strip())
                print(f"{qualname}: uniad_mini/{module}.py, line {first + i}\n    hint: {' '.join(hints) or DEFAULT_HINT}")


# --------------------------------------------------------------------------------------------------
# The command line: uniad-mini course strip OUT | grade DIR


def run_command(args) -> int:
    """`uniad-mini course strip OUT [--keep-solutions]` or `course grade DIR` (parsed by cli.py); the exit status,
    0 for grade only at full marks."""
    path, keep_solutions = args.path, args.keep_solutions
    if args.action == "strip":
        stripped = strip(path, keep_solutions=keep_solutions)
        what = "solutions kept" if keep_solutions else f"{sum(stripped.values())} parts stripped in {len(stripped)} files"
        print(f"wrote the student copy to {path} ({what}); grade it with `uniad-mini course grade {path}`")
        return 0
    rows = grade(path)
    print(score_table(rows))
    if not full_marks(rows):
        print("\n" + "\n".join(failure_lines(rows)))
    return 0 if full_marks(rows) else 1
