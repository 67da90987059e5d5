"""Public stand-ins and the by-hand guard of the grader's student process (implements no part of the paper).

Copied beside worker.py as `grader_probes` (the submission's own copy of this file is never used). Nothing here is
a solution: where a graded part needs another assignment's part, a stand-in takes its place (a mask from two loops,
PyTorch's own attention, simple layers), so that each part is graded on its own.

    Guard                    while a part runs: PyTorch's attention (Python and ATen level), nn.MultiheadAttention /
                             nn.Transformer*, scikit-learn, SciPy, torchmetrics and named project functions refuse
                             (ByHand); with `lines`, more than that many lines of the submission's Python refuse
                             (Loops): a task that asks for no loops is graded at the size the model uses
    patch, gradients, plain  a request's stand-ins, the gradients it asks for, its answer as plain data
"""
import contextlib
import importlib
import importlib.util
import os
import sys

import numpy as np
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
BANNED_PACKAGES = ("sklearn", "scipy", "torchmetrics")
GUARD = None  # the process's one Guard
target_of = None  # "transformer.feature_jitter" -> the submission's function (set by the worker)


class ByHand(BaseException):
    """A part called what its assignment asks the student to write (a BaseException: `except Exception` keeps on)."""


class Loops(BaseException):
    """A part ran more lines of Python than a task without loops needs."""


