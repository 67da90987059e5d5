"""The written answers (uniad_mini/course/answers.py): the answer cells of the assignment notebooks, collected from
submissions into answers.md and a marks.csv template, the teacher's marks read back and checked, and the totals.

Submissions are built in tmp_path: notebooks/assignments/ copied, answers written into the answer cells as JSON.
"""
import argparse
import csv
import json
import re
import shutil
from pathlib import Path

import pytest

from uniad_mini.course import answers
from uniad_mini.course.answers import PLACEHOLDER, collect, questions, read_marks, written_points
from uniad_mini.course.assignments import CourseError

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = sorted((ROOT / "notebooks" / "assignments").glob("[0-9][0-9]_*.ipynb"))
QS = questions()
IDS = [q.grade_id for q in QS]
MAX = sum(q.points for q in QS)


def submission(tmp_path, name, written=None):
    """A copy of the assignment notebooks under tmp_path/name whose answer cells hold `written` {grade_id: text}."""
    folder = tmp_path / name / "notebooks" / "assignments"
    folder.parent.mkdir(parents=True)
    shutil.copytree(ROOT / "notebooks" / "assignments", folder)
    for path in folder.glob("*.ipynb"):
        nb = json.loads(path.read_text())
        for cell in nb["cells"]:
            gid = cell["metadata"].get("nbgrader", {}).get("grade_id")
            if gid in (written or {}):
                cell["source"] = written[gid].splitlines(keepends=True)
        path.write_text(json.dumps(nb, indent=1) + "\n")
    return tmp_path / name


def section(md, grade_id):
    return md.split(f"\n## {grade_id} (")[1].split("\n## ")[0]


def marks_rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def write_rows(path, rows):
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=answers.COLUMNS)
        w.writeheader()
        w.writerows(rows)


# ---- the answer cells of the notebooks ---------------------------------------------------------------------------


def test_every_answer_cell_has_a_unique_grade_id_and_points_and_follows_its_question():
    seen, asks = set(), 0
    for path in NOTEBOOKS:
        cells = json.loads(path.read_text())["cells"]
        for i, cell in enumerate(cells):
            text = "".join(cell["source"])
            if "**Try this.**" in text:
                asks += 1
                assert "nbgrader" in cells[i + 1]["metadata"], f"{path.name} cell {i}: a question without answer cell"
            meta = cell["metadata"].get("nbgrader")
            if meta is None:
                continue
            gid, points = meta["grade_id"], meta["points"]
            assert meta == {"grade": True, "solution": True, "locked": False, "task": False, "grade_id": gid,
                            "points": points, "schema_version": 3}, (path.name, gid)
            assert cell["cell_type"] == "markdown" and text == PLACEHOLDER, (path.name, gid)
            assert gid not in seen and gid.startswith(path.name[:2] + "-"), gid
            assert isinstance(points, int) and not isinstance(points, bool) and points > 0, gid
            seen.add(gid)
            question = "".join(cells[i - 1]["source"])
            assert i > 0 and cells[i - 1]["cell_type"] == "markdown" and "nbgrader" not in cells[i - 1]["metadata"]
            assert ("**Try this.**" in question or "derivation" in question) and \
                f"({points} point{'s' if points > 1 else ''})" in question, gid  # the points the student is told
    assert seen == set(IDS) and asks == len(IDS) - 1  # and the derivation of 06
    assert [q.grade_id for q in QS if q.points > 4] == ["06-derivation"]


def test_questions_reads_the_text_of_the_cell_before_each_answer_cell():
    q = next(q for q in QS if q.grade_id == "02-shared-query")
    assert q.notebook == "02_jitter_and_layerwise_query.ipynb" and q.points == 2
    assert q.text.startswith("> **Try this.** Run `net, starts, outs = decoder_starts(layerwise=False)`")
    assert next(q for q in QS if q.grade_id == "06-derivation").text.startswith("## The derivation")


# ---- collect ---------------------------------------------------------------------------------------------------


