"""The grader (uniad_mini/course/grading.py, grading_runner.py, worker.py, probes.py, graded_tests/conftest.py,
commands.py): one tree per assignment with the other parts unwritten, per-test points and feedback (a hidden test by
its category), the gradebook, the by-hand guard and the static check, and one class graded through the command: the
stripped copy scores 0 and exits non-zero, the solution scores 130, a part calling SDPA scores 0 on that part and
says why, edited tests change nothing, a syntax error, an endless loop, a failing import and megabytes of output
cost only their part, a folder that is no copy gets a row of zeros; and the cheats: a part that reads the
instructor's package or the hidden tests, starts a process, loops where the task says not to, and a package
`__init__.py` that patches the grader's guard and forges its log, each lose the points they touch.

The class run (seven copies, two at a time, a few minutes on 2 shared cores) backs the slow tests; the rest is fast.
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


# ---- the trees: each part graded on its own, the other parts unwritten ------------------------------------------


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


def test_a_tree_holds_the_students_part_and_the_other_parts_unwritten(solution, tmp_path):
    unwritten = grading.unwritten_package(ROOT / "uniad_mini", tmp_path / "unwritten")
    tree = grading.build_tree(solution / "uniad_mini", unwritten, BY_NAME["jitter"], tmp_path / "tree")
    text = (tree / "uniad_mini" / "transformer.py").read_text()
    assert text.count(BEGIN) == 1 and "def feature_jitter" in text  # jitter's own part, as the student wrote it
    assert text.count("raise NotImplementedError(") == 4  # the query, jitter_in_training and the two layers
    assert "graded_tests" not in {p.name for p in (tree / "uniad_mini" / "course").iterdir()}
    attention = (tree / "uniad_mini" / "attention.py").read_text()
    assert BEGIN not in attention and "raise NotImplementedError(" in attention  # nothing of the instructor's parts
    found = stripping.leaks(tree / "uniad_mini", stripping.solution_lines(ROOT))
    assert set(found) == {"transformer.py"} and not any("queries" in line for line in found["transformer.py"])


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
                           "conftest.PartFailed: not written yet: the idea"),
                          ("test_an_even_window_reaches_as_far_as_the_odd_one_below_it", "failed",
                           "conftest.PartFailed: by hand: this part called x")])
    row = grading.mark(BY_NAME["masks"], ev)
    got = {r["test"]: (r["points"], r["feedback"]) for r in row["results"]}
    assert (row["points"], row["passed"], row["tests"]) == (2, 1, 5)
    assert got["test_neighbor_mask_matches_two_loops_on_rectangular_grids_and_windows"] == (0, "wrong result")  # hidden
    assert got["test_interior_query_sees_147_keys_and_corner_sees_180"] == (0, "not written yet: the idea")
    assert got["test_an_even_window_reaches_as_far_as_the_odd_one_below_it"] == (0, "by hand: this part called x")
    table = grading.score_table([row])
    assert "| masks | neighbors.neighbor_mask | 1 / 5 | 2 / 8 |" in table and "| **total** |  | 1 / 5 | 2 / 8 |" in table
    assert grading.mark(BY_NAME["auroc"], [])["points"] == 0  # a test that never ran does not pass


def test_a_collection_error_and_a_stopped_process_say_why_for_every_test():
    ev = events("auroc", []) + [{"event": "collect_error", "assignment": "auroc",
                                 "message": 'File "metrics.py", line 3\nSyntaxError: invalid syntax'}]
    row = grading.mark(BY_NAME["auroc"], ev)
    assert row["points"] == 0 and all("SyntaxError" in r["feedback"] if r["label"] == r["test"] else
                                      r["feedback"] == "crashed" for r in row["results"])
    run = grading.Run(Path(os.devnull))
    run.add({"event": "begin", "assignment": "jitter"})
    run.add({"event": "start", "assignment": "jitter", "node": "test_graded_jitter.py::test_jitter_is_the_identity_when_off"})
    run.stop("this test ran past 3 s and did not stop (an endless loop?)")
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
    assert [r[-1] for r in table[1:]] == ["130", "108", "0"]
    grading.write_gradebook(tmp_path / "w.csv", {"ada": rows, "eve": "not a copy"}, {"ada": (7.5, 42, 1)})
    table = list(csv.reader(open(tmp_path / "w.csv")))
    assert table[0][-2:] == ["written", "total"] and table[1][-2:] == ["7.5", "137.5"] and table[2][-2:] == ["0", "0"]


def test_a_hidden_test_says_its_category_and_the_kind_of_failure_never_its_input():
    ev = events("scores", [("test_anomaly_map_is_channel_l2_upsampled_with_align_corners", "failed",
                            "AssertionError: the map at the corner (0, 0): expected 1.5, got 2; input: rec (2, 5, 4, 4)"),
                           ("test_image_score_is_max_of_the_pool_x_pool_average", "failed",
                            "conftest.PartFailed: RuntimeError: size of tensor a (27) must match (uniad_mini/scoring.py, "
                            "line 33)"),
                           ("test_anomaly_map_interpolates_between_tokens", "failed",
                            "conftest.PartFailed: RuntimeError: size of tensor a (27) (uniad_mini/scoring.py, line 33)")])
    got = {r["label"]: r["feedback"] for r in grading.mark(BY_NAME["scores"], ev)["results"] if not r["passed"]}
    assert got["hidden test (the map)"] == "wrong result"
    assert got["hidden test (the score)"] == "crashed: RuntimeError in uniad_mini/scoring.py, line 33"
    assert got["test_anomaly_map_interpolates_between_tokens"] == \
        "RuntimeError: size of tensor a (27) (uniad_mini/scoring.py, line 33)"  # a visible test: the whole line
    lines = "\n".join(grading.feedback_lines([grading.mark(BY_NAME["scores"], ev)]))
    assert "channel_l2" not in lines and "input" not in lines and "(27)" in lines


# ---- the by-hand guard, the line count and the static check ----------------------------------------------------


def load_conftest(monkeypatch, tree: Path):
    monkeypatch.setenv("UNIAD_GRADE_TREE", str(tree))
    spec = importlib.util.spec_from_file_location("graded_conftest", TESTS / "conftest.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_guard_refuses_pytorchs_attention_and_counts_the_lines_of_the_submission():
    from uniad_mini import metrics
    from uniad_mini.course import probes
    from uniad_mini.neighbors import neighbor_mask

    guard = probes.Guard(str(ROOT))
    q = torch.randn(1, 2, 6, 4)
    for call in (lambda: F.scaled_dot_product_attention(q, q, q), lambda: torch.ops.aten.scaled_dot_product_attention(q, q, q),
                 lambda: metrics.roc_curve([0.1, 0.9], [0, 1]), lambda: torch.nn.MultiheadAttention(4, 1)(q[0], q[0], q[0])):
        with pytest.raises(probes.ByHand, match="by hand: this part called"):
            with guard.on("write it", ("metrics.roc_curve",)):
                call()
    with guard.on("write it", ("metrics.roc_curve",), lines=60):  # the math by hand, the solution's parts: allowed
        (q @ q.transpose(-2, -1) / 2).softmax(-1) @ q
        assert metrics.auroc([0.1, 0.9], [0, 1]) == 1.0 and neighbor_mask(56, 56, 7).shape == (3136, 3136)
        with probes.paused():
            F.scaled_dot_product_attention(q, q, q)  # a stand-in may
    assert 0 < guard.lines <= 60 and sys.gettrace() is None  # 15 + 27 lines: the mask and the AUROC
    with pytest.raises(probes.Loops, match="without loops: this part ran more than 20 lines"):
        with guard.on("write it", (), lines=20):
            [metrics.auroc([0.1, 0.9], [0, 1]) for _ in range(20)]


def test_the_static_check_reads_the_parts_source_in_the_graders_process(monkeypatch, tmp_path):
    shutil_tree = tmp_path / "uniad_mini"
    shutil_tree.mkdir()
    for rel in ("attention.py", "metrics.py", "neighbors.py"):
        (shutil_tree / rel).write_text((ROOT / "uniad_mini" / rel).read_text())
    c = load_conftest(monkeypatch, tmp_path)
    assert c.static_refusal("attention", (), False) == "" and c.static_refusal("masks", (), True) == ""
    doctor(tmp_path, "uniad_mini/attention.py", ["attend_by_hand"], "f = getattr(F, 'scaled_dot_product_attention')\n"
           "return f(q, k, v)")
    assert "by hand: this part names scaled_dot_product_attention (uniad_mini/attention.py, line" in \
        c.static_refusal("attention", (), False)
    doctor(tmp_path, "uniad_mini/metrics.py", ["auroc"], "from sklearn.metrics import roc_auc_score\nreturn 0.5")
    assert "names sklearn" in c.static_refusal("auroc", (), False)
    doctor(tmp_path, "uniad_mini/neighbors.py", ["neighbor_mask"], "return torch.stack([torch.zeros(h * w) for _ in "
           "range(h * w)]) > 0")
    assert c.static_refusal("masks", (), False) == ""  # loops refuse only where the test asks for no loops
    assert c.static_refusal("masks", (), True).startswith("without loops: this part loops (uniad_mini/neighbors.py")


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
    for name, keep in (("sdpa", True), ("broken", True), ("edited", False), ("cheats", True)):
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
    cheat(copies["cheats"])
    (base / "not_a_copy").mkdir()
    class_ = [student[0], solution, copies["sdpa"], copies["broken"], copies["edited"], copies["cheats"],
              base / "not_a_copy"]
    csv_path, json_path = base / "gradebook.csv", base / "grades.json"
    status = cli.main(["course", "grade", *map(str, class_), "--csv", str(csv_path), "--json", str(json_path),
                       "--feedback", str(base / "feedback"), "--jobs", "2", "--timeout", "6"])
    kept = json.loads(json_path.read_text())
    assert kept["timeout_s"] == 6 and kept["tests_sha256"] == grading.tests_digest() and kept["max"] == 130
    grades = {s["submission"]: s for s in kept["submissions"]}
    return status, grades, list(csv.reader(open(csv_path))), base / "feedback"


def cheat(copy: Path):
    """Parts that reach for the instructor's package, the hidden tests, a process, loops; an __init__.py that patches
    the grader's guard and forges its log."""
    doctor(copy, "uniad_mini/neighbors.py", ["neighbor_mask"],
           f"import importlib.util\nspec = importlib.util.spec_from_file_location('theirs', "
           f"{str(ROOT / 'uniad_mini' / 'neighbors.py')!r})\ntheirs = importlib.util.module_from_spec(spec)\n"
           "spec.loader.exec_module(theirs)\nreturn theirs.neighbor_mask(h, w, window)")
    doctor(copy, "uniad_mini/attention.py", ["attend_by_hand"], "return F.scaled_dot_product_attention(q, k, v)")
    doctor(copy, "uniad_mini/transformer.py", ["feature_jitter"], "import subprocess\nsubprocess.run(['true'])\nreturn x")
    doctor(copy, "uniad_mini/scoring.py", ["anomaly_map"], "from pathlib import Path\n"
           "hidden = Path(__file__).resolve().parents[3] / 'tests' / 'test_graded_scores.py'\n"
           "raise RuntimeError(hidden.read_text()[:200])")
    doctor(copy, "uniad_mini/metrics.py", ["auroc"],  # right, by a loop over the anomalous scores
           "s, y = np.asarray(scores, dtype=float), np.asarray(labels).astype(bool)\nneg = np.sort(s[~y])\n"
           "twice = 0\nfor p in s[y]:\n    twice += int(np.searchsorted(neg, p, 'left') + np.searchsorted(neg, p, 'right'))\n"
           "return twice / (2 * int(y.sum()) * neg.size)")
    init = copy / "uniad_mini" / "__init__.py"
    init.write_text(init.read_text() + "\ntry:\n    import grader_probes\n"
                    "    grader_probes.Guard.refuse = lambda self, what: None\n"
                    "    grader_probes.Guard.count = lambda self, frame, event, arg: None\nexcept Exception:\n    pass\n"
                    "try:\n    from pathlib import Path as _P\n"
                    "    with open(_P(__file__).resolve().parents[3] / 'log.jsonl', 'a') as _f:\n"
                    "        _f.write('{\"event\": \"report\", \"assignment\": \"masks\", \"node\": \"x::test_neighbor_mask_'\n"
                    "                 'blocks_the_query_itself\", \"when\": \"call\", \"outcome\": \"passed\"}\\n')\n"
                    "except Exception:\n    pass\n")


