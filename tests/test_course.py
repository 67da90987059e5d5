"""The course's strip and grade steps (uniad_mini/commands/course.py): every student part is marked with nbgrader's markers,
stripping changes exactly the marked blocks, the student copy imports, it scores 0 on every assignment while the
solution scores full marks, and the assignment notebooks run top to bottom with full marks at each checkpoint.

Grading spawns a pytest process per copy (about 15 s): the student copy's run is in the default suite; the
solution's, a half-done copy's, the copy's full collection and the notebooks (a few minutes) are marked slow.
"""
import difflib
import inspect
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from uniad_mini.commands import cli, course
from uniad_mini.commands.course import ASSIGNMENTS, BEGIN, END, HINT

ROOT = Path(__file__).resolve().parents[1]
REQUIRED = {"neighbors.neighbor_mask", "attention.attend", "transformer.feature_jitter",
            "transformer.ReconstructionTransformer.forward", "backbone.feature_stack", "evaluation.anomaly_map",
            "evaluation.image_score", "metrics.auroc"}


def resolve(qualname):
    import importlib

    module, *attrs = qualname.split(".")
    obj = importlib.import_module(f"uniad_mini.{module}")
    for attr in attrs:
        obj = getattr(obj, attr)
    return obj


@pytest.fixture(scope="module")
def stripped(tmp_path_factory):
    out = tmp_path_factory.mktemp("course") / "student"
    return out, course.strip(out)


@pytest.fixture(scope="module")
def solution(tmp_path_factory):
    out = tmp_path_factory.mktemp("course") / "solution"
    course.strip(out, keep_solutions=True)
    return out


# ---- the marks and the table --------------------------------------------------------------------------


def test_every_required_part_holds_one_marked_block_and_is_graded():
    graded = {f for a in ASSIGNMENTS for f in a.functions}
    assert REQUIRED <= graded
    for qualname in graded:
        body = [line.strip() for line in inspect.getsource(resolve(qualname)).splitlines()]
        assert body.count(BEGIN) == body.count(END) == 1, qualname
        assert body[body.index(BEGIN) - 1].startswith(HINT), f"{qualname}: a hint line before its block"


def test_the_assignment_table_names_real_tests_and_notebooks():
    assert len({a.name for a in ASSIGNMENTS}) == len(ASSIGNMENTS)
    assert sum(a.points for a in ASSIGNMENTS) == 100
    nodes = [t for a in ASSIGNMENTS for t in a.tests]
    assert len(set(nodes)) == len(nodes)
    for node in nodes:
        path, name = node.split("::")
        assert f"\ndef {name}(" in (ROOT / path).read_text(), node
    for a in ASSIGNMENTS:
        assert (ROOT / "notebooks" / "assignments" / f"{a.notebook}.ipynb").is_file()


# ---- strip ----------------------------------------------------------------------------------------------


def test_strip_source_replaces_the_block_by_a_raise_of_its_hint_at_its_indentation():
    text = "def f(x):\n    y = 1\n    ### HINT: add one\n    ### BEGIN SOLUTION\n    return x + y\n    ### END SOLUTION\n"
    out, n = course.strip_source(text)
    assert n == 1
    assert out == "def f(x):\n    y = 1\n    ### HINT: add one\n    raise NotImplementedError(\"add one\")\n"
    assert course.strip_source("x = 1\n") == ("x = 1\n", 0)


@pytest.mark.parametrize("text", [f"    {BEGIN}\n    x = 1\n", f"    x = 1\n    {END}\n",
                                  f"    {BEGIN}\n  {END}\n", f"{BEGIN}\n{BEGIN}\n{END}\n"])
def test_unbalanced_or_misaligned_markers_are_clear_errors(text):
    with pytest.raises(course.CourseError, match="SOLUTION"):
        course.strip_source(text, "f.py")


