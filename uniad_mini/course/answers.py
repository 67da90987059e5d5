"""The course's written answers (implements no part of the paper): the assignment notebooks' "Try this" questions
and assignment 6's derivation, collected from the students' copies for a teacher to mark by hand (nbgrader's manual
grading is the model; the tests of `grading` never see these answers).

An answer cell is a markdown cell right after the cell that asks, with nbgrader's metadata {"nbgrader": {"grade":
true, "solution": true, "locked": false, "task": false, "grade_id": "02-shared-query", "points": 2, ...}}; it
holds PLACEHOLDER until the student writes over it.

    questions(notebooks_dir)            [Question(grade_id, points, text, notebook)] of a copy's assignment notebooks
    collect(submission_dirs, out_dir)   out_dir/answers.md (per question, every submission's answer) and
                                        out_dir/marks.csv (a row per question and submission; points left empty)
    read_marks(path)                    {submission: {grade_id: points, or None where not yet marked}}
    written_points(marks)               {submission: (points marked, max points, answers not yet marked)}

`uniad-mini course answers DIR [DIR ...] --out FOLDER` runs collect (add_parser, run).
"""
from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import NamedTuple

from .assignments import CourseError, package_root

PLACEHOLDER = "YOUR ANSWER HERE"  # nbgrader's, for a markdown answer cell
NO_ANSWER, MISSING, UNREADABLE = "(no answer)", "(notebook missing)", "(notebook unreadable)"
NO_CELL = "(answer cell missing)"  # the notebook is there, the cell with this grade_id is not
COLUMNS = ("submission", "grade_id", "max_points", "points", "comment")
NOTEBOOKS = Path("notebooks") / "assignments"


class Question(NamedTuple):
    grade_id: str
    points: float
    text: str  # the markdown cell right before the answer cell
    notebook: str  # its file name, e.g. "02_jitter_and_layerwise_query.ipynb"


def _number(x: float) -> str:
    return f"{x:g}"


def _points_of(q: Question) -> str:
    return f"{_number(q.points)} point{'' if q.points == 1 else 's'}"


def _grade_meta(cell: dict) -> dict | None:
    meta = cell.get("metadata", {}).get("nbgrader", {})
    return meta if cell.get("cell_type") == "markdown" and meta.get("grade") and meta.get("solution") else None


def _source(cell: dict) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else str(src)


def _questions_of(path: Path) -> list[Question]:
    cells = json.loads(path.read_text())["cells"]
    out = []
    for i, cell in enumerate(cells):
        meta = _grade_meta(cell)
        if meta is None:
            continue
        gid, points = meta.get("grade_id"), meta.get("points")
        if not gid or not isinstance(points, (int, float)) or isinstance(points, bool) or points <= 0:
            raise CourseError(f"{path}: answer cell {i} needs a grade_id and positive points in its nbgrader metadata")
        if i == 0 or cells[i - 1].get("cell_type") != "markdown":
            raise CourseError(f"{path}: answer cell {gid!r} must follow the markdown cell that asks the question")
        out.append(Question(gid, points, _source(cells[i - 1]).strip(), path.name))
    return out


def questions(notebooks_dir=None) -> list[Question]:
    """The answer cells of a copy's notebooks/assignments/*.ipynb (default: the installed project's), in order."""
    folder = Path(notebooks_dir) if notebooks_dir else package_root() / NOTEBOOKS
    paths = sorted(folder.glob("[0-9][0-9]_*.ipynb"))
    if not paths:
        raise CourseError(f"{folder} holds no assignment notebooks: run this from a checkout of the project")
    found = [q for p in paths for q in _questions_of(p)]
    ids = [q.grade_id for q in found]
    twice = sorted({g for g in ids if ids.count(g) > 1})
    if twice:
        raise CourseError(f"grade_id {twice[0]!r} is used by two answer cells in {folder}; give each its own")
    return found


def answer_text(cell: dict) -> str:
    """What the student wrote in an answer cell, or NO_ANSWER while it is empty or still the placeholder."""
    return _source(cell).replace(PLACEHOLDER, "").strip() or NO_ANSWER


def submission_answers(folder: Path, qs: list[Question]) -> dict[str, str]:
    """{grade_id: answer} of one submission; a notebook missing or not valid JSON gives MISSING / UNREADABLE."""
    out, cells = {}, {}
    for name in sorted({q.notebook for q in qs}):
        path = Path(folder) / NOTEBOOKS / name
        try:
            cells[name] = json.loads(path.read_text())["cells"]
        except FileNotFoundError:
            cells[name] = MISSING
        except (ValueError, KeyError, TypeError, OSError):  # not JSON, not a notebook, a folder, ...
            cells[name] = UNREADABLE
        if not isinstance(cells[name], (list, str)):
            cells[name] = UNREADABLE
    for q in qs:
        nb = cells[q.notebook]
        if isinstance(nb, str):
            out[q.grade_id] = nb
            continue
        cell = next((c for c in nb if isinstance(c, dict) and (_grade_meta(c) or {}).get("grade_id") == q.grade_id),
                    None)
        out[q.grade_id] = NO_CELL if cell is None else answer_text(cell)
    return out


def _quote(text: str) -> str:
    return "\n".join(line if line.startswith(">") else f"> {line}".rstrip() for line in text.splitlines())