def points(grades, name):
    return {r["assignment"]: r["points"] for r in grades[name]["assignments"]}


def feedback(grades, name, assignment):
    row = next(r for r in grades[name]["assignments"] if r["assignment"] == assignment)
    return [t["feedback"] for t in row["results"] if not t["passed"]]


@pytest.mark.slow
def test_the_stripped_copy_scores_zero_and_exits_non_zero(graded_class, student, monkeypatch, capsys):
    status, grades, _, _ = graded_class
    assert status == 1 and grades["student"]["total"] == 0
    assert all(f.startswith("not written yet: ") for a in ASSIGNMENTS for f in feedback(grades, "student", a.name))
    rows = grades["student"]["assignments"]
    monkeypatch.setattr(grading, "grade_submission", lambda path, timeout: rows)  # the command on the same rows
    assert cli.main(["course", "grade", str(student[0])]) == 1
    out = capsys.readouterr().out
    n = sum(len(grading.graded_tests(a)) for a in ASSIGNMENTS)
    assert f"| **total** |  | 0 / {n} | 0 / 130 |" in out and "not yet: masks / test_neighbor_mask_blocks_the_query_itself" in out


@pytest.mark.slow
def test_the_solution_scores_130_and_exits_zero(graded_class, solution, monkeypatch, capsys):
    _, grades, _, _ = graded_class
    assert grades["solution"]["total"] == 130
    rows = grades["solution"]["assignments"]
    monkeypatch.setattr(grading, "grade_submission", lambda path, timeout: rows)
    assert cli.main(["course", "grade", str(solution)]) == 0
    n = sum(len(grading.graded_tests(a)) for a in ASSIGNMENTS)
    assert f"| **total** |  | {n} / {n} | 130 / 130 |" in capsys.readouterr().out