def test_the_student_copy_differs_from_the_project_only_in_the_marked_blocks(stripped):
    out, counts = stripped
    assert sum(counts.values()) == len(REQUIRED)
    for src in sorted((ROOT / "uniad_mini").glob("*.py")) + sorted((ROOT / "kernels").glob("*.py")):
        rel = src.relative_to(ROOT)
        before, after = src.read_text().splitlines(), (out / rel).read_text().splitlines()
        hunks = [op for op in difflib.SequenceMatcher(a=before, b=after, autojunk=False).get_opcodes() if op[0] != "equal"]
        assert len(hunks) == counts.get(str(rel), 0), rel
        for tag, i1, i2, j1, j2 in hunks:
            assert tag == "replace" and j2 - j1 == 1, rel
            assert before[i1].strip() == BEGIN and before[i2 - 1].strip() == END
            indent = before[i1][: len(before[i1]) - len(before[i1].lstrip())]
            k = i1
            while before[k - 1].strip().startswith(HINT):  # the hint lines just above the block
                k -= 1
            hint = " ".join(line.strip()[len(HINT):].strip() for line in before[k:i1])
            assert after[j1] == f"{indent}raise NotImplementedError({json.dumps(hint)})"
    for rel in ("setup.py", "README.md", "tests/test_attention.py", "tests/conftest.py"):
        assert (out / rel).read_bytes() == (ROOT / rel).read_bytes()
    assert not list(out.rglob("__pycache__")) and not (out / ".git").exists()


def test_a_copy_with_solutions_is_the_source_byte_for_byte(solution):
    for src in (ROOT / "uniad_mini").glob("*.py"):
        assert (solution / "uniad_mini" / src.name).read_bytes() == src.read_bytes()


