"""The course (uniad_mini/commands/: assignments.py, stripping.py, grading.py, grading_runner.py, course.py): the
parts are marked, the student copy gives no solution away, and the grader grades with the instructor's tests.

Fast tests check the table, strip, the solution search, the per-assignment trees, scoring, the gradebook and the
by-hand guard. One class grading run (several copies, a few minutes on 2 cores) backs the slow tests: the stripped
copy scores 0 and exits non-zero, the solution scores 100, a part calling SDPA scores 0 on that part, edited tests
change nothing, a syntax error, an endless loop, a failing import and megabytes of output cost only their part.
"""
import csv
import difflib
import importlib.util
import inspect
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from uniad_mini.commands import cli, grading, stripping
from uniad_mini.commands.assignments import ASSIGNMENTS, BY_NAME, hint
from uniad_mini.commands.stripping import BEGIN, END, HINT, CourseError

ROOT = Path(__file__).resolve().parents[1]
TESTS = ROOT / "uniad_mini" / "commands" / "course_tests"


def resolve(qualname):
    import importlib

    parts = qualname.split(".")
    for i in range(len(parts) - 1, 0, -1):
        try:
            obj = importlib.import_module("uniad_mini." + ".".join(parts[:i]))
        except ImportError:
            continue
        for attr in parts[i:]:
            obj = getattr(obj, attr)
        return obj


@pytest.fixture(scope="module")
def student(tmp_path_factory):
    out = tmp_path_factory.mktemp("course") / "student"
    return out, stripping.strip(ROOT, out)


@pytest.fixture(scope="module")
def solution(tmp_path_factory):
    out = tmp_path_factory.mktemp("course") / "solution"
    stripping.strip(ROOT, out, keep_solutions=True)
    return out


# ---- the table of assignments --------------------------------------------------------------------------------


