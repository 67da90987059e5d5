"""The graded tests' helpers (implements no part of the paper): points, the student process, feedback.

    @pytest.mark.points(n, category="...")   what a test is worth; a hidden test is reported by its category only
    @pytest.mark.by_hand(why=..., project=(...))
                                while the part runs, PyTorch's own attention, nn.MultiheadAttention / nn.Transformer*,
                                scikit-learn, SciPy and the named project functions refuse, saying `why`
    student(target, *args, ...) (a fixture) run the submission's `target` ("neighbors.neighbor_mask") in the student
                                process (worker.py) and return its result; options: patch={name: stand-in},
                                seed, lines (the most lines of the submission's Python it may run), grad, after
    expect                      (a fixture) expect.close(got, expected, what, given) fails with expected / got / input

This file runs in the grader's own process and folder; no code of the submission ever runs in this process. The
student process is started once per assignment and again after a call that crashed it or ran past its time.
"""
from __future__ import annotations

import ast
import io
import os
import re
import select
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

TIMEOUT_S = float(os.environ.get("UNIAD_GRADE_TIMEOUT", "20"))
if not os.environ.get("UNIAD_GRADE_WORKER"):  # the project's own pytest run: these tests run only under the grader
    collect_ignore_glob = ["test_graded_*.py"]  # (course grade, course.check), tests/course grades the checkout
DEFAULT_WHY = "this assignment asks you to write it yourself"


if os.environ.get("UNIAD_GRADE_WORKER"):  # the stand-ins' classes (probes.py), pickled by reference both ways
    sys.path.insert(0, os.environ["UNIAD_GRADE_WORKER"])


def pytest_configure(config):
    config.addinivalue_line("markers", "points(n, category): what a graded test is worth; a hidden one's category")
    config.addinivalue_line("markers", "by_hand(why, project): what the part may not call")


class PartFailed(Exception):
    """The part's call failed; the message is the feedback."""


