"""The course's table and student copy (uniad_mini/course/assignments.py, stripping.py) and its notebooks: every
part is marked, with a first hint in the source and a second in the table; the student copy differs from the
package only in the marked blocks, holds no solution line in any file and no hidden test; the notebooks ask, and
their answers live in the teacher's key. tests/course/test_grading.py grades copies.

The notebooks' runs (a grading run at each checkpoint) are marked slow.
"""
import difflib
import inspect
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from uniad_mini.app import cli
from uniad_mini.course import grading, stripping
from uniad_mini.course.assignments import ASSIGNMENTS, BY_NAME, hint, resolve
from uniad_mini.course.stripping import BEGIN, END, HINT, CourseError

ROOT = Path(__file__).resolve().parents[2]
TESTS = ROOT / "uniad_mini" / "course" / "graded_tests"


# ---- the table of assignments --------------------------------------------------------------------------------


def test_thirteen_assignments_each_part_one_marked_block_with_a_first_hint_and_130_points():
    assert len(ASSIGNMENTS) >= 6 and {"training_step", "layer_wiring", "gd_closed_form"} <= set(BY_NAME)
    assert sum(grading.max_points(a) for a in ASSIGNMENTS) == 130 and len(ASSIGNMENTS) == 13
    for a in ASSIGNMENTS:
        assert grading.graded_tests(a) and a.api_hint and (ROOT / "notebooks" / "assignments" / f"{a.notebook}.ipynb").is_file()
        for qualname in a.functions:
            body = [line.strip() for line in inspect.getsource(resolve(qualname)).splitlines()]
            assert body.count(BEGIN) == body.count(END) == 1, qualname
            assert body[body.index(BEGIN) - 1].startswith(HINT), f"{qualname}: a hint line before its block"
        assert hint(a.name, 1) and hint(a.name, 2) == a.api_hint
        text = (TESTS / f"test_graded_{a.name}.py").read_text()
        assert stripping.HIDDEN_BEGIN in text, f"{a.name}: every assignment has hidden tests"
        assert stripping.strip_hidden(text).count("def test_") >= 1, f"{a.name}: and a visible one for its checkpoint"


def test_every_marked_block_of_the_package_is_an_assignments_part():
    blocks = sum(line.strip() == BEGIN for f in (ROOT / "uniad_mini").rglob("*.py") if "graded_tests" not in f.parts
                 for line in f.read_text().splitlines())
    assert blocks == sum(len(a.functions) for a in ASSIGNMENTS)  # else a part the grader would never leave unwritten


def test_the_second_hint_names_calls_but_holds_no_solution_line():
    lines = stripping.solution_lines(ROOT)
    for a in ASSIGNMENTS:
        assert not [s for s in lines if s in " ".join(a.api_hint.split())], a.name


# ---- strip ----------------------------------------------------------------------------------------------------


def test_strip_source_replaces_the_block_by_a_raise_of_its_hint_at_its_indentation():
    text = "def f(x):\n    y = 1\n    ### HINT: add one\n    ### BEGIN SOLUTION\n    return x + y\n    ### END SOLUTION\n"
    out, n = stripping.strip_source(text)
    assert n == 1 and out == "def f(x):\n    y = 1\n    ### HINT: add one\n    raise NotImplementedError(\"add one\")\n"
    assert stripping.strip_source("x = 1\n") == ("x = 1\n", 0)


@pytest.mark.parametrize("text", [f"    {BEGIN}\n    x = 1\n", f"    x = 1\n    {END}\n",
                                  f"    {BEGIN}\n  {END}\n", f"{BEGIN}\n{BEGIN}\n{END}\n"])
def test_unbalanced_or_misaligned_markers_are_clear_errors(text):
    with pytest.raises(CourseError, match="SOLUTION"):
        stripping.strip_source(text, "f.py")


def test_strip_hidden_drops_the_hidden_tests_and_refuses_unbalanced_markers():
    h0, h1 = stripping.HIDDEN_BEGIN, stripping.HIDDEN_END
    assert stripping.strip_hidden(f"a\n{h0}\nb\n{h1}\nc\n") == "a\nc\n"
    for bad in (f"{h0}\nb\n", f"b\n{h1}\n", f"{h0}\n{h0}\n{h1}\n"):
        with pytest.raises(CourseError, match="HIDDEN"):
            stripping.strip_hidden(bad)