def test_ten_assignments_each_part_one_marked_block_with_a_first_hint_and_100_points():
    assert len(ASSIGNMENTS) >= 6 and {"training_step", "layer_wiring", "gd_closed_form"} <= set(BY_NAME)
    assert sum(grading.max_points(a) for a in ASSIGNMENTS) == 100
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
        if "course_tests" in rel.parts or "__pycache__" in rel.parts:
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
                       if "course_tests" not in f.parts for x in re.sub(rf"^\s*{BEGIN}\n.*?^\s*{END}", "",
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
    for p in (out / "uniad_mini" / "commands" / "course_tests").glob("*.py"):
        assert stripping.HIDDEN_BEGIN not in p.read_text()
    assert not grading.holds_hidden_tests(out / "uniad_mini" / "commands" / "course_tests")


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


# ---- the trees: each part graded against the instructor's other parts -----------------------------------------


def test_function_span_reads_indentation_so_a_file_that_does_not_compile_still_splits():
    text = ("class A:\n    def f(self):\n        return (\n\n    def g(self):\n        return 2\n\n\n"
            "def f():\n    return 3\n")
    lines = text.splitlines(keepends=True)
    assert grading.function_span(lines, ["A", "f"]) == (1, 3)
    assert grading.function_span(lines, ["A", "g"]) == (4, 6)
    assert grading.function_span(lines, ["f"]) == (8, 10)
    assert grading.function_span(lines, ["A", "h"]) is None
    fixed = grading.with_functions_of(text, "class A:\n    def f(self):\n        return 1\n", ["A", "f"])
    compile(fixed, "x.py", "exec")
    assert "return 1" in fixed and "return 2" in fixed and "return 3" in fixed


def test_a_tree_takes_the_other_assignments_functions_from_the_instructor(student, tmp_path):
    out, _ = student
    tree = grading.build_tree(out / "uniad_mini", ROOT / "uniad_mini", BY_NAME["jitter"], tmp_path)
    text = (tree / "uniad_mini" / "transformer.py").read_text()
    assert text.count(BEGIN) == 4 and text.count("raise NotImplementedError(") == 1  # jitter's own part stays open
    assert "course_tests" not in {p.name for p in (tree / "uniad_mini" / "commands").iterdir()}
    assert (tree / "uniad_mini" / "attention.py").read_text() == (ROOT / "uniad_mini" / "attention.py").read_text()


# ---- scoring --------------------------------------------------------------------------------------------------


def events(a, outcomes):
    out = [{"event": "begin", "assignment": a, "package": "/x/uniad_mini/__init__.py"}]
    for node, outcome, message in outcomes:
        out.append({"event": "report", "assignment": a, "node": f"test_graded_{a}.py::{node}", "when": "call",
                    "outcome": outcome, "message": message})
    return out


def test_points_per_test_a_parametrised_test_passes_only_when_every_case_passes():
    ev = events("masks", [("test_neighbor_mask_blocks_the_query_itself", "passed", ""),
                          ("test_neighbor_mask_matches_two_loops_on_rectangular_grids_and_windows[a]", "passed", ""),
                          ("test_neighbor_mask_matches_two_loops_on_rectangular_grids_and_windows[b]", "failed",
                           "AssertionError: query 3 at (0, 3), key 4 at (0, 4): expected blocked, got visible; "
                           "input: h=5, w=5, window=(3, 3)"),
                          ("test_interior_query_sees_147_keys_and_corner_sees_180", "failed",
                           "NotImplementedError: the idea"),
                          ("test_an_even_window_reaches_as_far_as_the_odd_one_below_it", "failed",
                           "conftest.ByHand: by hand: this part called x")])
    row = grading.score(BY_NAME["masks"], ev)
    got = {r["test"]: (r["points"], r["feedback"]) for r in row["results"]}
    assert (row["points"], row["passed"], row["tests"]) == (2, 1, 4)
    assert got["test_neighbor_mask_matches_two_loops_on_rectangular_grids_and_windows"] == (
        0, "query 3 at (0, 3), key 4 at (0, 4): expected blocked, got visible; input: h=5, w=5, window=(3, 3)")
    assert got["test_interior_query_sees_147_keys_and_corner_sees_180"] == (0, "not written yet: the idea")
    assert got["test_an_even_window_reaches_as_far_as_the_odd_one_below_it"] == (0, "by hand: this part called x")
    table = grading.score_table([row])
    assert "| masks | neighbors.neighbor_mask | 1 / 4 | 2 / 8 |" in table and "| **total** |  | 1 / 4 | 2 / 8 |" in table
    assert grading.score(BY_NAME["auroc"], [])["points"] == 0  # a test that never ran does not pass


def test_a_collection_error_and_a_stopped_process_say_why_for_every_test():
    ev = events("auroc", []) + [{"event": "collect_error", "assignment": "auroc",
                                 "message": 'File "metrics.py", line 3\nSyntaxError: invalid syntax'}]
    row = grading.score(BY_NAME["auroc"], ev)
    assert row["points"] == 0 and all("SyntaxError" in r["feedback"] for r in row["results"])
    run = grading.Run(Path(os.devnull))
    run.add({"event": "begin", "assignment": "jitter"})
    run.add({"event": "start", "assignment": "jitter", "node": "test_graded_jitter.py::test_jitter_is_the_identity_when_off"})
    run.stop("ran past 3 s and did not stop (an endless loop?)")
    row = grading.score(BY_NAME["jitter"], run.events)
    first = row["results"][0]
    assert first["test"] == "test_jitter_is_the_identity_when_off" and "endless loop" in first["feedback"]


def test_the_gradebook_has_a_row_per_submission_a_column_per_assignment_and_a_total(tmp_path):
    rows = [{"assignment": a.name, "points": grading.max_points(a)} for a in ASSIGNMENTS]
    half = [dict(r, points=0 if r["assignment"] in ("attention", "auroc") else r["points"]) for r in rows]
    grading.write_gradebook(tmp_path / "g.csv", {"ada": rows, "bob": half, "eve": "not a copy of the project"})
    table = list(csv.reader(open(tmp_path / "g.csv")))
    assert table[0] == ["submission"] + [a.name for a in ASSIGNMENTS] + ["total"]
    assert [r[0] for r in table[1:]] == ["ada", "bob", "eve"]
    assert [r[-1] for r in table[1:]] == ["100", "78", "0"]


# ---- the by-hand guard ------------------------------------------------------------------------------------------


def load_conftest():
    spec = importlib.util.spec_from_file_location("graded_conftest", TESTS / "conftest.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_guard_refuses_pytorchs_attention_and_lets_the_math_by_hand_through():
    c = load_conftest()
    guard = c._Guard("write it", ("metrics.roc_curve",))
    q = torch.randn(1, 2, 6, 4)
    by_hand = (q @ q.transpose(-2, -1) / 2).softmax(-1) @ q
    for call in (lambda: F.scaled_dot_product_attention(q, q, q),
                 lambda: torch.ops.aten.scaled_dot_product_attention(q, q, q),
                 lambda: torch.nn.functional.multi_head_attention_forward):
        with c._Functions(guard), c._Kernels(guard):
            if call is not None and call.__code__.co_names[-1] == "multi_head_attention_forward":
                continue
            with pytest.raises(c.ByHand, match="by hand: this part called .*scaled_dot_product"):
                call()
            torch.testing.assert_close((q @ q.transpose(-2, -1) / 2).softmax(-1) @ q, by_hand)
    from uniad_mini import metrics

    sys.settrace(guard.trace)
    try:
        with pytest.raises(c.ByHand, match="the project's own metrics.roc_curve"):
            metrics.roc_curve([0.1, 0.9], [0, 1])
    finally:
        sys.settrace(None)
    assert metrics.auroc([0.1, 0.9], [0, 1]) == 1.0


# ---- one class graded (slow: a few minutes on 2 cores) --------------------------------------------------------


def course_main(argv):
    import argparse

    from uniad_mini.commands import course

    p = argparse.ArgumentParser(prog="uniad-mini")
    course.add_parser(p.add_subparsers(dest="command"))
    args = p.parse_args(argv)
    return args.func(args)


def doctor(path: Path, rel: str, qualname: list[str], body: str):
    """Replace the function `qualname` of path/rel by `body` (its def line kept)."""
    f = path / rel
    lines = f.read_text().splitlines(keepends=True)
    start, end = grading.function_span(lines, qualname)
    indent = re.match(r"\s*", lines[start]).group(0) + "    "
    new = [lines[start]] + [indent + b + "\n" for b in body.splitlines()]
    f.write_text("".join(lines[: start + 1 if lines[start].rstrip().endswith(":") else start] + new[1:] + lines[end:]))


@pytest.fixture(scope="module")
def graded_class(tmp_path_factory, student, solution):
    base = tmp_path_factory.mktemp("class")
    copies = {}
    for name, keep in (("sdpa", True), ("broken", True), ("edited", False)):
        copies[name] = base / name
        stripping.strip(ROOT, copies[name], keep_solutions=keep)
    doctor(copies["sdpa"], "uniad_mini/attention.py", ["attend_by_hand"],
           "return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p)")
    doctor(copies["broken"], "uniad_mini/attention.py", ["attend_by_hand"], "scores = (q @ k.transpose(-2, -1)\nreturn")
    doctor(copies["broken"], "uniad_mini/transformer.py", ["feature_jitter"], "while True:\n    pass")
    doctor(copies["broken"], "uniad_mini/evaluation.py", ["anomaly_map"], "import no_such_module\nreturn rec")
    f = copies["broken"] / "uniad_mini" / "backbone.py"  # megabytes of output, then the right answer
    f.write_text(f.read_text().replace("    size = taps[-1].shape[-2:]\n", "    print('x' * 5_000_000)\n"
                                       "    size = taps[-1].shape[-2:]\n"))
    for t in (copies["edited"] / "uniad_mini" / "commands" / "course_tests").glob("test_graded_*.py"):
        t.write_text("def test_anything():\n    assert True\n")  # the student's tests: all pass, all parts unwritten
    (base / "not_a_copy").mkdir()
    class_ = [student[0], solution, copies["sdpa"], copies["broken"], copies["edited"], base / "not_a_copy"]
    csv_path, json_path = base / "gradebook.csv", base / "grades.json"
    status = course_main(["course", "grade", *map(str, class_), "--csv", str(csv_path), "--json", str(json_path),
                          "--timeout", "6"])
    grades = {s["submission"]: s for s in json.loads(json_path.read_text())["submissions"]}
    return status, grades, list(csv.reader(open(csv_path)))


def points(grades, name):
    return {r["assignment"]: r["points"] for r in grades[name]["assignments"]}


def feedback(grades, name, assignment):
    row = next(r for r in grades[name]["assignments"] if r["assignment"] == assignment)
    return [t["feedback"] for t in row["results"] if not t["passed"]]


@pytest.mark.slow
def test_the_stripped_copy_scores_zero_and_exits_non_zero(graded_class, student, monkeypatch, capsys):
    status, grades, _ = graded_class
    assert status == 1 and grades["student"]["total"] == 0
    assert all(f.startswith("not written yet: ") for a in ASSIGNMENTS for f in feedback(grades, "student", a.name))
    rows = grades["student"]["assignments"]
    monkeypatch.setattr(grading, "grade_submission", lambda path, timeout: rows)  # the command on the same rows
    assert cli.main(["course", "grade", str(student[0])]) == 1
    out = capsys.readouterr().out
    assert "| **total** |  | 0 / 43 | 0 / 100 |" in out and "not yet: masks / test_neighbor_mask_blocks_the_query_itself" in out


@pytest.mark.slow
def test_the_solution_scores_100_and_exits_zero(graded_class, solution, monkeypatch, capsys):
    _, grades, _ = graded_class
    assert grades["solution"]["total"] == 100
    assert all(Path(r["package"]).name == "__init__.py" for r in grades["solution"]["assignments"])
    rows = grades["solution"]["assignments"]
    monkeypatch.setattr(grading, "grade_submission", lambda path, timeout: rows)
    assert cli.main(["course", "grade", str(solution)]) == 0
    assert "| **total** |  | 43 / 43 | 100 / 100 |" in capsys.readouterr().out


@pytest.mark.slow
def test_an_attention_part_that_calls_sdpa_scores_zero_there_and_says_why(graded_class):
    _, grades, _ = graded_class
    got = points(grades, "sdpa")
    assert got["attention"] == 0 and sum(got.values()) == 100 - grading.max_points(BY_NAME["attention"])
    assert all("by hand: this part called torch.nn.functional.scaled_dot_product_attention" in f
               for f in feedback(grades, "sdpa", "attention"))


@pytest.mark.slow
def test_edited_tests_in_the_copy_change_nothing(graded_class):
    _, grades, _ = graded_class
    assert grades["edited"]["total"] == 0


@pytest.mark.slow
def test_a_syntax_error_an_endless_loop_and_a_failing_import_cost_only_their_parts(graded_class):
    _, grades, _ = graded_class
    got = points(grades, "broken")
    lost = {"attention": grading.max_points(BY_NAME["attention"]), "jitter": grading.max_points(BY_NAME["jitter"])}
    assert {a: got[a] for a in lost} == {"attention": 0, "jitter": 0}
    assert all("SyntaxError" in f or "was never closed" in f for f in feedback(grades, "broken", "attention"))
    assert all("ran past 6 s" in f for f in feedback(grades, "broken", "jitter"))
    scores = feedback(grades, "broken", "scores")  # anomaly_map's import fails; image_score is fine
    assert scores and all("no_such_module" in f for f in scores) and 0 < got["scores"] < 10
    assert got["feature_stack"] == grading.max_points(BY_NAME["feature_stack"])  # 5 MB printed, then right
    others = {a.name for a in ASSIGNMENTS} - set(lost) - {"scores"}
    assert all(got[a] == grading.max_points(BY_NAME[a]) for a in others)


@pytest.mark.slow
def test_the_gradebook_of_a_class_and_a_folder_that_is_no_copy(graded_class):
    _, grades, table = graded_class
    assert table[0] == ["submission"] + [a.name for a in ASSIGNMENTS] + ["total"]
    totals = {r[0]: float(r[-1]) for r in table[1:]}
    assert totals == {name: grades[name]["total"] for name in totals}
    assert set(totals) == {"student", "solution", "sdpa", "broken", "edited", "not_a_copy"}
    assert totals["solution"] == 100 and totals["student"] == totals["edited"] == totals["not_a_copy"] == 0
    assert "not a copy of the project" in grades["not_a_copy"]["error"]


# ---- the assignment notebooks --------------------------------------------------------------------------------

NOTEBOOKS = sorted((ROOT / "notebooks" / "assignments").glob("[0-9][0-9]_*.ipynb"))


def test_the_notebooks_cover_every_assignment_ask_and_keep_their_answers_in_the_teachers_key():
    assert {a.notebook for a in ASSIGNMENTS} == {p.stem for p in NOTEBOOKS} and len(NOTEBOOKS) == 6
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
