"""The grader (uniad_mini/course/grading.py, grading_runner.py, graded_tests/conftest.py, commands.py): one tree per
assignment, per-test points and feedback, the gradebook, the by-hand guard, and one class graded through the
command: the stripped copy scores 0 and exits non-zero, the solution scores 100, a part calling SDPA scores 0 on
that part and says why, edited tests change nothing, a syntax error, an endless loop, a failing import and
megabytes of output cost only their part, a folder that is no copy gets a row of zeros.

The class run (six copies, about 4 minutes on 2 shared cores) backs the slow tests; the rest is fast.
"""
import csv
import importlib.util
import json
import os
import re
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from uniad_mini.app import cli
from uniad_mini.course import grading, stripping
from uniad_mini.course.assignments import ASSIGNMENTS, BY_NAME
from uniad_mini.course.stripping import BEGIN

ROOT = Path(__file__).resolve().parents[2]
TESTS = ROOT / "uniad_mini" / "course" / "graded_tests"


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
    assert "graded_tests" not in {p.name for p in (tree / "uniad_mini" / "course").iterdir()}
    assert (tree / "uniad_mini" / "attention.py").read_text() == (ROOT / "uniad_mini" / "attention.py").read_text()


def test_a_student_copy_refuses_to_act_as_the_grader(student, monkeypatch):
    out, _ = student
    monkeypatch.setattr(grading, "TESTS", out / "uniad_mini" / "course" / "graded_tests")
    with pytest.raises(grading.CourseError, match="this installation is a student copy"):
        grading.grade_submission(out)


def test_grade_refuses_a_bad_timeout_and_two_submissions_of_one_name(tmp_path, capsys):
    for name in ("a", "b"):
        (tmp_path / name / "x").mkdir(parents=True)
        (tmp_path / name / "x" / "uniad_mini").mkdir()
        (tmp_path / name / "x" / "uniad_mini" / "__init__.py").write_text("")
    assert cli.main(["course", "grade", str(tmp_path / "a" / "x"), "--timeout", "0"]) == 2
    assert cli.main(["course", "grade", str(tmp_path / "a" / "x"), str(tmp_path / "b" / "x")]) == 2
    assert cli.main(["course", "grade", str(tmp_path / "a" / "x"), "--csv", str(tmp_path / "no" / "g.csv")]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 3 and all(line.startswith("uniad-mini course: error: ") for line in err)
    assert "--timeout" in err[0] and "two submissions are named 'x'" in err[1] and "its folder does not exist" in err[2]


def test_hint_and_parts_on_the_command_line(capsys):
    assert cli.main(["course", "hint", "auroc", "2"]) == 0 and cli.main(["course", "parts", "auroc"]) == 0
    out = capsys.readouterr().out
    assert BY_NAME["auroc"].api_hint in out and "metrics.auroc: uniad_mini/metrics.py, line" in out


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
    row = grading.mark(BY_NAME["masks"], ev)
    got = {r["test"]: (r["points"], r["feedback"]) for r in row["results"]}
    assert (row["points"], row["passed"], row["tests"]) == (2, 1, 4)
    assert got["test_neighbor_mask_matches_two_loops_on_rectangular_grids_and_windows"] == (
        0, "query 3 at (0, 3), key 4 at (0, 4): expected blocked, got visible; input: h=5, w=5, window=(3, 3)")
    assert got["test_interior_query_sees_147_keys_and_corner_sees_180"] == (0, "not written yet: the idea")
    assert got["test_an_even_window_reaches_as_far_as_the_odd_one_below_it"] == (0, "by hand: this part called x")
    table = grading.score_table([row])
    assert "| masks | neighbors.neighbor_mask | 1 / 4 | 2 / 8 |" in table and "| **total** |  | 1 / 4 | 2 / 8 |" in table
    assert grading.mark(BY_NAME["auroc"], [])["points"] == 0  # a test that never ran does not pass


def test_a_collection_error_and_a_stopped_process_say_why_for_every_test():
    ev = events("auroc", []) + [{"event": "collect_error", "assignment": "auroc",
                                 "message": 'File "metrics.py", line 3\nSyntaxError: invalid syntax'}]
    row = grading.mark(BY_NAME["auroc"], ev)
    assert row["points"] == 0 and all("SyntaxError" in r["feedback"] for r in row["results"])
    run = grading.Run(Path(os.devnull))
    run.add({"event": "begin", "assignment": "jitter"})
    run.add({"event": "start", "assignment": "jitter", "node": "test_graded_jitter.py::test_jitter_is_the_identity_when_off"})
    run.stop("ran past 3 s and did not stop (an endless loop?)")
    row = grading.mark(BY_NAME["jitter"], run.events)
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
    doctor(copies["broken"], "uniad_mini/scoring.py", ["anomaly_map"], "import no_such_module\nreturn rec")
    doctor(copies["broken"], "uniad_mini/neighbors.py", ["neighbor_mask"], "import os\nos._exit(3)")  # a crash
    f = copies["broken"] / "uniad_mini" / "backbone.py"  # megabytes of output, then the right answer
    f.write_text(f.read_text().replace("    size = taps[-1].shape[-2:]\n", "    print('x' * 5_000_000)\n"
                                       "    size = taps[-1].shape[-2:]\n"))
    for t in (copies["edited"] / "uniad_mini" / "course" / "graded_tests").glob("test_graded_*.py"):
        t.write_text("def test_anything():\n    assert True\n")  # the student's tests: all pass, all parts unwritten
    (base / "not_a_copy").mkdir()
    class_ = [student[0], solution, copies["sdpa"], copies["broken"], copies["edited"], base / "not_a_copy"]
    csv_path, json_path = base / "gradebook.csv", base / "grades.json"
    status = cli.main(["course", "grade", *map(str, class_), "--csv", str(csv_path), "--json", str(json_path),
                       "--timeout", "6"])
    kept = json.loads(json_path.read_text())
    assert kept["timeout_s"] == 6 and kept["tests_sha256"] == grading.tests_digest()
    grades = {s["submission"]: s for s in kept["submissions"]}
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
def test_a_syntax_error_an_endless_loop_a_crash_and_a_failing_import_cost_only_their_parts(graded_class):
    _, grades, _ = graded_class
    got = points(grades, "broken")
    lost = {"attention": grading.max_points(BY_NAME["attention"]), "jitter": grading.max_points(BY_NAME["jitter"]),
            "masks": grading.max_points(BY_NAME["masks"])}
    assert {a: got[a] for a in lost} == {"attention": 0, "jitter": 0, "masks": 0}
    assert all("the test process stopped during this test (exit status 3)" in f for f in feedback(grades, "broken", "masks"))
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


