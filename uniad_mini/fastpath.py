"""The fast path beside the plain one: the same math, fewer passes over memory, one switch (`Config.fast`).

The plain path (attention.attend's "torch" lines, training.train_step, torch.optim.AdamW's per-tensor loop)
is the reference a student reads. The fast path changes how the numbers are computed, not which:

    attention   PyTorch's fused scaled_dot_product_attention with the neighbor mask as a bool tensor
                (backend "sdpa"), instead of q k^T, / sqrt(d), masked_fill, softmax, @ v as five passes
    optimizer   AdamW / Adam with fused=True (one kernel over all parameters; foreach where fused is missing)
    clipping    the gradient norm with foreach=True (one call over the list instead of one per tensor)
    backbone    inference copy with each BatchNorm folded into its convolution, channels-last (`fold_backbone`)
    cache       the next batch decoded in threads while the backbone runs (`prefetched_batches`)
    compile     optional (`Config.compile`, off): torch.compile of the reconstructor with the CPU inductor (C++);
                where no C++ compiler exists it says so in one line and runs eager

tests/test_fastpath.py checks each against the plain path (forward, gradients, steps, loops, features, cache).
Speed: `uniad-mini bench-speed --only training inference` times both side by side (docs/performance.md).
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


class FoldedConv(nn.Module):
    """backbone.SameConv2d followed by its (frozen, eval-mode) BatchNorm as one convolution:

        BN(conv(x, W)) = conv(x, W * g) + (beta - mean * g),   g = gamma / sqrt(var + eps) per output channel

    with TensorFlow's "SAME" padding passed to the convolution itself where it is symmetric (no padded copy
    of x; a 1 x 1 convolution pads nothing), and F.pad only where it is not (stride 2: one extra pixel)."""

    def __init__(self, conv: nn.Conv2d, bn: nn.BatchNorm2d | None):
        super().__init__()
        w = conv.weight.detach().clone()
        b = conv.bias.detach().clone() if conv.bias is not None else torch.zeros(w.shape[0])
        if bn is not None:
            g = bn.weight.detach() / torch.sqrt(bn.running_var.detach() + bn.eps)
            w, b = w * g[:, None, None, None], bn.bias.detach() + (b - bn.running_mean.detach()) * g
        self.weight, self.bias = nn.Parameter(w, requires_grad=False), nn.Parameter(b, requires_grad=False)
        self.kernel_size, self.stride, self.dilation, self.groups = conv.kernel_size, conv.stride, conv.dilation, conv.groups

    def forward(self, x):
        pads = []
        for size, k, s in zip(x.shape[:-3:-1], self.kernel_size[::-1], self.stride[::-1]):  # W then H
            total = max((-(-size // s) - 1) * s + k - size, 0)
            pads += [total // 2, total - total // 2]
        if pads[0] == pads[1] and pads[2] == pads[3]:  # symmetric: the convolution pads without a copy
            return F.conv2d(x, self.weight, self.bias, self.stride, (pads[2], pads[0]), self.dilation, self.groups)
        return F.conv2d(F.pad(x, pads), self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


_FOLD = {"_expand_conv": "_bn0", "_depthwise_conv": "_bn1", "_project_conv": "_bn2",  # MBConv
         "_conv_stem": "_bn0", "_conv_head": "_bn1"}  # EfficientNet


def fold_backbone(backbone: nn.Module, channels_last: bool = True) -> nn.Module:
    """An inference copy of a frozen backbone.EfficientNet: every convolution with its BatchNorm folded in
    (`FoldedConv`), BatchNorms replaced by identities, weights in channels-last memory order (the layout the
    CPU's oneDNN convolutions run fastest in). The same function of the images, within float rounding."""
    import copy

    fast = copy.deepcopy(backbone).eval()
    for module in list(fast.modules()):
        for conv_name, bn_name in _FOLD.items():
            conv = getattr(module, conv_name, None)
            bn = getattr(module, bn_name, None)
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                setattr(module, conv_name, FoldedConv(conv, bn))
                setattr(module, bn_name, nn.Identity())
    fast.requires_grad_(False)
    return fast.to(memory_format=torch.channels_last) if channels_last else fast