@pytest.mark.slow
def test_an_attention_part_that_calls_sdpa_scores_zero_there_and_says_why(graded_class):
    _, grades, _, _ = graded_class
    got = points(grades, "sdpa")
    assert got["attention"] == 0 and sum(got.values()) == 130 - grading.max_points(BY_NAME["attention"])
    assert all("by hand: this part names scaled_dot_product_attention (uniad_mini/attention.py, line" in f
               for f in feedback(grades, "sdpa", "attention"))


@pytest.mark.slow
def test_edited_tests_in_the_copy_change_nothing(graded_class):
    _, grades, _, _ = graded_class
    assert grades["edited"]["total"] == 0


@pytest.mark.slow
def test_a_syntax_error_an_endless_loop_a_crash_and_a_failing_import_cost_only_their_parts(graded_class):
    _, grades, _, _ = graded_class
    got = points(grades, "broken")
    lost = {"attention": grading.max_points(BY_NAME["attention"]), "jitter": grading.max_points(BY_NAME["jitter"]),
            "masks": grading.max_points(BY_NAME["masks"])}
    assert {a: got[a] for a in lost} == {"attention": 0, "jitter": 0, "masks": 0}
    assert all("the part's process stopped during this test (exit status 3)" in f
               for f in feedback(grades, "broken", "masks"))
    assert all("SyntaxError" in f and "uniad_mini/attention.py, line" in f for f in feedback(grades, "broken", "attention"))
    assert all("this test ran past 6 s" in f for f in feedback(grades, "broken", "jitter"))
    scores = feedback(grades, "broken", "scores")  # anomaly_map's import fails; image_score is fine
    assert scores and all("ModuleNotFoundError" in f and "uniad_mini/scoring.py, line" in f for f in scores)
    assert "no_such_module" in scores[0] and 0 < got["scores"] < 10
    assert got["feature_stack"] == grading.max_points(BY_NAME["feature_stack"])  # 5 MB printed, then right
    others = {a.name for a in ASSIGNMENTS} - set(lost) - {"scores"}
    assert all(got[a] == grading.max_points(BY_NAME[a]) for a in others)


