"""Grading students' copies of the project (implements no part of the paper): the instructor's tests, each part
graded on its own, per-test points, timeouts and feedback, one row per submission.

    grade_submission(dir)   the rows of one copy: for each assignment, its graded tests (graded_tests/, hidden tests
                            included) in a test process of the grader's own (grading_runner.py) that hands every call
                            of a part to a student process (worker.py) holding the copy's package, in which the other
                            assignments' parts are unwritten: a part that does not compile, loops or crashes costs its
                            own tests only, and nothing of the instructor's is within the part's reach
    mark, feedback          a row's points and one line per test not passed (a hidden test: its category only)
    score_table, feedback_lines, write_json, write_gradebook   what the teacher and the students read
"""
from __future__ import annotations

import ast
import csv
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

from ..evaluation import markdown_table
from . import stripping
from .assignments import ASSIGNMENTS, BY_NAME, Assignment, CourseError, project_dir

TIMEOUT_S = 20.0  # per test; the graded tests take well under a second each
GRACE_S = 30.0  # past the timeout (and a fresh student process), a test that did not stop is killed
IMPORT_LIMIT_S = 180.0  # importing a tree's package and collecting one assignment's tests
TESTS = Path(__file__).resolve().parent / "graded_tests"
RUNNER = Path(__file__).resolve().parent / "grading_runner.py"
WORKER = Path(__file__).resolve().parent / "worker.py"  # the student process
PROBES = Path(__file__).resolve().parent / "probes.py"  # its stand-ins and guard


# ---- what is graded ---------------------------------------------------------------------------------------


class Graded(NamedTuple):
    name: str
    points: int
    hidden: bool  # inside a hidden block: reported to the student by its category only
    category: str


def graded_tests(a: Assignment, tests_dir: Path = TESTS) -> list[Graded]:
    """The graded tests of an assignment, read from its test file (a parametrised test counts once)."""
    path = tests_dir / f"test_graded_{a.name}.py"
    if not path.is_file():
        raise CourseError(f"{path} is missing: the graded tests of {a.name!r}")
    text = path.read_text()
    lines = [i + 1 for i, line in enumerate(text.splitlines()) if line.strip() in (stripping.HIDDEN_BEGIN,
                                                                                   stripping.HIDDEN_END)]
    blocks = list(zip(lines[::2], lines[1::2]))
    out = []
    for node in ast.parse(text).body:
        if isinstance(node, ast.FunctionDef) and node.name.startswith("test_"):
            marks = [d for d in node.decorator_list if isinstance(d, ast.Call)
                     and ast.unparse(d.func).endswith("mark.points") and d.args]
            if len(marks) != 1:
                raise CourseError(f"{path.name}::{node.name} needs one @pytest.mark.points(n)")
            category = next((k.value.value for k in marks[0].keywords if k.arg == "category"), "")
            hidden = any(b < node.lineno < e for b, e in blocks)
            if hidden and not category:
                raise CourseError(f"{path.name}::{node.name} is hidden and needs @pytest.mark.points(n, category=...)")
            out.append(Graded(node.name, int(marks[0].args[0].value), hidden, category))
    return out


def max_points(a: Assignment, tests_dir: Path = TESTS) -> int:
    return sum(t.points for t in graded_tests(a, tests_dir))


def course_points(tests_dir: Path = TESTS) -> int:
    """What the whole course is worth: every assignment's graded tests."""
    return sum(max_points(a, tests_dir) for a in ASSIGNMENTS)


def holds_hidden_tests(tests_dir: Path | None = None) -> bool:
    """True in the instructor's project; a student copy's graded_tests lost their hidden blocks."""
    return any(stripping.HIDDEN_BEGIN in p.read_text() for p in (tests_dir or TESTS).glob("test_graded_*.py"))


def tests_digest(tests_dir: Path = TESTS) -> str:
    """sha256 of the graded tests and their conftest, recorded with every grade."""
    h = hashlib.sha256()
    for p in sorted(tests_dir.glob("*.py")):
        h.update(p.name.encode() + b"\0" + p.read_bytes())
    return h.hexdigest()


# ---- one tree per assignment ------------------------------------------------------------------------------


def module_of(qualname: str, package: Path) -> tuple[Path, list[str]]:
    """"shortcut.identity.gd_factors" -> (package/shortcut/identity.py, ["gd_factors"])."""
    parts = qualname.split(".")
    for i in range(len(parts) - 1, 0, -1):
        path = package.joinpath(*parts[:i]).with_suffix(".py")
        if path.is_file():
            return path.relative_to(package), parts[i:]
    raise CourseError(f"no module of uniad_mini holds {qualname}")


