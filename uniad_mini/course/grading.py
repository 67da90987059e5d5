"""Grading students' copies of the project (implements no part of the paper): the instructor's tests, each part
graded on its own, per-test points, timeouts and feedback, one row per submission.

    grade_submission(dir)   the rows of one copy: for each assignment, its graded tests (graded_tests/ of the
                            project running the grader, hidden tests included) run against a tree of the copy's
                            package in which every *other* assignment's functions are the instructor's, so a part
                            that does not compile, loops or crashes costs its own tests only.
    score_table, feedback_lines, write_json, write_gradebook   what the teacher reads and keeps.

The tests run in one process per submission (grading_runner.py, started again after a crash or a hang on the tests
left); each test stops after `timeout` seconds. The grader stops the mistakes students make (edited tests, a part
that calls PyTorch's attention, an endless loop, a crash, megabytes of output); it runs their code in its own
process, so a submission written to attack the grader itself belongs in a sandbox.
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

from ..evaluation import markdown_table
from . import stripping
from .assignments import ASSIGNMENTS, BY_NAME, Assignment, CourseError, project_dir

TIMEOUT_S = 20.0  # per test; the graded tests take well under a second each
GRACE_S = 10.0  # past the timeout, a test that did not stop is killed with its process
IMPORT_LIMIT_S = 180.0  # importing a tree's package and collecting one assignment's tests
TESTS = Path(__file__).resolve().parent / "graded_tests"
RUNNER = Path(__file__).resolve().parent / "grading_runner.py"


# ---- what is graded ---------------------------------------------------------------------------------------


def graded_tests(a: Assignment, tests_dir: Path = TESTS) -> list[tuple[str, int]]:
    """[(test name, points)] of an assignment, read from its test file (a parametrised test counts once)."""
    path = tests_dir / f"test_graded_{a.name}.py"
    if not path.is_file():
        raise CourseError(f"{path} is missing: the graded tests of {a.name!r}")
    out = []
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.FunctionDef) and node.name.startswith("test_"):
            points = [d.args[0].value for d in node.decorator_list if isinstance(d, ast.Call)
                      and ast.unparse(d.func).endswith("mark.points") and d.args]
            if len(points) != 1:
                raise CourseError(f"{path.name}::{node.name} needs one @pytest.mark.points(n)")
            out.append((node.name, int(points[0])))
    return out


def max_points(a: Assignment, tests_dir: Path = TESTS) -> int:
    return sum(p for _, p in graded_tests(a, tests_dir))


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


def build_tree(student: Path, instructor: Path | None, a: Assignment, out: Path) -> Path:
    """out/uniad_mini: the student's package, every function of the other assignments taken from `instructor`
    (the instructor's package; None: the student's own, as in a notebook checkpoint)."""
    shutil.copytree(student, out / "uniad_mini", ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "graded_tests"))
    if instructor is not None:
        for other in ASSIGNMENTS:
            for qualname in other.functions if other is not a else ():
                rel, names = module_of(qualname, instructor)
                target = out / "uniad_mini" / rel
                if target.is_file():
                    text = target.read_text(errors="replace")
                    target.write_text(with_functions_of(text, (instructor / rel).read_text(), names))
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


def run_tests(work: Path, jobs: list[dict], timeout: float) -> list[dict]:
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
        (work / "jobs.json").write_text(json.dumps({"log": str(log), "timeout": timeout, "jobs": left}))
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
                    killed = _kill(proc) and run.stop(f"ran past {timeout:g} s and did not stop (an endless loop?)")
                elif run.running is None and now - run.last > IMPORT_LIMIT_S:
                    killed = _kill(proc) and run.stop(f"importing the package or collecting its tests ran past "
                                                     f"{IMPORT_LIMIT_S:g} s")
            run.read()
            if not killed and (run.running or run.current):  # a crash, an os._exit, a kill from outside
                run.stop(f"the test process stopped during this test (exit status {proc.returncode})")
    return run.events


# ---- marks ------------------------------------------------------------------------------------------------


def feedback(message: str) -> str:
    """One line a student can act on, from a failure's exception line."""
    kind, _, text = message.partition(": ")
    text = " ".join((text if kind.split(".")[-1] in ("AssertionError", "ByHand", "GradingTimeout") else message).split())
    if kind.endswith("NotImplementedError"):
        text = f"not written yet: {' '.join(message.partition(': ')[2].split())}"
    return text[:400] or kind