def test_the_student_copy_differs_from_the_package_only_in_the_marked_blocks(student):
    out, done = student
    assert sum(done["stripped"].values()) == sum(len(a.functions) for a in ASSIGNMENTS)
    for src in sorted((ROOT / "uniad_mini").rglob("*.py")):
        rel = src.relative_to(ROOT)
        if "graded_tests" in rel.parts or "__pycache__" in rel.parts:
            continue
        before, after = src.read_text().splitlines(), (out / rel).read_text().splitlines()
        hunks = [op for op in difflib.SequenceMatcher(a=before, b=after, autojunk=False).get_opcodes() if op[0] != "equal"]
        assert len(hunks) == done["stripped"].get(str(rel), 0), rel
        for tag, i1, i2, j1, j2 in hunks:
            assert tag == "replace" and j2 - j1 == 1 and before[i1].strip() == BEGIN and before[i2 - 1].strip() == END
            assert after[j1].strip().startswith("raise NotImplementedError(")


def test_the_student_copy_holds_no_solution_line_anywhere(student):
    """Every line of every marked block (16 characters or more, comment dropped, not elsewhere in the package),
    searched in every file of the copy: code, tests, docs, notebooks (raw JSON and cell sources)."""
    out, done = student
    solutions = set()
    for part in ("uniad_mini", "kernels"):
        for f in (ROOT / part).rglob("*.py"):
            block = re.findall(rf"^\s*{BEGIN}\n(.*?)^\s*{END}", f.read_text(), flags=re.M | re.S)
            solutions |= {" ".join(re.sub(r"\s+#.*$", "", x).split()) for b in block for x in b.splitlines()}
    solutions = {s for s in solutions if len(s) >= stripping.MIN_CHARS and not s.startswith("#")}
    package = " ".join(" ".join(re.sub(r"\s+#.*$", "", x).split()) for f in (ROOT / "uniad_mini").rglob("*.py")
                       if "graded_tests" not in f.parts for x in re.sub(rf"^\s*{BEGIN}\n.*?^\s*{END}", "",
                                                                          f.read_text(), flags=re.M | re.S).splitlines())
    distinct = {s for s in solutions if s not in package}
    assert len(distinct) >= 25  # the search is not empty
    files = [f for f in out.rglob("*") if f.is_file()]
    assert len(files) > 30
    for f in files:
        raw = f.read_bytes().decode("utf-8", "replace")
        texts = [raw]
        if f.suffix == ".ipynb":
            texts.append("\n".join("".join(c["source"]) for c in json.loads(raw)["cells"]))
        flat = [" ".join(re.sub(r"\s+#.*$", "", line).split()) for t in texts for line in t.splitlines()]
        joined = " ".join(" ".join(t.split()) for t in texts)
        held = [s for s in distinct if s in flat or s in joined]
        assert not held, f"{f.relative_to(out)} holds {held[:2]}"
    assert not (out / "kernels").exists() and not (out / "docs" / "notebooks").exists()
    assert not (out / "notebooks" / "assignments" / "teacher_key.md").exists()
    for p in (out / "uniad_mini" / "course" / "graded_tests").glob("*.py"):
        assert stripping.HIDDEN_BEGIN not in p.read_text()
    assert not grading.holds_hidden_tests(out / "uniad_mini" / "course" / "graded_tests")


def test_a_copy_with_solutions_is_the_source_byte_for_byte(solution):
    for src in (ROOT / "uniad_mini").rglob("*.py"):
        if "__pycache__" not in src.parts:
            assert (solution / src.relative_to(ROOT)).read_bytes() == src.read_bytes()