def test_collect_puts_each_answer_under_its_question_and_submission(tmp_path):
    ada = submission(tmp_path, "ada", {"01-corner-row": "A 2 x 2 block:\nthe window is cut at the edge.",
                                       "06-derivation": "E_k = -(I - 2 lr Sigma / C)^k"})
    bob = submission(tmp_path, "bob", {"01-corner-row": f"{PLACEHOLDER}\n\nfour keys", "06-derivation": "  \n"})
    done = collect([ada, bob], tmp_path / "out")
    assert done["questions"] == len(QS) and done["submissions"] == 2 and done["empty"] == 2 * len(QS) - 3
    md = (tmp_path / "out" / "answers.md").read_text()
    assert [line[3:].split(" (")[0] for line in md.splitlines() if line.startswith("## ")] == IDS
    corner = section(md, "01-corner-row")
    assert "**Try this.** Print `m[0].view(5, 5).int()`" in corner
    assert "### ada\n\nA 2 x 2 block:\nthe window is cut at the edge.\n" in corner
    assert "### bob\n\nfour keys\n" in corner  # the placeholder left above an answer is dropped
    derivation = section(md, "06-derivation")
    assert "### ada\n\nE_k = -(I - 2 lr Sigma / C)^k" in derivation and "### bob\n\n(no answer)" in derivation
    assert "> ## The derivation" in derivation  # the question quoted: its heading does not break the sections
    assert "### ada\n\n(no answer)" in section(md, "04-ties") and PLACEHOLDER not in md
    assert "\n## 06-derivation (06_gd_closed_form.ipynb, 8 points)\n" in md
    assert "\n## 09-demo (09_unified_vs_per_class.ipynb, 1 point)\n" in md


def test_marks_csv_is_a_template_row_per_question_and_submission(tmp_path):
    collect([submission(tmp_path, "ada"), submission(tmp_path, "bob")], tmp_path / "out")
    with open(tmp_path / "out" / "marks.csv", newline="") as f:
        assert next(csv.reader(f)) == list(answers.COLUMNS)
    rows = marks_rows(tmp_path / "out" / "marks.csv")
    assert [(r["grade_id"], r["submission"]) for r in rows] == [(g, s) for g in IDS for s in ("ada", "bob")]
    assert all(r["points"] == r["comment"] == "" for r in rows)
    assert {r["grade_id"]: int(r["max_points"]) for r in rows} == {q.grade_id: q.points for q in QS}
    assert read_marks(tmp_path / "out" / "marks.csv") == {s: dict.fromkeys(IDS) for s in ("ada", "bob")}


def test_the_instructors_own_notebooks_give_no_answer_anywhere(tmp_path):
    done = collect([ROOT], tmp_path / "out")
    md = (tmp_path / "out" / "answers.md").read_text()
    assert done["empty"] == len(QS) == md.count("\n(no answer)\n")


def test_collect_refuses_to_overwrite_a_marked_marks_csv(tmp_path):
    ada, out = submission(tmp_path, "ada", {"04-ties": "0.5 and 0.0"}), tmp_path / "out"
    collect([ada], out)
    collect([ada], out)  # nothing marked yet: written again
    rows = marks_rows(out / "marks.csv")
    rows[0]["points"] = "1"
    write_rows(out / "marks.csv", rows)
    before = (out / "marks.csv").read_text()
    with pytest.raises(CourseError, match=re.escape(str(out / "marks.csv")) + " already holds marks"):
        collect([ada], out)
    assert (out / "marks.csv").read_text() == before


def test_missing_unreadable_notebooks_and_a_deleted_answer_cell_are_shown_not_raised(tmp_path):
    empty = tmp_path / "cy"
    empty.mkdir()
    dan = submission(tmp_path, "dan", {"01-corner-row": "a corner"})
    (dan / "notebooks" / "assignments" / "02_jitter_and_layerwise_query.ipynb").write_text("{not json")
    path = dan / "notebooks" / "assignments" / "03_features_and_scores.ipynb"
    nb = json.loads(path.read_text())
    nb["cells"] = [c for c in nb["cells"] if c["metadata"].get("nbgrader", {}).get("grade_id") != "03-one-pixel"]
    path.write_text(json.dumps(nb))
    done = collect([empty, dan], tmp_path / "out")
    md = (tmp_path / "out" / "answers.md").read_text()
    assert all("### cy\n\n(notebook missing)" in section(md, g) for g in IDS)
    assert "### dan\n\n(notebook unreadable)" in section(md, "02-shared-query")
    assert "### dan\n\n(answer cell missing)" in section(md, "03-one-pixel")
    assert "### dan\n\na corner" in section(md, "01-corner-row") and done["empty"] == 2 * len(QS) - 1