def mark(a: Assignment, events: list[dict], tests_dir: Path = TESTS) -> dict:
    """One assignment's row: per test its points and feedback; a test passes when every case of it passed."""
    mine = [e for e in events if e.get("assignment") == a.name]
    collect = next((e["message"] for e in mine if e["event"] == "collect_error"), None)
    broken = next((e["message"] for e in mine if e["event"] == "begin" and e.get("message")), None)
    results = []
    for name, points in graded_tests(a, tests_dir):
        reports = [e for e in mine if e["event"] == "report" and e["node"].split("::")[-1].split("[")[0] == name]
        bad = [e for e in reports if e["outcome"] != "passed"]
        passed = bool(reports) and not bad and any(e["when"] == "call" for e in reports)
        why = feedback(bad[0]["message"]) if bad else "" if passed else \
            feedback(collect or broken or "not run (the test process stopped before it)")
        results.append({"test": name, "points": points if passed else 0, "max_points": points, "passed": passed,
                        "feedback": why})
    return {"assignment": a.name, "title": a.title, "functions": list(a.functions),
            "points": sum(r["points"] for r in results), "max_points": sum(r["max_points"] for r in results),
            "passed": sum(r["passed"] for r in results), "tests": len(results), "results": results,
            "package": next((e.get("package", "") for e in mine if e["event"] == "begin"), "")}


def grade_submission(path, names=None, timeout: float = TIMEOUT_S, instructor: bool = True) -> list[dict]:
    """The rows of the copy at `path` (every assignment, or those named). instructor=True (the teacher's grade)
    needs this project's hidden tests and grades each part against the instructor's other parts; False (a notebook
    checkpoint) runs the tests this installation holds on the copy's package as it is."""
    root = project_dir(path)
    if instructor and not holds_hidden_tests():
        raise CourseError("this installation is a student copy (its graded tests lost their hidden blocks): "
                          "grade with the instructor's project, or use course.check() for a checkpoint")
    chosen = [BY_NAME[n] for n in names] if names else list(ASSIGNMENTS)
    source = Path(__file__).resolve().parents[1] if instructor else None  # the instructor's package
    with tempfile.TemporaryDirectory(prefix="uniad-grade-") as tmp:
        work = Path(tmp)
        shutil.copytree(TESTS, work / "tests", ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copy(RUNNER, work / "grading_runner.py")
        jobs = [{"assignment": a.name, "tree": str(build_tree(root / "uniad_mini", source, a, work / "trees" / a.name)),
                 "tests": str(work / "tests" / f"test_graded_{a.name}.py"), "deselect": []} for a in chosen]
        events = run_tests(work, jobs, timeout)
        rows = [mark(a, events) for a in chosen]
    for r in rows:
        if r["package"] and not Path(r["package"]).resolve().is_relative_to(Path(tmp).resolve()):
            raise CourseError(f"the graded tests imported uniad_mini from {r['package']}, not from the copy")
    return rows


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
    """One line per test not passed: where, its points, what to fix."""
    return [f"  not yet: {r['assignment']} / {t['test']} (0 / {t['max_points']}): {t['feedback']}"
            for r in rows for t in r["results"] if not t["passed"]]


def write_json(path, submissions: dict[str, list[dict] | str], seconds: dict | None = None,
               timeout: float = TIMEOUT_S) -> None:
    """Every submission's rows (or the one line saying why it was not graded), with the tests' digest."""
    out = {"format": 1, "tests_sha256": tests_digest(), "timeout_s": timeout, "submissions": [
        {"submission": name, "total": total(rows) if isinstance(rows, list) else 0, "max": 100,
         **({"assignments": rows} if isinstance(rows, list) else {"error": rows}),
         **({"seconds": round(seconds[name], 1)} if seconds and name in seconds else {})}
        for name, rows in submissions.items()]}
    Path(path).write_text(json.dumps(out, indent=1) + "\n")


def write_gradebook(path, submissions: dict[str, list[dict] | str]) -> None:
    """CSV: one row per submission (its folder name), one column per assignment, `total` out of 100."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["submission"] + [a.name for a in ASSIGNMENTS] + ["total"])
        for name, rows in submissions.items():
            points = {r["assignment"]: r["points"] for r in rows} if isinstance(rows, list) else {}
            w.writerow([name] + [points.get(a.name, 0) for a in ASSIGNMENTS] + [sum(points.values())])


def check(name: str | None = None, path=None):
    """A notebook checkpoint: run the graded tests this installation holds (in a student copy: the visible ones)
    on the package of `path` (default: the imported one); print the table and what is not yet right."""
    from .assignments import assignment, package_root

    rows = grade_submission(path or package_root(), [assignment(name).name] if name else None, instructor=False)
    print(score_table(rows, with_total=name is None))
    lines = feedback_lines(rows)
    print("\n".join(lines) if lines else f"full marks for {name or 'every assignment'} (on the tests here)")
    return rows[0] if name else rows