def unplain(x):
    """An answer of the student process back as tensors, numpy values and plain containers (probes.plain)."""
    if isinstance(x, dict) and "__numpy__" in x:
        return x["__numpy__"].numpy() if x["__numpy__"] is not None else np.array([], dtype=object)
    if isinstance(x, dict) and "__graph__" in x:  # a tensor that came back with requires_grad
        return x["__graph__"].requires_grad_(True)
    if isinstance(x, dict) and "__numpy_scalar__" in x:
        return np.dtype(x["dtype"]).type(x["__numpy_scalar__"])
    if isinstance(x, dict):
        return {k: unplain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(unplain(v) for v in x)
    return x


def send(stream, message: dict) -> None:
    buf = io.BytesIO()
    torch.save(message, buf)
    stream.write(struct.pack("<Q", buf.tell()) + buf.getvalue())
    stream.flush()


class Process:
    """The student process of one assignment's tree; started on first use and after a crash or a timeout."""

    def __init__(self):
        self.proc, self.broken = None, ""

    def start(self):
        self.tree = os.environ["UNIAD_GRADE_TREE"]  # set by the runner for each assignment
        self.folder = os.environ["UNIAD_GRADE_WORKER"]
        self.denied = [p for p in os.environ.get("UNIAD_GRADE_DENIED", "").split(os.pathsep) if p]
        self.scratch = os.path.join(self.folder, "scratch")
        os.makedirs(self.scratch, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("UNIAD_GRADE_", "PYTHON"))}
        env.update(PYTHONDONTWRITEBYTECODE="1", OMP_NUM_THREADS=env.get("OMP_NUM_THREADS", "1"))
        self.proc = subprocess.Popen([sys.executable, "-I", "-B", os.path.join(self.folder, "grader_worker.py")],
                                     cwd=self.scratch, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=open(os.path.join(self.scratch, "output.txt"), "wb"),
                                     start_new_session=True)
        send(self.proc.stdin, {"tree": self.tree, "scratch": self.scratch, "denied": self.denied})
        started = self.answer(180.0, "importing the package")
        self.broken = "" if started.get("ok") else failure(started)

    def answer(self, seconds: float, doing: str) -> dict:
        """The next message of the process, read as data only; a stop or a timeout become an error answer."""
        out, deadline, data = self.proc.stdout, time.time() + seconds, b""
        need = 8
        while len(data) < need:
            left = deadline - time.time()
            ready = select.select([out], [], [], max(left, 0))[0] if left > 0 else []
            if not ready:
                self.stop()
                return {"ok": False, "kind": "Timeout", "message": f"{doing} ran past {seconds:g} s and did not stop "
                        "(an endless loop?)", "where": ""}
            chunk = os.read(out.fileno(), need - len(data))
            if not chunk:
                code = self.proc.wait()
                self.proc = None
                return {"ok": False, "kind": "Stopped", "message": f"the part's process stopped during {doing} "
                        f"(exit status {code}){self.last_words()}", "where": ""}
            data += chunk
            if len(data) == 8 and need == 8:
                need = 8 + struct.unpack("<Q", data)[0]
        try:
            return torch.load(io.BytesIO(data[8:]), weights_only=True)  # never runs code of the submission
        except Exception as e:
            self.stop()
            return {"ok": False, "kind": "Unreadable", "message": f"the part's answer could not be read ({e})"[:300],
                    "where": ""}

    def last_words(self) -> str:
        """The last line the process wrote before its stdout and stderr went to its own file (start-up errors)."""
        try:
            with open(os.path.join(self.scratch, "output.txt"), "rb") as f:
                f.seek(max(f.seek(0, 2) - 400, 0))
                lines = f.read().decode(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return f": {lines[-1][:300]}" if lines and "Error" in lines[-1] else ""

    def stop(self):
        if self.proc is not None:
            try:
                os.killpg(self.proc.pid, 9)
            except (ProcessLookupError, PermissionError):
                self.proc.kill()
            self.proc.wait()
            self.proc = None

    def call(self, request: dict, seconds: float) -> dict:
        if self.proc is None:
            self.start()
        if self.broken:
            return {"ok": False, "kind": "Broken", "message": self.broken, "where": ""}
        try:
            send(self.proc.stdin, dict(request, timeout=max(seconds, 0.1), budget=TIMEOUT_S))
        except (BrokenPipeError, OSError):
            self.stop()
            return {"ok": False, "kind": "Stopped", "message": "the part's process stopped", "where": ""}
        answer = self.answer(seconds + 5.0, "this test")
        if answer.get("kind") == "Timeout":  # killed: the part did not even stop at its alarm
            answer["message"] = f"this test ran past {TIMEOUT_S:g} s and did not stop (an endless loop?)"
        return answer


def failure(answer: dict) -> str:
    """One line a student can act on, from an error answer."""
    kind, message, at = answer.get("kind", ""), " ".join(str(answer.get("message", "")).split()), answer.get("where")
    if kind == "NotImplementedError":
        return f"not written yet: {message}"
    if kind in ("ByHand", "Loops", "Timeout", "Stopped", "Broken", "Unreadable"):
        return message
    return f"{kind}: {message}" + (f" ({at})" if at else "")


PROCESS = Process()


def pytest_sessionstart(session):
    PROCESS.stop()
    PROCESS.broken = ""


BANNED_NAMES = ("scaled_dot_product_attention", "multi_head_attention_forward", "MultiheadAttention", "Transformer",
                "sklearn", "scipy", "torchmetrics", "kernels")
LOOPS = (ast.For, ast.While, ast.AsyncFor, ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)


def part_source(assignment: str, tree: str) -> list[tuple[str, int, ast.AST]]:
    """[(file, the line before the def, the function's syntax tree)] of the parts of `assignment` in the submission's
    `tree`, read here, in the grader's process, where the submission's code never runs (a part that does not
    compile is left to the run)."""
    from uniad_mini.course.assignments import BY_NAME
    from uniad_mini.course.grading import function_span, module_of

    package, out = os.path.join(tree, "uniad_mini"), []
    for qualname in BY_NAME[assignment].functions:
        try:
            rel, names = module_of(qualname, Path(package))
            lines = open(os.path.join(package, rel)).read().splitlines(keepends=True)
            start, end = function_span(lines, names)
            source = "".join(lines[start:end])
            indent = len(source) - len(source.lstrip())
            tree = ast.parse("\n".join(line[indent:] for line in source.splitlines()))
        except (Exception, SyntaxError):
            continue
        out.append((f"uniad_mini/{rel}", start, tree))
    return out


def static_refusal(assignment: str, project: tuple[str, ...], loops: bool) -> str:
    """What the part's own source shows that its task forbids: a banned name, or with `loops` a loop; "" if none.
    The same rules as the student process's guard, checked where the submission cannot reach them."""
    banned = BANNED_NAMES + tuple(p.rsplit(".", 1)[1] for p in project)
    for path, start, tree in part_source(assignment, os.environ["UNIAD_GRADE_TREE"]):
        for node in ast.walk(tree):
            names = [getattr(node, "id", None), getattr(node, "attr", None)]
            names += [a.name for a in getattr(node, "names", [])] + [getattr(node, "module", None)]
            if isinstance(node, ast.Call):  # getattr(F, "scaled_dot_..."), import_module("sklearn"): not a docstring
                names += [a.value for a in node.args if isinstance(a, ast.Constant) and isinstance(a.value, str)]
            hit = next((b for b in banned for n in names if n and re.search(rf"\b{b}\b", n)), None)
            if hit:
                return f"by hand: this part names {hit} ({path}, line {start + node.lineno}), which this " \
                       "assignment asks you to write yourself"
            if loops and isinstance(node, LOOPS):
                return f"without loops: this part loops ({path}, line {start + node.lineno}); the task asks for " \
                       "tensor operations on all of it at once"
    return ""


@pytest.fixture
def student(request):
    """Run a part of the submission in the student process, under this test's by-hand rules and time budget."""
    marker = request.node.get_closest_marker("by_hand")
    why = marker.kwargs.get("why", DEFAULT_WHY) if marker else DEFAULT_WHY
    project = tuple(marker.kwargs.get("project", ())) if marker else ()
    deadline = time.time() + TIMEOUT_S
    assignment = request.node.path.stem[len("test_graded_"):]

    def call(target, *args, patch=None, seed=None, lines=None, grad=None, after=False, **kwargs):
        refused = static_refusal(assignment, project, lines is not None)
        if refused:
            raise PartFailed(refused)
        answer = PROCESS.call({"target": target, "args": args, "kwargs": kwargs, "patch": patch, "seed": seed,
                               "lines": lines, "grad": grad, "after": after, "why": why, "project": project},
                              deadline - time.time())
        if not answer.get("ok"):
            raise PartFailed(failure(answer))
        result = unplain(answer["result"])
        if grad is not None:
            return result, unplain(answer["grads"])
        return (result, unplain(answer["args"])) if after else result

    return call


def pytest_sessionfinish(session, exitstatus):
    PROCESS.stop()


def describe(x) -> str:
    """A short description of a test input: a tensor's shape and dtype, a number, a tuple of those."""
    if isinstance(x, torch.Tensor):
        return f"tensor{tuple(x.shape)} {str(x.dtype).replace('torch.', '')}"
    if isinstance(x, (tuple, list)):
        return "(" + ", ".join(describe(v) for v in x) + ")"
    return repr(x)


class Expect:
    """Failures that say what was expected, what came back and on which input."""

    @staticmethod
    def fail(what: str, expected, got, given: str = ""):
        where = f"; input: {given}" if given else ""
        raise AssertionError(f"{what}: expected {expected}, got {got}{where}")

    def close(self, got, expected, what: str, given: str = "", atol: float = 1e-5, rtol: float = 1e-4):
        if not isinstance(got, torch.Tensor):
            self.fail(what, f"a tensor {describe(expected)}", type(got).__name__, given)
        if got.shape != expected.shape:
            self.fail(what + " (shape)", tuple(expected.shape), tuple(got.shape), given)
        got_, exp_ = got.detach().double(), expected.detach().double()
        bad = ~torch.isclose(got_, exp_, atol=atol, rtol=rtol, equal_nan=False)
        if bad.any():
            i = tuple(int(j) for j in bad.nonzero()[0])
            self.fail(what + f" at index {i} ({int(bad.sum())} of {bad.numel()} values off)",
                      f"{exp_[i].item():.6g}", f"{got_[i].item():.6g}", given)

    def equal(self, got, expected, what: str, given: str = ""):
        if got != expected:
            self.fail(what, expected, got, given)


@pytest.fixture
def expect():
    return Expect()
