"""The grader's test process (implements no part of the paper): run each assignment's graded tests, one pytest session
per assignment in one Python process, and log every event as a JSON line. No code of a submission runs here: the
tests hand each call of a part to the student process (worker.py), which the graded tests' conftest.py starts on the
assignment's tree.

Run as a script copied beside the graded tests:

    python grading_runner.py JOBS.json

JOBS.json: {"log": path, "timeout": seconds per test, "worker": the student process's folder, "denied": [folders the
student process may not read], "jobs": [{"assignment", "tree", "tests", "deselect"}, ...]}. The parent process
(grading.py) watches the log and kills this process if a test does not end, then starts it again on the tests left.
"""
import json
import os
import sys
import time

import pytest


# pytest's own plugins that cost time and grade nothing (unraisableexception runs gc.collect five times a session);
# the parent also sets PYTEST_DISABLE_PLUGIN_AUTOLOAD, so no installed plugin joins in
NO_PLUGINS = ("-p", "no:cacheprovider", "-p", "no:unraisableexception", "-p", "no:threadexception",
              "-p", "no:tmpdir", "-p", "no:legacypath")


class Recorder:
    """A pytest plugin: one JSON line per event in the log, each failure's first lines."""

    def __init__(self, log, assignment: str):
        self.log, self.assignment = log, assignment

    def write(self, **event):
        self.log.write(json.dumps(dict(event, assignment=self.assignment, t=time.time())) + "\n")
        self.log.flush()

    def pytest_runtest_logstart(self, nodeid, location):
        self.write(event="start", node=nodeid)

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


def main(jobs_file: str) -> int:
    spec = json.loads(open(jobs_file).read())
    with open(spec["log"], "a") as log:
        for job in spec["jobs"]:
            rec = Recorder(log, job["assignment"])
            rec.write(event="begin")
            os.environ.update(UNIAD_GRADE_TREE=job["tree"], UNIAD_GRADE_WORKER=spec["worker"],
                              UNIAD_GRADE_DENIED=os.pathsep.join(spec["denied"]), UNIAD_GRADE_TIMEOUT=str(spec["timeout"]))
            args = [job["tests"], "-q", "-o", "addopts=", f"--rootdir={os.path.dirname(job['tests'])}", "-W", "ignore",
                    "--import-mode=importlib", *NO_PLUGINS]
            for node in job["deselect"]:
                args += ["--deselect", node]
            pytest.main(args, plugins=[rec])
            rec.write(event="end")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