def function_span(lines: list[str], names: list[str]) -> tuple[int, int] | None:
    """[start, end) of the lines of the def (or class) `names` (outer to inner), read from the indentation only,
    so that it works on a file that does not compile; None when it is not there."""
    start, end, indent = 0, len(lines), -1
    for depth, name in enumerate(names):
        pattern = re.compile(rf"^(\s*)(async\s+def|def|class)\s+{re.escape(name)}\b")
        for i in range(start, end):
            m = pattern.match(lines[i])
            if m and (len(m.group(1)) > indent if depth else not m.group(1)):
                indent, start = len(m.group(1)), i
                break
        else:
            return None
        end = next((j for j in range(start + 1, end) if lines[j].strip()
                    and len(lines[j]) - len(lines[j].lstrip()) <= indent), end)
        while end > start + 1 and not lines[end - 1].strip():
            end -= 1
    return start, end


def with_functions_of(text: str, source: str, names: list[str]) -> str:
    """`text` with the function `names` replaced by the one in `source` (unchanged when either lacks it)."""
    lines, theirs = text.splitlines(keepends=True), source.splitlines(keepends=True)
    mine, ref = function_span(lines, names), function_span(theirs, names)
    if mine is None or ref is None:
        return text
    return "".join(lines[: mine[0]] + theirs[ref[0] : ref[1]] + lines[mine[1] :])


def build_tree(student: Path, unwritten: Path | None, a: Assignment, out: Path) -> Path:
    """out/uniad_mini: the student's package in which every function of the *other* assignments is taken from
    `unwritten` (the instructor's package with its parts stripped, as in a fresh student copy), so the tree holds the
    student's part `a` and public code only; None: the student's package as it is (a notebook checkpoint)."""
    shutil.copytree(student, out / "uniad_mini", ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "graded_tests"))
    if unwritten is not None:
        for other in ASSIGNMENTS:
            for qualname in other.functions if other is not a else ():
                rel, names = module_of(qualname, unwritten)
                target = out / "uniad_mini" / rel
                if target.is_file():
                    text = target.read_text(errors="replace")
                    target.write_text(with_functions_of(text, (unwritten / rel).read_text(), names))
    return out


def unwritten_package(src: Path, out: Path) -> Path:
    """out: every module of `src` that holds a marked part, each part replaced by the raise of its hint."""
    for f in src.rglob("*.py"):
        text = f.read_text()
        if stripping.BEGIN in text and "graded_tests" not in f.parts:
            rel = f.relative_to(src)
            (out / rel).parent.mkdir(parents=True, exist_ok=True)
            (out / rel).write_text(stripping.strip_source(text, str(rel))[0])
    return out


# ---- the test process and its watchdog -------------------------------------------------------------------


def _kill(proc):
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        proc.kill()
    proc.wait()
    return True


class Run:
    """The events of the runner's log (grading_runner.py), and the ones the watchdog adds."""

    def __init__(self, log: Path):
        self.log, self.offset, self.events = log, 0, []
        self.running, self.started, self.last, self.current = None, 0.0, time.time(), None

    def read(self):
        with open(self.log) as f:
            f.seek(self.offset)
            chunk = f.read()
        complete = chunk[: chunk.rfind("\n") + 1]
        self.offset += len(complete.encode())
        for line in complete.splitlines():
            e = json.loads(line)
            self.add(e)

    def add(self, e: dict):
        self.events.append(e)
        self.last = time.time()
        kind = e["event"]
        if kind == "begin":
            self.current = e["assignment"]
        elif kind == "start":
            self.running, self.started = e["node"], time.time()
        elif kind == "finish":
            self.running = None
        elif kind == "end":
            self.current = None

    def stop(self, why: str) -> bool:
        """Close what was running when the process stopped: the test (failed) or the assignment (not collected)."""
        if self.running is not None:
            self.add({"event": "report", "assignment": self.current, "node": self.running, "when": "call",
                      "outcome": "failed", "message": why})
            self.add({"event": "finish", "assignment": self.current, "node": self.running})
        elif self.current is not None:
            self.add({"event": "collect_error", "assignment": self.current, "message": why})
            self.add({"event": "end", "assignment": self.current})
        return True