class _Functions(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in BANNED_FUNCTIONS and not GUARD.paused:
            GUARD.refuse(BANNED_FUNCTIONS[func])
        return func(*args, **(kwargs or {}))


class _Kernels(TorchDispatchMode):
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if not GUARD.paused and any(b in func.name() for b in BANNED_ATEN):
            GUARD.refuse(f"PyTorch's fused attention ({func.name()})")
        return func(*args, **(kwargs or {}))


class Guard:
    """The by-hand rules and the line count of one call; `paused` while a stand-in runs."""

    def __init__(self, tree: str):
        global GUARD
        GUARD = self
        self.tree = os.path.join(os.path.realpath(tree), "uniad_mini", "")
        self.why, self.functions, self.limit, self.lines, self.paused, self.refused = "", set(), None, 0, False, ""
        self.folders = []
        for name in BANNED_PACKAGES:
            spec = importlib.util.find_spec(name) if importlib.util.find_spec(name.split(".")[0]) else None
            self.folders += [os.path.join(p, "") for p in (spec.submodule_search_locations or [])] if spec else []
        self.paused = True  # enter both modes once, so that PyTorch's lazy imports do not run under a part's tracer
        q = torch.randn(1, 1, 4, 2, requires_grad=True)
        with _Functions(), _Kernels():
            (F.scaled_dot_product_attention(q, q, q).sum() + (q @ q.transpose(-2, -1)).softmax(-1).sum()).backward()
        self.paused = False

    def refuse(self, what: str):
        self.refused = self.refused or (f"by hand: this part called {what}, which this assignment asks you to write "
                                        f"yourself ({self.why})")
        raise ByHand(self.refused)

    def trace(self, frame, event, arg):  # sys.settrace: every Python call while the part runs
        path = frame.f_code.co_filename
        if event != "call" or self.paused or path == __file__:  # the guard's own modes are not the submission
            return None
        if any(path.startswith(f) for f in self.folders):
            self.refuse(f"code of {path}")
        if path.startswith(self.tree):
            module = os.path.relpath(path, self.tree)[:-3].replace(os.sep, ".")
            if (module, frame.f_code.co_name) in self.functions:
                self.refuse(f"the project's own {module}.{frame.f_code.co_name}")
            return self.count if self.limit is not None else None
        return None

    def count(self, frame, event, arg):
        if event == "line" and not self.paused:
            self.lines += 1
            if self.lines > self.limit:
                self.refused = (f"without loops: this part ran more than {self.limit} lines of Python here "
                                f"({os.path.relpath(frame.f_code.co_filename, os.path.dirname(self.tree[:-1]))}, "
                                f"line {frame.f_lineno}); the task asks for tensor operations on all of it at once")
                raise Loops(self.refused)
        return self.count

    @contextlib.contextmanager
    def on(self, why: str, project=(), lines=None):
        self.why, self.limit, self.lines, self.refused = why or "see its notebook", lines, 0, ""
        self.functions = {tuple(p.rsplit(".", 1)) for p in project}  # {("metrics", "roc_curve"), ...}
        saved = {cls: cls.forward for cls in BANNED_MODULES}

        def refused(module, *args, **kwargs):
            self.refuse(f"torch.nn.{type(module).__name__}")

        for cls in BANNED_MODULES:
            cls.forward = refused
        sys.settrace(self.trace)
        try:
            with _Functions(), _Kernels():
                yield self
        finally:
            sys.settrace(None)
            for cls, forward in saved.items():
                cls.forward = forward


@contextlib.contextmanager
def paused():
    """A stand-in runs outside the rules (it may call PyTorch's attention) and outside the line count."""
    was = GUARD.paused if GUARD else False
    if GUARD:
        GUARD.paused = True
    try:
        yield
    finally:
        if GUARD:
            GUARD.paused = was


# ---- a request's stand-ins, gradients and answer ---------------------------------------------------------------


def patch(patches: dict):
    """{"attention._cached_mask": "probes.loop_mask"}: set each for the call; the function that undoes it."""
    undo = []
    for name, stand_in in patches.items():
        owner_name, attr = name.rsplit(".", 1)
        owner = target_of(owner_name) if "." in owner_name else importlib.import_module("uniad_mini." + owner_name)
        undo.append((owner, attr, owner.__dict__.get(attr, getattr(owner, attr))))
        setattr(owner, attr, target_of(stand_in))
    return lambda: [setattr(o, a, v) for o, a, v in reversed(undo)]


def gradients(result, args, grad):
    """grad = (weights, [argument indices]): d(sum(result * weights)) / d(those arguments); None where unused."""
    weights, which = grad
    return list(torch.autograd.grad((result * weights).sum(), [args[i] for i in which], allow_unused=True))


def plain(x):
    """An answer as tensors, numbers, strings and containers (what torch.load(weights_only=True) reads); numpy values
    and other objects as tagged dicts that the grader turns back (conftest.py, `unplain`)."""
    if isinstance(x, torch.Tensor):
        return {"__graph__": x.detach().clone()} if x.requires_grad else x.detach().clone()
    if isinstance(x, np.ndarray):
        return {"__numpy__": torch.from_numpy(np.ascontiguousarray(x)) if x.dtype != object else None,
                "dtype": str(x.dtype)}
    if isinstance(x, np.generic):
        return {"__numpy_scalar__": x.item(), "dtype": str(x.dtype)}
    if x is None or isinstance(x, (bool, int, float, str)):
        return x
    if isinstance(x, (list, tuple)):
        return type(x)(plain(v) for v in x) if type(x) in (list, tuple) else [plain(v) for v in x]
    if isinstance(x, dict):
        return {str(k): plain(v) for k, v in x.items()}
    if isinstance(x, nn.Module):
        return {"__module__": type(x).__name__, "state": plain(dict(x.state_dict())),
                "calls": {name: plain(m.calls) for name, m in x.named_modules() if isinstance(m, Spy)},
                "training": x.training}
    return {"__object__": type(x).__qualname__, "repr": repr(x)[:200]}


# ---- stand-ins for other assignments' parts ---------------------------------------------------------------------


def loop_mask(h, w, kh, kw, device="cpu"):
    """(N, N) bool, True where key k is blocked for query q (within half a window of it in rows and in columns, the
    query itself included), by two loops over the tokens: the stand-in for the masks assignment."""
    m = torch.zeros(h * w, h * w, dtype=torch.bool)
    for q in range(h * w):
        for k in range(h * w):
            m[q, k] = abs(q // w - k // w) <= kh // 2 and abs(q % w - k % w) <= kw // 2
    return m.to(device)


def pytorch_attention(q, k, v, grid=None, window=None, dropout_p=0.0):
    """Attention by PyTorch's own kernel, the mask from the loops: the stand-in for the attention assignment."""
    with paused():
        mask = None
        if window is not None:
            kh, kw = (window, window) if isinstance(window, int) else window
            mask = ~loop_mask(grid[0], grid[1], kh, kw, q.device)  # True = may attend
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)


def encoder_stand_in(self, x, pos, mask_args):  # EncoderLayer.forward's stand-in: no attention at all
    return self.norm1(x + self.ffn(x))


def decoder_stand_in(self, t, enc, prev, pos, mask_args):  # DecoderLayer.forward's stand-in
    return self.norm1(t + 0.5 * enc + 0.25 * prev)


def keep_tokens(self, tokens):  # ReconstructionTransformer.jitter_in_training's stand-in: no noise
    return tokens


def add_one(x, scale, prob=1.0):  # feature_jitter's stand-in, recording its settings
    JITTER_CALLS.append((float(scale), float(prob)))
    return x + 1


JITTER_CALLS: list = []


def jitter_calls_of(name, net, tokens):
    """The submission's `name`(net, tokens) with add_one as feature_jitter: (its result, [(scale, prob) per call])."""
    JITTER_CALLS.clear()
    return target_of(name)(net, tokens), list(JITTER_CALLS)


class Spy(nn.Module):
    """An attention module that records (query, key, value, mask arguments) of every call."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.calls = inner, []

    def forward(self, query, key, value, **mask_args):
        self.calls.append((query, key, value, mask_args))
        return self.inner(query, key, value, **mask_args)


class NoisyConv(nn.Module):
    """A 1x1 convolution that, like UniAD, corrupts its own input in training mode (a fixed offset here)."""

    def __init__(self, c=3):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(c, c, 1)

    def forward(self, x):  # (B, C, h, w)
        return self.conv(x + 0.5 if self.training else x)


def steps(model, x, lr, clip, weight, n):
    """`n` calls of the submission's train_step with one SGD optimizer; (losses, the model after them)."""
    from uniad_mini.training import train_step

    opt = torch.optim.SGD(model.parameters(), lr=lr)
    losses = [train_step(model, opt, x, clip, weight) for _ in range(n)]
    return losses, model


def decoder_starts(net, tokens):
    """Run `net` in eval mode; (its output, the query table(s), the input t of each decoder layer, their outputs)."""
    starts, outs = [], []

    def record(module, args, out):  # returns None: the layer's output stays its own
        starts.append(args[0])
        outs.append(out)

    hooks = [layer.register_forward_hook(record) for layer in net.decoder]
    with torch.no_grad():
        y = net.eval()(tokens)
    for h in hooks:
        h.remove()
    return y, [q.detach() for q in net.queries], starts, outs


def two_passes(fn, *args):
    """fn(*args) twice under no_grad (does a part draw fresh randomness, or not)."""
    with torch.no_grad():
        return fn(*args), fn(*args)


def same_object(name, index, *args, **kwargs):
    """Whether the submission's `name`(*args, **kwargs) gives back the very object args[index] (jitter switched off)."""
    return target_of(name)(*args, **kwargs) is args[index]


def repeat(name, n, *args, **kwargs):
    """n calls of the submission's `name`(*args, **kwargs), one after the other: their results."""
    fn = target_of(name)
    return [fn(*args, **kwargs) for _ in range(n)]


def forward_of(module, *args):
    """module(*args) under no_grad: a layer of the submission run on the grader's inputs."""
    with torch.no_grad():
        return module(*args)


class RecordingScorer(nn.Module):
    """A stand-in for a trained model in `unified.score_groups`, made by `fit_recorder`: it keeps the first feature
    value of each training image (the tests make it the image's id) in `seen`; score_features(feats (m, C, h, w))
    gives each image its own first value as its score and a (m, 2, 2) map filled with the mean id it trained on, and
    appends the ids it scored to `scored`."""

    def __init__(self, seen):
        super().__init__()
        self.register_buffer("seen", seen)
        self.register_buffer("scored", torch.zeros(0))

    def score_features(self, feats):  # (m, C, h, w) -> (m,), (m, 2, 2)
        ids = feats.flatten(1)[:, 0].float()
        self.scored = torch.cat([self.scored, ids])
        tag = self.seen.mean() if len(self.seen) else torch.tensor(-1.0)
        return ids.clone(), tag.expand(len(ids), 2, 2).clone()


def fit_recorder(cache):
    """The `fit` of `unified.score_groups`' tests: a RecordingScorer of a training Cache, and a record of the call."""
    model = RecordingScorer(cache.features.flatten(1)[:, 0].clone().float())
    FITTED.append(model)
    return model


FITTED: list = []


def scored_groups(groups, train, test):
    """The submission's unified.score_groups with fit_recorder: (scores, maps, [each fitted model], [each call of
    `each` as (name, test positions)])."""
    FITTED.clear()
    calls = []
    scores, maps = target_of("unified.score_groups")(groups, train, test, fit_recorder,
                                                      lambda name, model, at: calls.append((name, at)))
    return scores, maps, list(FITTED), calls