def answers_markdown(qs: list[Question], answers: dict[str, dict[str, str]]) -> str:
    """answers.md: per question, the question quoted, then every submission's answer under its folder name."""
    lines = ["# Written answers", "",
             f"{len(qs)} questions, {len(answers)} submissions ({', '.join(answers)}). Mark them in marks.csv, "
             "beside this file: fill in `points` (0 to `max_points`) and a `comment`; an empty row is not yet marked.",
             ""]
    for q in qs:
        lines += [f"## {q.grade_id} ({q.notebook}, {_points_of(q)})", "", _quote(q.text), ""]
        for name, got in answers.items():
            lines += [f"### {name}", "", got[q.grade_id], ""]
    return "\n".join(lines)


def _has_marks(path: Path) -> bool:
    try:
        with open(path, newline="") as f:
            return any((row.get("points") or "").strip() for row in csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error):
        return True  # a marks.csv that cannot be read might hold marks: keep it


def collect(submission_dirs, out_dir, notebooks_dir=None) -> dict:
    """Write out_dir/answers.md and out_dir/marks.csv for the submissions (folders, each a copy of the project);
    {"questions": n, "submissions": n, "empty": answers not given, "answers_md": path, "marks_csv": path}."""
    qs, out = questions(notebooks_dir), Path(out_dir)
    folders = [Path(d) for d in submission_dirs]
    for d in folders:
        if not d.is_dir():
            raise CourseError(f"{d} is not a folder: give the submissions' folders")
    names = [d.resolve().name for d in folders]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise CourseError(f"two submissions are named {twice[0]!r}: give each folder its own name")
    marks = out / "marks.csv"
    if marks.exists() and _has_marks(marks):
        raise CourseError(f"{marks} already holds marks: move it away or give another --out, so that none is lost")
    answers = {name: submission_answers(d, qs) for name, d in zip(names, folders)}
    out.mkdir(parents=True, exist_ok=True)
    (out / "answers.md").write_text(answers_markdown(qs, answers) + "\n")
    with open(marks, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(COLUMNS)
        w.writerows([name, q.grade_id, _number(q.points), "", ""] for q in qs for name in names)
    empty = sum(a in (NO_ANSWER, MISSING, UNREADABLE, NO_CELL) for got in answers.values() for a in got.values())
    return {"questions": len(qs), "submissions": len(names), "empty": empty,
            "answers_md": out / "answers.md", "marks_csv": marks}


def _points(text: str, where: str, q: Question) -> float:
    try:
        value = float(text)
    except ValueError:
        raise CourseError(f"{where}: points {text!r} is not a number; write 0 to {_number(q.points)} or leave it "
                          "empty") from None
    if not 0 <= value <= q.points:
        raise CourseError(f"{where}: points {text} is outside 0 to {_number(q.points)} (the max of {q.grade_id})")
    return value


def read_marks(path, notebooks_dir=None) -> dict[str, dict[str, float | None]]:
    """{submission: {grade_id: points}} of a marks.csv; None where the points are empty (not yet marked).
    Checks each row: a submission, a grade_id the notebooks hold, once, points a number from 0 to its max."""
    by_id = {q.grade_id: q for q in questions(notebooks_dir)}
    try:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            rows, header = list(reader), reader.fieldnames or []
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise CourseError(f"cannot read {path}: {e}") from None
    missing = [c for c in ("submission", "grade_id", "points") if c not in header]
    if missing:
        raise CourseError(f"{path}: no column {missing[0]!r}; the header is {','.join(COLUMNS)}")
    marks: dict[str, dict[str, float | None]] = {}
    for n, row in enumerate(rows, 2):  # row 1 is the header, as a spreadsheet counts
        if not any((v or "").strip() for v in row.values() if isinstance(v, str)):
            continue
        sub, gid, text = (str(row.get(c) or "").strip() for c in ("submission", "grade_id", "points"))
        where = f"{path}, row {n}"
        if not sub:
            raise CourseError(f"{where}: no submission; write the folder name the row is for")
        if gid not in by_id:
            raise CourseError(f"{where}: unknown grade_id {gid!r}; the notebooks' are {', '.join(by_id)}")
        if gid in marks.get(sub, {}):
            raise CourseError(f"{where}: a second row for {sub} / {gid}; keep one")
        marks.setdefault(sub, {})[gid] = _points(text, f"{where} ({sub} / {gid})", by_id[gid]) if text else None
    return marks


def written_points(marks: dict, notebooks_dir=None) -> dict[str, tuple[float, float, int]]:
    """{submission: (points marked, max points of every question, questions not yet marked)}."""
    qs = questions(notebooks_dir)
    top = sum(q.points for q in qs)
    out = {}
    for sub, got in marks.items():
        marked = [got[q.grade_id] for q in qs if got.get(q.grade_id) is not None]
        out[sub] = (sum(marked), top, len(qs) - len(marked))
    return out


def add_parser(subparsers) -> None:
    """`answers` on the `course` command's subparsers (commands.add_parser); `run` does it."""
    a = subparsers.add_parser("answers", help="collect the written answers of student copies for marking by hand")
    a.add_argument("paths", nargs="+", metavar="DIR", help="the submissions: copies of the project")
    a.add_argument("--out", required=True, metavar="FOLDER", help="where answers.md and marks.csv are written")


def run(args) -> int:
    """`uniad-mini course answers DIR [DIR ...] --out FOLDER`: collect, then say what was written; exit status 0."""
    done = collect(args.paths, args.out)
    total = done["questions"] * done["submissions"]
    print(f"wrote {done['answers_md']} and {done['marks_csv']}: {done['questions']} questions, "
          f"{done['submissions']} submissions; {done['empty']} of {total} answers empty (no answer, no answer cell, "
          "or the notebook missing or unreadable). Fill in points and comment in marks.csv.")
    return 0