def run_tests(work: Path, jobs: list[dict], timeout: float, student: dict) -> list[dict]:
    """Run the jobs in the runner, again on what is left after a crash or a kill; every event."""
    log, run = work / "log.jsonl", None
    log.write_text("")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(PYTHONDONTWRITEBYTECODE="1", MPLBACKEND="Agg", PYTEST_DISABLE_PLUGIN_AUTOLOAD="1")
    env.setdefault("OMP_NUM_THREADS", "1")  # small tests: more threads only fight over the cores
    run = Run(log)
    for _ in range(sum(len(graded_tests(BY_NAME[j["assignment"]])) for j in jobs) + len(jobs) + 1):
        ended = {e["assignment"] for e in run.events if e["event"] == "end"}
        done = {e["node"] for e in run.events if e["event"] == "finish"}
        left = [dict(j, deselect=sorted(n for n in done if n.startswith(Path(j["tests"]).name + "::")))
                for j in jobs if j["assignment"] not in ended]
        if not left:
            break
        (work / "jobs.json").write_text(json.dumps({"log": str(log), "timeout": timeout, "jobs": left, **student}))
        with open(work / "output.txt", "ab") as out:
            proc = subprocess.Popen([sys.executable, str(work / "grading_runner.py"), str(work / "jobs.json")],
                                    cwd=work, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True)
            run.last, killed = time.time(), False
            while proc.poll() is None and not killed:
                time.sleep(0.05)
                run.read()
                now = time.time()
                if run.running is not None and now - run.started > timeout + GRACE_S:
                    killed = _kill(proc) and run.stop(f"this test ran past {timeout:g} s and did not stop (an endless loop?)")
                elif run.running is None and now - run.last > IMPORT_LIMIT_S:
                    killed = _kill(proc) and run.stop(f"importing the package or collecting its tests ran past "
                                                     f"{IMPORT_LIMIT_S:g} s")
            run.read()
            if not killed and (run.running or run.current):  # a crash, an os._exit, a kill from outside
                run.stop(f"the test process stopped during this test (exit status {proc.returncode})")
    return run.events


# ---- marks ------------------------------------------------------------------------------------------------


SAFE = ("not written yet", "by hand:", "without loops:", "this test ran past", "importing the package ran past",
        "the part's process stopped")  # feedback of a hidden test that names no input


def feedback(message: str, hidden: bool = False) -> str:
    """One line a student can act on, from a failure's exception line; of a hidden test, the kind of failure only
    (never the input, the expected value or what came back)."""
    kind, _, text = message.partition(": ")
    kind = kind.split(".")[-1]
    text = " ".join((text if kind in ("AssertionError", "PartFailed") else message).split())
    if kind == "NotImplementedError":
        text = f"not written yet: {text.partition(': ')[2]}"
    if hidden and not text.startswith(SAFE):
        if kind == "AssertionError":
            return "wrong result"
        crash = re.match(r"(\w+): .*\((uniad_mini/[^()]*, line \d+)\)$", text)
        return f"crashed: {crash.group(1)} in {crash.group(2)}" if crash else "crashed"
    return text[:400] or kind


def mark(a: Assignment, events: list[dict], tests_dir: Path = TESTS) -> dict:
    """One assignment's row: per test its points and feedback; a test passes when every case of it passed. `label`
    is what a student sees: the test's name, or for a hidden test its category."""
    mine = [e for e in events if e.get("assignment") == a.name]
    collect = next((e["message"] for e in mine if e["event"] == "collect_error"), None)
    results = []
    for t in graded_tests(a, tests_dir):
        reports = [e for e in mine if e["event"] == "report" and e["node"].split("::")[-1].split("[")[0] == t.name]
        bad = [e for e in reports if e["outcome"] != "passed"]
        passed = bool(reports) and not bad and any(e["when"] == "call" for e in reports)
        why = feedback(bad[0]["message"], t.hidden) if bad else "" if passed else \
            feedback(collect or "not run (the test process stopped before it)", t.hidden)
        results.append({"test": t.name, "label": f"hidden test ({t.category})" if t.hidden else t.name,
                        "points": t.points if passed else 0, "max_points": t.points, "passed": passed, "feedback": why})
    return {"assignment": a.name, "title": a.title, "functions": list(a.functions),
            "points": sum(r["points"] for r in results), "max_points": sum(r["max_points"] for r in results),
            "passed": sum(r["passed"] for r in results), "tests": len(results), "results": results}


def instructor_folders() -> list[str]:
    """What the student process may not read: the project this grader runs from (a checkout: the whole of it)."""
    package = Path(__file__).resolve().parents[1]
    return [str(package.parent if (package.parent / "setup.py").is_file() else package)]