def test_collect_refuses_a_path_that_is_no_folder_and_two_submissions_of_one_name(tmp_path):
    with pytest.raises(CourseError, match="is not a folder"):
        collect([tmp_path / "nobody"], tmp_path / "out")
    a, b = submission(tmp_path / "x", "ada"), submission(tmp_path / "y", "ada")
    with pytest.raises(CourseError, match="two submissions are named 'ada'"):
        collect([a, b], tmp_path / "out")


# ---- the teacher's marks -----------------------------------------------------------------------------------------


def marked(tmp_path, changes):
    """marks.csv of ada and bob with `changes` {(submission, grade_id): points}."""
    collect([submission(tmp_path, "ada"), submission(tmp_path, "bob")], tmp_path / "out")
    rows = marks_rows(tmp_path / "out" / "marks.csv")
    for r in rows:
        r["points"] = changes.get((r["submission"], r["grade_id"]), "")
    write_rows(tmp_path / "out" / "marks.csv", rows)
    return tmp_path / "out" / "marks.csv"


def test_read_marks_and_written_points_total_what_is_marked(tmp_path):
    path = marked(tmp_path, {("ada", "01-corner-row"): "2", ("ada", "06-derivation"): "6.5", ("bob", "04-ties"): "0"})
    marks = read_marks(path)
    assert marks["ada"]["01-corner-row"] == 2 and marks["ada"]["06-derivation"] == 6.5
    assert marks["ada"]["04-ties"] is None and marks["bob"]["04-ties"] == 0
    assert written_points(marks) == {"ada": (8.5, MAX, len(QS) - 2), "bob": (0, MAX, len(QS) - 1)}


@pytest.mark.parametrize("grade_id, points, message", [
    ("01-corner-row", "3", "points 3 is outside 0 to 2 (the max of 01-corner-row)"),
    ("06-derivation", "-1", "points -1 is outside 0 to 8"),
    ("04-ties", "two", "points 'two' is not a number; write 0 to 2 or leave it empty"),
    ("99-nope", "1", "unknown grade_id '99-nope'"),
])
def test_read_marks_names_the_file_the_row_and_what_to_fix(tmp_path, grade_id, points, message):
    path = marked(tmp_path, {})
    rows = marks_rows(path)
    i = next((i for i, r in enumerate(rows) if r["grade_id"] == grade_id and r["submission"] == "bob"), 4)
    rows[i].update(grade_id=grade_id, points=points)
    write_rows(path, rows)
    with pytest.raises(CourseError) as e:
        read_marks(path)
    assert str(e.value).startswith(f"{path}, row {i + 2}") and message in str(e.value), str(e.value)
    assert "\n" not in str(e.value)


def test_read_marks_refuses_a_row_twice_and_a_file_without_the_columns(tmp_path):
    path = marked(tmp_path, {})
    rows = marks_rows(path)
    write_rows(path, rows + [rows[0]])
    with pytest.raises(CourseError, match=f"row {len(rows) + 2}: a second row for ada / {IDS[0]}"):
        read_marks(path)
    path.write_text("name,score\nada,1\n")
    with pytest.raises(CourseError, match="no column 'submission'"):
        read_marks(path)


def test_the_course_answers_command_prints_what_it_wrote(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    answers.add_parser(parser.add_subparsers(dest="action"))
    ada = submission(tmp_path, "ada", {"04-ties": "0.5, then 0"})
    args = parser.parse_args(["answers", str(ada), str(ROOT), "--out", str(tmp_path / "out")])
    assert answers.run(args) == 0
    out = capsys.readouterr().out
    assert str(tmp_path / "out" / "answers.md") in out and str(tmp_path / "out" / "marks.csv") in out
    assert f"{len(QS)} questions, 2 submissions; {2 * len(QS) - 1} of {2 * len(QS)} answers empty" in out