def test_the_student_copy_imports_cleanly_and_its_parts_raise_their_hints(stripped):
    out, _ = stripped
    code = (
        "import pkgutil, importlib, uniad_mini\n"
        "for m in pkgutil.iter_modules(uniad_mini.__path__):\n"
        "    if m.name != '__main__': importlib.import_module('uniad_mini.' + m.name)\n"  # __main__ runs the CLI
        "print(uniad_mini.__file__)\n"
        "from uniad_mini.neighbors import neighbor_mask\n"
        "try:\n    neighbor_mask(14, 14, 7)\nexcept NotImplementedError as e:\n    print('raised:', e)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(out)}
    proc = subprocess.run([sys.executable, "-c", code], cwd=out, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    where, raised = proc.stdout.splitlines()[:2]
    assert Path(where).resolve().is_relative_to(out.resolve())
    assert raised.startswith("raised: token t sits at")


def test_strip_refuses_a_non_empty_out_and_grade_a_folder_that_is_no_copy(tmp_path, capsys):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    assert cli.main(["course", "strip", str(tmp_path / "full")]) == 2
    assert cli.main(["course", "grade", str(tmp_path)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and "not an empty folder" in err[0] and "not a copy of the project" in err[1]
    with pytest.raises(course.CourseError, match="inside a folder"):
        course.strip(ROOT / "tests" / "student")


# ---- counting -------------------------------------------------------------------------------------------


def test_points_count_a_test_once_and_only_when_every_case_passed(tmp_path):
    xml = tmp_path / "junit.xml"
    xml.write_text(
        '<testsuites><testsuite>'
        '<testcase classname="tests.test_attention" name="test_neighbor_mask_matches_brute_force"/>'
        '<testcase classname="tests.test_attention" name="test_neighbor_mask_blocks_the_query_itself[a]"/>'
        '<testcase classname="tests.test_attention" name="test_neighbor_mask_blocks_the_query_itself[b]">'
        '<failure message="AssertionError: no">x</failure></testcase>'
        '<testcase classname="tests.test_attention" name="test_interior_query_sees_147_keys_and_corner_sees_180">'
        '<skipped message="skipped"/></testcase></testsuite></testsuites>')
    row = course.score(course.BY_NAME["masks"], course.junit_outcomes(xml))
    assert (row["passed"], row["tests"], row["points"]) == (1, 3, 3.3)
    assert row["failures"]["tests/test_attention.py::test_neighbor_mask_blocks_the_query_itself"] == "AssertionError: no"
    assert course.score(course.BY_NAME["auroc"], {})["points"] == 0  # a test that never ran does not pass
    table = course.score_table([row])
    assert "| masks | neighbors.neighbor_mask | 1 / 3 | 3.3 / 10 |" in table and "| **total** |" in table


# ---- grading (pytest in a subprocess per copy) ---------------------------------------------------------


def test_the_student_copy_scores_zero_on_every_assignment(stripped, capsys):  # one pytest run, ~15 s
    out, _ = stripped
    assert cli.main(["course", "grade", str(out)]) == 1
    table = capsys.readouterr().out
    for a in ASSIGNMENTS:
        assert f"| {a.name} | {', '.join(a.functions)} | 0 / {len(a.tests)} | 0 / {a.points} |" in table
    assert "| **total** |  | 0 / " in table and "0 / 100 |" in table


@pytest.mark.slow
def test_the_solution_scores_full_marks_with_its_own_package(solution, capsys, monkeypatch):
    rows = course.grade(solution)
    assert course.full_marks(rows) and sum(r["points"] for r in rows) == 100
    assert all(Path(r["package"]).resolve().is_relative_to(solution.resolve()) for r in rows)
    monkeypatch.setattr(course, "grade", lambda path: rows)  # the command on these rows, without a second run
    assert cli.main(["course", "grade", str(solution)]) == 0
    assert "| **total** |  | 24 / 24 | 100 / 100 |" in capsys.readouterr().out


@pytest.mark.slow
def test_an_assignment_left_undone_costs_its_own_points_only(tmp_path):
    out = tmp_path / "half"
    course.strip(out, keep_solutions=True)
    attention = out / "uniad_mini" / "attention.py"  # neighbor_mask and attend undone, everything else written
    attention.write_text(course.strip_source(attention.read_text())[0])
    points = {r["assignment"]: r["points"] for r in course.grade(out)}
    assert points == {a.name: 0 if a.name in ("masks", "attention") else a.points for a in ASSIGNMENTS}


@pytest.mark.slow
def test_every_test_module_of_the_student_copy_collects(stripped):
    out, _ = stripped
    env = {**os.environ, "PYTHONPATH": str(out)}
    proc = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", "tests"],
                          cwd=out, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:]


# ---- the assignment notebooks --------------------------------------------------------------------------

NOTEBOOKS = sorted((ROOT / "notebooks" / "assignments").glob("[0-9][0-9]_*.ipynb"))


def test_three_to_five_assignment_notebooks_cover_every_assignment_and_are_stored_clean():
    assert 3 <= len(NOTEBOOKS) <= 5
    assert {a.notebook for a in ASSIGNMENTS} == {p.stem for p in NOTEBOOKS}
    for path in NOTEBOOKS:
        nb = json.loads(path.read_text())
        first = "".join(nb["cells"][0]["source"])
        assert nb["cells"][0]["cell_type"] == "markdown" and "What you will learn" in first and "Runtime" in first
        text = {kind: "".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == kind)
                for kind in ("markdown", "code")}
        assert "**Try this.**" in text["markdown"] and "**Expected:**" in text["markdown"]
        for a in ASSIGNMENTS:
            assert (f'check("{a.name}")' in text["code"]) == (a.notebook == path.stem), (path.name, a.name)
        for cell in nb["cells"]:
            if cell["cell_type"] == "code":
                assert cell["outputs"] == [] and cell["execution_count"] is None, f"{path.name}: strip its outputs"


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_assignment_notebook_runs_with_full_marks_at_every_checkpoint(path, monkeypatch):
    pytest.importorskip("ipykernel")
    nbformat = pytest.importorskip("nbformat")
    from nbclient import NotebookClient

    monkeypatch.setenv("UNIAD_NOTEBOOK_FAST", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    paths = [str(ROOT), os.environ.get("PYTHONPATH")]  # the kernel imports this checkout's uniad_mini
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in paths if p))
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}).execute()
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    for a in ASSIGNMENTS:
        if a.notebook == path.stem:
            assert f"full marks for {a.name}" in text and f"| {len(a.tests)} / {len(a.tests)} | {a.points} / {a.points} |" in text
    assert "not yet:" not in text


@pytest.mark.slow
def test_in_the_student_copy_a_notebook_points_at_the_parts_and_its_checkpoints_score_zero(stripped, monkeypatch):
    pytest.importorskip("ipykernel")
    nbformat = pytest.importorskip("nbformat")
    from nbclient import NotebookClient

    out, _ = stripped
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("PYTHONPATH", str(out))  # the student's kernel imports the student's package
    path = out / "notebooks" / "assignments" / "01_masks_and_attention.ipynb"
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3", allow_errors=True,
                   resources={"metadata": {"path": str(path.parent)}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    text = "".join(o.get("text", "") for o in outputs)
    assert "attention.neighbor_mask: uniad_mini/attention.py, line" in text and "hint: token t sits at" in text
    assert "| masks | neighbors.neighbor_mask | 0 / 3 | 0 / 10 |" in text and "| 0 / 4 | 0 / 20 |" in text
    assert "not yet: tests/test_attention.py::test_neighbor_mask_blocks_the_query_itself" in text
    assert any(o.get("ename") == "NotImplementedError" for o in outputs)  # the cells that use a part stop with its hint