def test_the_student_copy_imports_cleanly_and_its_parts_raise_their_first_hint(student):
    out, _ = student
    code = ("import pkgutil, importlib, uniad_mini\n"
            "for m in pkgutil.walk_packages(uniad_mini.__path__, 'uniad_mini.'):\n"
            "    if m.name not in ('uniad_mini.__main__',): importlib.import_module(m.name)\n"
            "print(uniad_mini.__file__)\n"
            "from uniad_mini.neighbors import neighbor_mask\n"
            "try:\n    neighbor_mask(14, 14, 7)\nexcept NotImplementedError as e:\n    print('raised:', e)\n")
    env = {**os.environ, "PYTHONPATH": str(out)}
    proc = subprocess.run([sys.executable, "-c", code], cwd=out, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    where, raised = proc.stdout.splitlines()[:2]
    assert Path(where).resolve().is_relative_to(out.resolve())
    assert raised == f"raised: {hint('masks', 1)}"


def test_strip_refuses_a_non_empty_out_and_grade_one_folder_that_is_no_copy(tmp_path, capsys):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    assert cli.main(["course", "strip", str(tmp_path / "full")]) == 2
    assert cli.main(["course", "grade", str(tmp_path)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and "not an empty folder" in err[0] and "not a copy of the project" in err[1]
    with pytest.raises(CourseError, match="inside the project"):
        stripping.strip(ROOT, ROOT / "tests" / "student")


# ---- the assignment notebooks --------------------------------------------------------------------------------

NOTEBOOKS = sorted((ROOT / "notebooks" / "assignments").glob("[0-9][0-9]_*.ipynb"))


def test_the_notebooks_cover_every_assignment_ask_and_keep_their_answers_in_the_teachers_key():
    assert {a.notebook for a in ASSIGNMENTS} == {p.stem for p in NOTEBOOKS} and len(NOTEBOOKS) == 9
    key = (ROOT / "notebooks" / "assignments" / "teacher_key.md").read_text()
    assert "notebooks/assignments/teacher_key.md" in stripping.LEFT_OUT
    for path in NOTEBOOKS:
        nb = json.loads(path.read_text())
        first = "".join(nb["cells"][0]["source"])
        assert nb["cells"][0]["cell_type"] == "markdown" and "What you will learn" in first and "Runtime" in first
        text = {kind: "".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == kind)
                for kind in ("markdown", "code")}
        asks = text["markdown"].count("**Try this.**")
        assert asks >= 1 and "**Expected:**" not in text["markdown"], path.name  # the answers live in the key
        section = key.split(f"## {path.stem}")[1].split("\n## ")[0]
        assert section.count("**Answer:**") + section.count("(the derivation)") >= asks, path.name
        for a in ASSIGNMENTS:
            assert (f'check("{a.name}")' in text["code"]) == (a.notebook == path.stem), (path.name, a.name)
            assert (f'hint("{a.name}", 2)' in text["markdown"]) == (a.notebook == path.stem), (path.name, a.name)
        for cell in nb["cells"]:
            if cell["cell_type"] == "code":
                assert cell["outputs"] == [] and cell["execution_count"] is None, f"{path.name}: strip its outputs"


def execute(path, pythonpath, allow_errors=False):
    pytest.importorskip("ipykernel")
    nbformat = pytest.importorskip("nbformat")
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    env = {"UNIAD_NOTEBOOK_FAST": "1", "MPLBACKEND": "Agg", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(pythonpath)}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        NotebookClient(nb, timeout=600, kernel_name="python3", allow_errors=allow_errors,
                       resources={"metadata": {"path": str(path.parent)}}).execute()
    finally:
        for k, v in old.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    return "".join(o.get("text", "") for o in outputs), outputs


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_assignment_notebook_runs_with_full_marks_at_every_checkpoint(path):
    text, _ = execute(path, ROOT)
    for a in ASSIGNMENTS:
        if a.notebook == path.stem:
            assert f"full marks for {a.name}" in text
    assert "not yet:" not in text


@pytest.mark.slow
def test_in_the_student_copy_a_notebook_points_at_the_parts_and_its_checkpoints_score_zero(student):
    out, _ = student
    text, outputs = execute(out / "notebooks" / "assignments" / "01_masks_and_attention.ipynb", out, allow_errors=True)
    assert "neighbors.neighbor_mask: uniad_mini/neighbors.py, line" in text and f"hint: {hint('masks', 1)}" in text
    assert "| masks | neighbors.neighbor_mask | 0 / 2 | 0 / 4 |" in text  # the copy holds the visible tests only
    assert "not yet: masks / test_neighbor_mask_blocks_the_query_itself (0 / 2): not written yet:" in text
    assert any(o.get("ename") == "NotImplementedError" for o in outputs)  # the cells that use a part stop with its hint