@pytest.mark.slow
def test_the_gradebook_of_a_class_and_a_folder_that_is_no_copy(graded_class):
    _, grades, table, _ = graded_class
    assert table[0] == ["submission"] + [a.name for a in ASSIGNMENTS] + ["total"]
    totals = {r[0]: float(r[-1]) for r in table[1:]}
    assert totals == {name: grades[name]["total"] for name in totals}
    assert set(totals) == {"student", "solution", "sdpa", "broken", "edited", "cheats", "not_a_copy"}
    assert totals["solution"] == 130 and totals["student"] == totals["edited"] == totals["not_a_copy"] == 0
    assert "not a copy of the project" in grades["not_a_copy"]["error"]




@pytest.mark.slow
def test_each_cheat_loses_the_points_it_touches_and_says_why(graded_class):
    _, grades, _, _ = graded_class
    got = points(grades, "cheats")
    lost = {"masks": 8, "attention": 12, "jitter": 8, "scores": 6, "auroc": 2}  # the forged log and the patched
    assert {a: grading.max_points(BY_NAME[a]) - got[a] for a in lost} == lost  # guard changed nothing
    assert sum(got.values()) == 130 - sum(lost.values())
    said = {a: " / ".join(feedback(grades, "cheats", a)) for a in lost}
    assert f"the grader does not let a part open {ROOT / 'uniad_mini' / 'neighbors.py'}" in said["masks"]
    assert "names scaled_dot_product_attention" in said["attention"]
    assert "the grader does not let a part call subprocess.Popen" in said["jitter"]
    assert "the grader does not let a part open" in said["scores"] and "test_graded_scores.py" in said["scores"]
    assert said["auroc"].startswith("without loops: this part loops (uniad_mini/metrics.py, line")


