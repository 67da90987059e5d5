"""The grader's test process (implements no part of the paper): run each assignment's graded tests against its own
package tree, one pytest session per assignment in one Python process, and log every event as a JSON line.

Run as a script copied beside the graded tests (never imported from a student copy):

    python grading_runner.py JOBS.json

JOBS.json: {"log": path, "timeout": seconds per test, "jobs": [{"assignment", "tree", "tests", "deselect"}, ...]}.
Before each job the `uniad_mini` modules of the previous one are dropped and `tree` goes first on sys.path, so the
tests import that tree's package. A test that runs past `timeout` seconds is stopped by SIGALRM (GradingTimeout, a
BaseException, so a student's `except Exception` does not swallow it); the parent process (grading.py) watches the
log and kills this process if even that fails, then starts it again on the tests left.
"""
import json
import os
import signal
import sys
import time

import pytest


# pytest's own plugins that cost time and grade nothing (unraisableexception runs gc.collect five times a session);
# the parent also sets PYTEST_DISABLE_PLUGIN_AUTOLOAD, so no installed plugin joins in
NO_PLUGINS = ("-p", "no:cacheprovider", "-p", "no:unraisableexception", "-p", "no:threadexception",
              "-p", "no:tmpdir", "-p", "no:legacypath")


class GradingTimeout(BaseException):
    """A graded test ran past its time."""


class Recorder:
    """A pytest plugin: one JSON line per event in the log, the per-test alarm, each failure's first lines."""

    def __init__(self, log, assignment: str, timeout: float):
        self.log, self.assignment, self.timeout = log, assignment, timeout

    def write(self, **event):
        self.log.write(json.dumps(dict(event, assignment=self.assignment, t=time.time())) + "\n")
        self.log.flush()

    def pytest_runtest_logstart(self, nodeid, location):
        self.write(event="start", node=nodeid)

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_call(self, item):
        def ring(signum, frame):
            raise GradingTimeout(f"ran past {self.timeout:g} s (an endless loop?)")

        previous = signal.signal(signal.SIGALRM, ring)
        signal.setitimer(signal.ITIMER_REAL, self.timeout)
        try:
            yield
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_makereport(self, item, call):
        outcome = yield
        report = outcome.get_result()
        if report.failed or report.skipped:
            message = call.excinfo.exconly() if call.excinfo is not None else str(report.longrepr)
            self.write(event="report", node=item.nodeid, when=call.when, outcome=report.outcome,
                       message=message[:2000])
        elif call.when == "call":
            self.write(event="report", node=item.nodeid, when="call", outcome="passed", message="")

    def pytest_runtest_logfinish(self, nodeid, location):
        self.write(event="finish", node=nodeid)

    def pytest_collectreport(self, report):
        if report.failed:
            lines = [line[4:] for line in str(report.longrepr).splitlines() if line.startswith("E   ")]
            self.write(event="collect_error", message="\n".join(lines[-6:]) or str(report.longrepr)[-2000:])


def use_tree(tree: str) -> str:
    """Drop every uniad_mini module and put `tree` first on sys.path; the file of the package now imported."""
    for name in [m for m in sys.modules if m == "uniad_mini" or m.startswith("uniad_mini.")]:
        del sys.modules[name]
    sys.path[:] = [tree] + [p for p in sys.path if p not in ("", os.getcwd(), tree)]
    import uniad_mini

    return uniad_mini.__file__ or ""


def main(jobs_file: str) -> int:
    spec = json.loads(open(jobs_file).read())
    with open(spec["log"], "a") as log:
        for job in spec["jobs"]:
            rec = Recorder(log, job["assignment"], spec["timeout"])
            try:
                rec.write(event="begin", package=use_tree(job["tree"]))
            except BaseException as e:  # a package that does not even import: its tests fail at collection
                rec.write(event="begin", package="", message=f"{type(e).__name__}: {e}"[:2000])
            args = [job["tests"], "-q", "-o", "addopts=", f"--rootdir={os.path.dirname(job['tests'])}", "-W", "ignore",
                    "--import-mode=importlib", *NO_PLUGINS]
            for node in job["deselect"]:
                args += ["--deselect", node]
            pytest.main(args, plugins=[rec])
            rec.write(event="end")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
