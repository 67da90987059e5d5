"""Where a training step's time goes: FLOPs counted, this machine's matrix-multiply peak, and an op-by-op table.

    uniad-mini bench-speed --only profile      (the speed tables: speed.py)

1. FLOPs of one training step of the reconstruction transformer, counted by hand from the layer sizes
   (`step_flops`) and by torch's FLOP counter (`torch.utils.flop_counter.FlopCounterMode`) on a real step.
   A matrix product (m x k) @ (k x n) is 2 m k n FLOPs (a multiply and an add). Forward, per token:

       input and output projections     2 (C D + D C)
       encoder layer                    2 (4 D^2 + 2 D F) + attention 2 (2 N D)        (q k^T and weights @ v)
       decoder layer                    2 (8 D^2 + 2 D F) + 2 x attention 2 (2 N D)    (two attentions)

   The backward pass costs two products per forward product (the gradient of each operand), except the input
   projection, whose input (the features) needs no gradient: step = 3 x forward - 2 T C D, T = B N tokens.
2. The measured peak of one (m x k) @ (k x n) product in fp32 and in bf16, at a square 1024 and at the
   step's own FFN shape (T x D) @ (D x F): the roof the step's GFLOP/s is measured against.
3. The self CPU time per op, from torch.profiler, over a few steps: what a step spends outside the products.
"""
from __future__ import annotations

import statistics
import time

import torch
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode

from ..evaluation import markdown_table


def step_flops(batch: int, tokens: int, channels: int, dim: int, ffn: int, layers: int) -> int:
    """FLOPs of one training step (forward + backward), counted by hand (the module docstring's formula)."""
    T, N, C, D, F = batch * tokens, tokens, channels, dim, ffn
    attention = 2 * (2 * N * D)  # q k^T and weights @ v, per query token, all heads together
    per_token = 2 * (C * D + D * C)
    per_token += layers * (2 * (4 * D * D + 2 * D * F) + attention)
    per_token += layers * (2 * (8 * D * D + 2 * D * F) + 2 * attention)
    return 3 * T * per_token - 2 * T * C * D


def counted_flops(step) -> int:
    """FLOPs of one call of `step` as torch's FlopCounterMode counts them (matrix products and attention)."""
    with FlopCounterMode(display=False) as counter:
        step()
    return counter.get_total_flops()


def matmul_gflops(m: int, k: int, n: int, dtype: torch.dtype, repeats: int = 5) -> float:
    """GFLOP/s of (m x k) @ (k x n) in `dtype`: the median of `repeats` timings of a few products each."""
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(m, k, generator=g).to(dtype), torch.randn(k, n, generator=g).to(dtype)
    a @ b  # warm-up
    inner = max(1, int(2e9 // (2 * m * k * n)))  # about 2 GFLOP per timing
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(inner):
            a @ b
        times.append((time.perf_counter() - start) / inner)
    return 2 * m * k * n / statistics.median(times) / 1e9


def peak_table(tokens: int, dim: int, ffn: int, repeats: int = 5) -> tuple[str, float]:
    """A Markdown table of fp32 and bf16 matmul GFLOP/s, and the fp32 peak at the step's FFN shape."""
    shapes = {"1024 x 1024 @ 1024 x 1024": (1024, 1024, 1024),
              f"the FFN's {tokens} x {dim} @ {dim} x {ffn}": (tokens, dim, ffn)}
    rows, roof = [], {}
    for name, (m, k, n) in shapes.items():
        got = {dt: matmul_gflops(m, k, n, dt, repeats) for dt in (torch.float32, torch.bfloat16)}
        roof[name] = got
        rows.append([name, f"{got[torch.float32]:.0f}", f"{got[torch.bfloat16]:.0f}",
                     f"{got[torch.bfloat16] / got[torch.float32]:.2f}x"])
    table = markdown_table(["product", "fp32 GFLOP/s", "bf16 GFLOP/s", "bf16 / fp32"], rows)
    return table, max(v for got in roof.values() for v in got.values())


def op_table(step, steps: int = 5, rows: int = 12) -> str:
    """The ops of `step` by self CPU time (torch.profiler, `steps` calls after a warm-up), per step and share."""
    step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events) or 1.0
    out = []
    for e in events[:rows]:
        out.append([f"`{e.key}`", f"{e.self_cpu_time_total / 1000 / steps:.1f}",
                    f"{100 * e.self_cpu_time_total / total:.0f}%", f"{e.count // steps}"])
    rest = sum(e.self_cpu_time_total for e in events[rows:])
    out.append(["everything else", f"{rest / 1000 / steps:.1f}", f"{100 * rest / total:.0f}%", ""])
    out.append(["**total (profiled)**", f"{total / 1000 / steps:.1f}", "100%", ""])
    return markdown_table(["op", "ms / step", "share", "calls / step"], out)


def timed(fn) -> float:
    """Seconds of one call of fn, waiting for a GPU to finish (a no-op on the CPU)."""
    t = time.perf_counter()
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - t


def interleaved(variants: dict, repeats: int, settle: int = 0) -> dict:
    """{name: median seconds} of the callables, timed in turn `repeats` times after one warm-up each, so that
    every variant sees the same load from other jobs (the cores may be shared). settle: untimed calls of the
    variant right before each timed one, so that it is timed in its own steady state (caches, allocator) as a
    program running only it would be, not just after another variant."""
    for fn in variants.values():
        fn()
    times = {k: [] for k in variants}
    for _ in range(repeats):
        for k, fn in variants.items():
            for _ in range(settle):
                fn()
            times[k].append(timed(fn))
    return {k: statistics.median(v) for k, v in times.items()}