@pytest.mark.slow
def test_one_feedback_file_per_submission_hidden_tests_by_category(graded_class):
    _, grades, _, folder = graded_class
    assert sorted(p.stem for p in folder.glob("*.md")) == sorted(grades)
    text = (folder / "student.md").read_text()
    assert text.startswith("## student: 0 / 130") and "not yet: masks / hidden test (even windows) (0 / 1)" in text
    hidden = [t for a in ASSIGNMENTS for t in grading.graded_tests(a) if t.hidden]
    assert hidden and not any(t.name in (folder / f"{name}.md").read_text() for t in hidden for name in grades)
    assert "not graded: " in (folder / "not_a_copy.md").read_text()


def test_answers_then_grade_with_marks_puts_the_written_points_in_the_gradebook(student, tmp_path, monkeypatch, capsys):
    out, _ = student
    assert cli.main(["course", "answers", str(out), "--out", str(tmp_path / "marking")]) == 0
    marks = list(csv.DictReader(open(tmp_path / "marking" / "marks.csv")))
    assert marks and {m["submission"] for m in marks} == {out.name}
    for m in marks[:2]:
        m["points"] = m["max_points"]  # the teacher marks two answers in full
    with open(tmp_path / "marking" / "marks.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(marks[0]))
        w.writeheader(), w.writerows(marks)
    rows = [{"assignment": a.name, "title": a.title, "functions": list(a.functions), "points": 0,
             "max_points": grading.max_points(a), "passed": 0, "tests": 1, "results": []} for a in ASSIGNMENTS]
    monkeypatch.setattr(grading, "grade_submission", lambda path, timeout: rows)
    status = cli.main(["course", "grade", str(out), "--marks", str(tmp_path / "marking" / "marks.csv"),
                       "--csv", str(tmp_path / "g.csv"), "--feedback", str(tmp_path / "fb")])
    table = list(csv.reader(open(tmp_path / "g.csv")))
    got = float(marks[0]["max_points"]) + float(marks[1]["max_points"])
    assert status == 1 and table[0][-2:] == ["written", "total"] and float(table[1][-1]) == got
    assert f"written answers, marked by hand: {got:g} / " in (tmp_path / "fb" / f"{out.name}.md").read_text()
    assert cli.main(["course", "grade", str(out), "--jobs", "0"]) == 2
