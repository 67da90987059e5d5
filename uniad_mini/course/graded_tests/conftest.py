"""The graded tests' helpers (implements no part of the paper): points, the "by hand" guard, the oracle switch and
feedback a student can act on.

    @pytest.mark.points(n)      what a test is worth; an assignment's points are the sum over its tests
    @pytest.mark.by_hand(why=..., project=(...))
                                while the test runs, PyTorch's own attention (scaled_dot_product_attention, at the
                                Python and at the ATen level, multi_head_attention_forward, nn.MultiheadAttention,
                                nn.Transformer*), the project's Triton kernels (uniad_mini.kernels), scikit-learn, SciPy, torchmetrics and
                                the named functions of the project (`project`: "metrics.roc_curve", ...) raise ByHand
                                with `why`: a part that reaches for them fails that test, saying so
    oracle()                    (a fixture) a context in which the test itself may call them, for its expected values
    expect                      (a fixture) expect.close(got, expected, what, given) fails with expected / got / input

This file is copied beside the graded tests into the grader's own folder, so it never comes from a student copy.
"""
from __future__ import annotations

import contextlib
import importlib.util
import os
import sys

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

BANNED_FUNCTIONS = {F.scaled_dot_product_attention: "torch.nn.functional.scaled_dot_product_attention",
                    F.multi_head_attention_forward: "torch.nn.functional.multi_head_attention_forward"}
BANNED_ATEN = ("scaled_dot_product", "_native_multi_head_attention", "_transformer_encoder_layer")
BANNED_MODULES = (nn.MultiheadAttention, nn.Transformer, nn.TransformerEncoder, nn.TransformerDecoder,
                  nn.TransformerEncoderLayer, nn.TransformerDecoderLayer)
BANNED_PACKAGES = ("sklearn", "scipy", "torchmetrics", "uniad_mini.kernels")  # torch itself may import triton


class ByHand(RuntimeError):
    """A graded part called what its assignment asks the student to write."""


def pytest_configure(config):
    config.addinivalue_line("markers", "points(n): what a graded test is worth")
    config.addinivalue_line("markers", "by_hand(why, project): the part may not call PyTorch's attention, "
                                       "the project's other backends or scikit-learn")


class _Guard:
    """The state of one by-hand test: `paused` while the test computes its own expected values."""

    def __init__(self, why: str, project: tuple[str, ...]):
        self.why, self.paused = why, False
        self.functions = {tuple(p.rsplit(".", 1)) for p in project}  # {("metrics", "roc_curve"), ...}
        self.folders = []
        for name in BANNED_PACKAGES:
            try:
                spec = importlib.util.find_spec(name)
            except (ImportError, ValueError):
                spec = None
            if spec is not None and spec.submodule_search_locations:
                self.folders += [os.path.join(p, "") for p in spec.submodule_search_locations]

    def refuse(self, what: str):
        raise ByHand(f"by hand: this part called {what}, which this assignment asks you to write yourself ({self.why})")

    def trace(self, frame, event, arg):  # sys.settrace: every Python function call while the test runs
        if event == "call" and not self.paused:
            path = frame.f_code.co_filename
            if any(path.startswith(f) for f in self.folders):
                self.refuse(f"code of {path}")
            module = os.path.splitext(os.path.basename(path))[0]
            if (module, frame.f_code.co_name) in self.functions and f"uniad_mini{os.sep}" in path:
                self.refuse(f"the project's own {module}.{frame.f_code.co_name}")
        return None


class _Functions(TorchFunctionMode):
    def __init__(self, guard):
        super().__init__()
        self.guard = guard

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in BANNED_FUNCTIONS and not self.guard.paused:
            self.guard.refuse(BANNED_FUNCTIONS[func])
        return func(*args, **(kwargs or {}))


class _Kernels(TorchDispatchMode):
    def __init__(self, guard):
        super().__init__()
        self.guard = guard

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if not self.guard.paused and any(b in func.name() for b in BANNED_ATEN):
            self.guard.refuse(f"PyTorch's fused attention ({func.name()})")
        return func(*args, **(kwargs or {}))


_current: list[_Guard] = []


def _warm_up():
    """Enter both modes once at import, so that PyTorch's lazy imports do not run under the tracer of a test."""
    guard = _Guard("", ())
    guard.paused = True
    q = torch.randn(1, 1, 4, 2, requires_grad=True)
    with _Functions(guard), _Kernels(guard):
        (F.scaled_dot_product_attention(q, q, q).sum() + (q @ q.transpose(-2, -1)).softmax(-1).sum()).backward()


_warm_up()


@pytest.fixture(autouse=True)
def _by_hand_guard(request, monkeypatch):
    marker = request.node.get_closest_marker("by_hand")
    if marker is None:
        yield
        return
    guard = _Guard(marker.kwargs.get("why", "see its notebook"), tuple(marker.kwargs.get("project", ())))

    def refused(self, *args, **kwargs):
        guard.refuse(f"torch.nn.{type(self).__name__}")

    for cls in BANNED_MODULES:
        monkeypatch.setattr(cls, "forward", refused)
    _current.append(guard)
    previous = sys.gettrace()
    sys.settrace(guard.trace)
    try:
        with _Functions(guard), _Kernels(guard):
            yield
    finally:
        sys.settrace(previous)
        _current.pop()


@pytest.fixture
def oracle():
    """`with oracle(): ...` lets the test itself use what the guard refuses to the part under test."""

    @contextlib.contextmanager
    def allowed():
        guard = _current[-1] if _current else None
        was, tracer = (guard.paused if guard else False), sys.gettrace()
        if guard:
            guard.paused = True
            sys.settrace(None)  # an oracle runs at full speed
        try:
            yield
        finally:
            if guard:
                guard.paused = was
                sys.settrace(tracer)

    return allowed


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
