"""`uniad-mini course ...` (implements no part of the paper): a student copy, the grade of a class, the hints.

    uniad-mini course strip OUT [--keep-solutions]
    uniad-mini course grade DIR [DIR ...] [--csv gradebook.csv] [--json grades.json] [--feedback FOLDER]
                            [--marks marks.csv] [--jobs N] [--timeout S]
    uniad-mini course answers DIR [DIR ...] --out FOLDER      (the written answers, for marking by hand)
    uniad-mini course hint NAME [1|2]            (and `course parts NAME`: where to write it)

grade prints each submission's score table and a line per test not passed (a hidden test by its category only);
--feedback writes the same, one Markdown file per submission; --marks adds the written answers' points marked in
answers' marks.csv; --jobs grades N submissions at once. A folder that is not a copy gets one line and a row of
zeros, and the next one is graded. Exit status: 0 when every submission has full marks, 1 when
any does not, 2 for a mistake in the command (one DIR that is not a copy, a student copy used as the grader).
"""
from __future__ import annotations

import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from . import answers, grading, stripping
from .assignments import ASSIGNMENTS, CourseError, assignment, hint, package_root, parts, project_dir


def add_parser(sub, func=None) -> None:
    """The `course` subcommand and its actions, on cli.py's subparsers; `func` runs them (default `run_command`)."""
    c = sub.add_parser("course", help="course assignments: a student copy (strip), the grader (grade), hints")
    cs = c.add_subparsers(dest="action", required=True, metavar="ACTION")
    s = cs.add_parser("strip", help="write a student copy: each part raises its hint; hidden tests left out")
    s.add_argument("path", metavar="OUT")
    s.add_argument("--keep-solutions", action="store_true", help="copy the parts and hidden tests as they are")
    g = cs.add_parser("grade", help="grade student copies with the instructor's tests; a table each")
    g.add_argument("paths", nargs="+", metavar="DIR")
    g.add_argument("--csv", metavar="FILE", help="write the gradebook: a row per DIR, a column per assignment, total")
    g.add_argument("--json", metavar="FILE", help="write every test's points and feedback")
    g.add_argument("--feedback", metavar="FOLDER", help="write FOLDER/<submission>.md: its table and what to fix")
    g.add_argument("--marks", metavar="FILE", help="marks.csv of `course answers`, marked: the written answers' points")
    g.add_argument("--jobs", type=int, default=1, metavar="N", help="submissions graded at once (default 1)")
    g.add_argument("--timeout", type=float, default=grading.TIMEOUT_S, metavar="S", help="seconds per test")
    h = cs.add_parser("hint", help="an assignment's first hint (the idea) or second (the calls)")
    h.add_argument("name", choices=[a.name for a in ASSIGNMENTS])
    h.add_argument("level", nargs="?", type=int, choices=(1, 2), default=1)
    p = cs.add_parser("parts", help="where an assignment's parts are")
    p.add_argument("name", choices=[a.name for a in ASSIGNMENTS])
    answers.add_parser(cs)
    c.set_defaults(func=func or run_command)


def run_command(args) -> int:
    """The action of `uniad-mini course` parsed by `add_parser`; the exit status."""
    if args.action == "strip":
        done = stripping.strip(project_dir(package_root()), args.path, keep_solutions=args.keep_solutions)
        what = "solutions kept" if args.keep_solutions else \
            f"{sum(done['stripped'].values())} parts stripped in {len(done['stripped'])} files"
        for rel, why in done["left_out"].items():
            print(f"left out {rel}: {why}")
        print(f"wrote the student copy to {args.path} ({what}); grade it with `uniad-mini course grade {args.path}`")
        return 0
    if args.action == "hint":
        print(hint(args.name, args.level))
        return 0
    if args.action == "parts":
        parts(assignment(args.name).name)
        return 0
    if args.action == "answers":
        return answers.run(args)
    return grade(args)


def grade(args) -> int:
    """Check the whole command first (every mistake before the first submission is graded), then grade."""
    if not args.timeout > 0:
        raise CourseError(f"--timeout takes the seconds a test may run, a positive number; got {args.timeout:g}")
    if args.jobs < 1:
        raise CourseError(f"--jobs takes how many submissions to grade at once, 1 or more; got {args.jobs}")
    if len(args.paths) == 1:
        project_dir(args.paths[0])  # one folder that is no copy: a mistake in the command (exit 2)
    for out in (args.csv, args.json, args.feedback):
        if out and not Path(out).resolve().parent.is_dir():
            raise CourseError(f"cannot write {out}: its folder does not exist")
    names = [Path(path).resolve().name for path in args.paths]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise CourseError(f"two submissions are named {twice[0]!r}: give each folder its own name")
    written = answers.written_points(answers.read_marks(args.marks)) if args.marks else None
    if args.feedback:
        Path(args.feedback).mkdir(exist_ok=True)
    if len(args.paths) > 1:
        print(f"grading {len(args.paths)} submissions, {args.jobs} at a time", file=sys.stderr)
    submissions, seconds = {}, {}
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        futures = [pool.submit(_graded, path, args.timeout) for path in args.paths]
        for name, future in zip(names, futures):  # in the order given, each as soon as it is done
            rows, seconds[name] = future.result()
            submissions[name] = rows
            report = _report(name, rows, seconds[name], (written or {}).get(name))
            print(report, file=sys.stderr if isinstance(rows, str) else sys.stdout)
            if args.feedback:
                (Path(args.feedback) / f"{name}.md").write_text(report + "\n")
    if args.csv:
        grading.write_gradebook(args.csv, submissions, written)
    if args.json:
        grading.write_json(args.json, submissions, seconds, args.timeout, written)
    good = all(isinstance(r, list) and grading.full_marks(r) for r in submissions.values())
    return 0 if good else 1


def _graded(path, timeout: float):
    """(rows, seconds) of one submission, or (the one line saying why it was not graded, seconds)."""
    start = time.perf_counter()
    try:
        rows = grading.grade_submission(path, timeout=timeout)
    except CourseError as e:
        if "student copy" in str(e):
            raise
        rows = str(e)
    return rows, time.perf_counter() - start


def _report(name: str, rows, seconds: float, written=None) -> str:
    """What a student reads: the score table, a line per test not passed, the written answers' points."""
    if isinstance(rows, str):
        return f"## {name}: not graded: {rows}\n"
    head = f"## {name}: {grading.total(rows):g} / {sum(r['max_points'] for r in rows)} ({seconds:.0f} s)"
    lines = grading.feedback_lines(rows)
    text = f"{head}\n\n{grading.score_table(rows)}\n" + ("\n" + "\n".join(lines) + "\n" if lines else "")
    if written is not None:
        marked, most, unmarked = written
        text += f"\nwritten answers, marked by hand: {marked:g} / {most:g}" + \
            (f" ({unmarked} not marked yet)" if unmarked else "") + "\n"
    return text