def grade_submission(path, names=None, timeout: float = TIMEOUT_S, instructor: bool = True) -> list[dict]:
    """The rows of the copy at `path` (every assignment, or those named). instructor=True (the teacher's grade)
    needs this project's hidden tests and grades each part in a tree where the other assignments' parts are
    unwritten; False (a notebook checkpoint) runs the tests this installation holds on the copy's package as it is.
    The parts run in the student process (worker.py), which can read neither this project nor the grader's folder."""
    root = project_dir(path)
    if instructor and not holds_hidden_tests():
        raise CourseError("this installation is a student copy (its graded tests lost their hidden blocks): "
                          "grade with the instructor's project, or use course.check() for a checkpoint")
    chosen = [BY_NAME[n] for n in names] if names else list(ASSIGNMENTS)
    with tempfile.TemporaryDirectory(prefix="uniad-grade-") as tmp:
        work = Path(tmp)
        shutil.copytree(TESTS, work / "tests", ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copy(RUNNER, work / "grading_runner.py")
        (work / "worker").mkdir()
        shutil.copy(WORKER, work / "worker" / "grader_worker.py")
        shutil.copy(PROBES, work / "worker" / "grader_probes.py")
        unwritten = unwritten_package(Path(__file__).resolve().parents[1], work / "unwritten") if instructor else None
        jobs = [{"assignment": a.name, "tree": str(build_tree(root / "uniad_mini", unwritten, a, work / "trees" / a.name)),
                 "tests": str(work / "tests" / f"test_graded_{a.name}.py"), "deselect": []} for a in chosen]
        events = run_tests(work, jobs, timeout, {"worker": str(work / "worker"),
                                                 "denied": instructor_folders() + [str(work)]})
        return [mark(a, events) for a in chosen]


# ---- what the teacher reads ------------------------------------------------------------------------------


def total(rows: list[dict]) -> float:
    return sum(r["points"] for r in rows)


def full_marks(rows: list[dict]) -> bool:
    return bool(rows) and all(r["points"] == r["max_points"] for r in rows)


def score_table(rows: list[dict], with_total: bool = True) -> str:
    """The rows as a Markdown table (assignment, parts, tests passed, points), with a total row."""
    cells = [[r["assignment"], ", ".join(r["functions"]), f"{r['passed']} / {r['tests']}",
              f"{r['points']} / {r['max_points']}"] for r in rows]
    if with_total:
        passed, tests = sum(r["passed"] for r in rows), sum(r["tests"] for r in rows)
        cells.append(["**total**", "", f"{passed} / {tests}", f"{total(rows)} / {sum(r['max_points'] for r in rows)}"])
    return markdown_table(["assignment", "parts", "tests passed", "points"], cells)


def feedback_lines(rows: list[dict]) -> list[str]:
    """One line per test not passed: which (a hidden test: its category), its points, what to fix."""
    return [f"  not yet: {r['assignment']} / {t['label']} (0 / {t['max_points']}): {t['feedback']}"
            for r in rows for t in r["results"] if not t["passed"]]


def write_json(path, submissions: dict[str, list[dict] | str], seconds: dict | None = None,
               timeout: float = TIMEOUT_S, written: dict | None = None) -> None:
    """Every submission's rows (or the one line saying why it was not graded), with the tests' digest; with
    `written` ({submission: (points, max, not marked)}, answers.written_points), the written answers' points."""
    out = {"format": 2, "tests_sha256": tests_digest(), "timeout_s": timeout, "max": course_points(),
           "submissions": []}
    for name, rows in submissions.items():
        entry = {"submission": name, "total": total(rows) if isinstance(rows, list) else 0}
        entry.update({"assignments": rows} if isinstance(rows, list) else {"error": rows})
        if seconds and name in seconds:
            entry["seconds"] = round(seconds[name], 1)
        if written is not None:
            marked, most, unmarked = written.get(name, (0, 0, 0))
            entry["written"] = {"points": marked, "max": most, "not_marked": unmarked}
        out["submissions"].append(entry)
    Path(path).write_text(json.dumps(out, indent=1) + "\n")


def write_gradebook(path, submissions: dict[str, list[dict] | str], written: dict | None = None) -> None:
    """CSV: one row per submission (its folder name), one column per assignment, `written` (the answers marked by
    hand, with `written` given) and `total`."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["submission"] + [a.name for a in ASSIGNMENTS] + (["written"] if written is not None else [])
                   + ["total"])
        for name, rows in submissions.items():
            points = {r["assignment"]: r["points"] for r in rows} if isinstance(rows, list) else {}
            extra = [written.get(name, (0, 0, 0))[0]] if written is not None else []
            w.writerow([name] + [points.get(a.name, 0) for a in ASSIGNMENTS] + extra
                       + [sum(points.values()) + sum(extra)])


def check(name: str | None = None, path=None):
    """A notebook checkpoint: run the graded tests this installation holds (in a student copy: the visible ones)
    on the package of `path` (default: the imported one); print the table and what is not yet right."""
    from .assignments import assignment, package_root

    rows = grade_submission(path or package_root(), [assignment(name).name] if name else None, instructor=False)
    print(score_table(rows, with_total=name is None))
    lines = feedback_lines(rows)
    print("\n".join(lines) if lines else f"full marks for {name or 'every assignment'} (on the tests here)")
    return rows[0] if name else rows
