"""The fast path beside the plain one: the same math, fewer passes over memory, one switch (`Config.fast`).

The plain path (attention.attend's "torch" lines, training.train_step, torch.optim.AdamW's per-tensor loop)
is the reference a student reads. The fast path changes how the numbers are computed, not which:

    attention   PyTorch's fused scaled_dot_product_attention with the neighbor mask as a bool tensor
                (backend "sdpa"), instead of q k^T, / sqrt(d), masked_fill, softmax, @ v as five passes
    optimizer   AdamW / Adam with fused=True (one kernel over all parameters; foreach where fused is missing)
    clipping    the gradient norm with foreach=True (one call over the list instead of one per tensor)
    compile     optional (`Config.compile`): torch.compile of the reconstructor with the CPU inductor (C++);
                where no C++ compiler exists it says so in one line and runs eager

tests/test_fastpath.py checks each against the plain path (forward, gradients, weights after steps).
Speed: `uniad-mini perf --only training inference` times both side by side (docs/performance.md).
"""
from __future__ import annotations

import os
import shutil
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import torch
import torch.nn as nn
import torch.nn.functional as F


def attention_backend(backend: str, fast: bool) -> str:
    """The attention backend a model is built with: "auto" becomes "sdpa" on every device on the fast path
    (on CUDA it already is; on this project's CPU SDPA measured faster, docs/performance.md)."""
    return "sdpa" if fast and backend == "auto" else backend


def make_fast_optimizer(params, optimizer: str, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """The optimizer of `training.make_optimizer`, as one fused kernel (foreach where fused is missing)."""
    if optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, weight_decay=weight_decay, foreach=True)
    cls = torch.optim.Adam if optimizer == "adam" else torch.optim.AdamW
    params = list(params)
    try:
        return cls(params, lr=lr, weight_decay=weight_decay, fused=True)
    except (RuntimeError, ValueError):  # an older torch or a device without the fused kernel
        return cls(params, lr=lr, weight_decay=weight_decay, foreach=True)


def fast_train_step(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, grad_clip: float,
                    weight: float = 1.0, precision: str = "fp32") -> torch.Tensor:
    """training.train_step with the gradient norm clipped in one foreach call; the same arguments, the same loss."""
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
        out = model(x)
    loss = F.mse_loss(out.float(), x) * weight
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip:
        nn.utils.clip_grad_norm_(model.parameters(), grad_clip, foreach=True)
    opt.step()
    return loss.detach()


def cxx_compiler() -> str | None:
    """The C++ compiler torch.compile's CPU inductor would call ($CXX, else g++ / clang++ / c++), or None."""
    for name in (os.environ.get("CXX"), "g++", "clang++", "c++"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def _stderr(line: str):
    print(line, file=sys.stderr, flush=True)


class Compiled:
    """`module` compiled with torch.compile, falling back to `module` itself (with one line) when it cannot be.

    Called like `module`; `parameters()` are `module`'s own, so saving, loading and evaluating `module` is
    unaffected. Compilation happens on the first call and again for each new input shape (a smaller last
    batch) or mode; `compile_seconds` adds up those calls, to be reported apart from the steps.
    """

    def __init__(self, module: nn.Module, say=_stderr):
        self.module, self.say = module, say
        self.compiled, self.compile_seconds, self._seen = None, 0.0, set()
        if cxx_compiler() is None:
            say("torch.compile: no C++ compiler (g++, clang++ or $CXX) found; running eager")
        else:
            self.compiled = torch.compile(module, dynamic=False)

    def parameters(self):
        return self.module.parameters()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.compiled is None:
            return self.module(x)
        key = (tuple(x.shape), x.dtype, torch.is_autocast_enabled(x.device.type), self.module.training)
        if key in self._seen:
            return self.compiled(x)
        start = time.perf_counter()
        try:
            y = self.compiled(x)
        except Exception as e:  # noqa: BLE001 -- any compiler failure: said once, eager from then on
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            self.say(f"torch.compile failed ({type(e).__name__}: {first[:200]}); running eager")
            self.compiled = None
            return self.module(x)
        self._seen.add(key)
        self.compile_seconds += time.perf_counter() - start
        return y


def prefetched_batches(data, batch_size: int, collate, workers: int = 2):
    """collate([data[i] ...]) for consecutive batches of `data`, in order, the same as a plain loop yields.

    While the caller computes on one batch, `workers` threads decode the items of the next (PIL and torch
    release the GIL while they decode and resize); workers=0 is the plain loop. An item that raises, raises here,
    when its batch is reached.
    """
    n = len(data)
    starts = range(0, n, batch_size)
    if workers <= 0:
        for s in starts:
            yield collate([data[i] for i in range(s, min(s + batch_size, n))])
        return
    with ThreadPoolExecutor(workers) as pool:
        def submit(s):
            return [pool.submit(data.__getitem__, i) for i in range(s, min(s + batch_size, n))]

        ahead = submit(0)
        for s in starts:
            items = [f.result() for f in ahead]
            ahead = submit(s + batch_size) if s + batch_size < n else []
            yield collate(items)
