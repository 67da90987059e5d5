"""Benchmark: the fused neighbor-attention kernel against the other ways to compute the same thing.

    python -m uniad_mini.bench.kernel                   # B 8/64 x grids 14/28/56 x fp32/bf16, on a CUDA GPU
    python -m uniad_mini.bench.kernel --batch 8 --grids 14 --dtypes bf16 --out table.md
    python -m uniad_mini.bench.kernel --interpret-smoke # a tiny CPU run in Triton's interpreter
    python -m uniad_mini.bench.kernel --static [--json FILE]  # no GPU: the sm_90 code's loops (static.py)

Methods, all with the same 7x7 inverse window:
  fused   -- `uniad_mini.kernels.neighbor_attention` (this package)
  torch   -- `uniad_mini.attention.attend(backend="torch")`: scores, masked_fill, softmax, @ v
  sdpa    -- `torch.nn.functional.scaled_dot_product_attention` with a bool (N, N) mask
  flex    -- `torch.nn.attention.flex_attention`, compiled, with the same rule as a `mask_mod`

For each method it times the forward (under no_grad), the backward alone (autograd.grad through a
retained graph) and the forward + backward. Rates are *dense-equivalent*: FLOP = 4 B h N^2 d for the
forward (the two matmuls, masked keys counted, as in Triton's tutorial), 2.5x that for the backward.
Times are medians of `triton.testing.do_bench`, after one untimed forward + backward (which also runs
the fused kernels' autotuning). Prints a Markdown table, and writes it to FILE with `--out FILE`.
"""
from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
import time

DTYPE_NAMES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


def parse_args(argv=None):
    ap = argparse.ArgumentParser(prog="uniad-mini bench-kernel", description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, nargs="+", default=[8, 64])
    ap.add_argument("--grids", type=int, nargs="+", default=[14, 28, 56], help="square grid sides")
    ap.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], choices=sorted(DTYPE_NAMES))
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--head-dim", type=int, default=32)
    ap.add_argument("--window", type=int, default=7)
    ap.add_argument("--dropout", type=float, default=0.0, help="attention dropout (flex has none: skipped)")
    ap.add_argument("--methods", nargs="+", default=["fused", "torch", "sdpa", "flex"])
    ap.add_argument("--out", metavar="FILE", help="also write the table (Markdown) to FILE")
    ap.add_argument("--compile-check", action="store_true",
                    help="no GPU needed: compile the kernels for sm_90 and report registers/spills")
    ap.add_argument("--static", action="store_true",
                    help="no GPU needed: compile every kernel and config for sm_90 and count the SASS "
                    "instructions of each loop (--dtypes, --grids, --head-dim; dropout 0 and 0.1 or --dropout; "
                    "--kernels picks kernels)")
    ap.add_argument("--kernels", nargs="+", default=["fwd", "dkdv", "dq"], choices=["fwd", "dkdv", "dq"],
                    help="with --static: which kernels")
    ap.add_argument("--json", metavar="FILE", help="with --static: also write the rows as JSON")
    ap.add_argument("--first-config", action="store_true", help="with --static: only each kernel's default config")
    ap.add_argument("--interpret-smoke", action="store_true",
                    help="no GPU needed: one tiny shape on CPU in Triton's interpreter (timings meaningless)")
    return ap.parse_args(argv)


def make_methods(torch, grid, window, dropout_p, device, names):
    """name -> f(q, k, v), each computing the same neighbor-masked attention."""
    import torch.nn.functional as F

    from uniad_mini.attention import attend
    from uniad_mini.neighbors import neighbor_mask
    from uniad_mini.kernels import neighbor_attention

    H, W = grid
    allowed = ~neighbor_mask(H, W, window).to(device)  # (N, N) True = takes part, for SDPA
    methods = {
        "fused": lambda q, k, v: neighbor_attention(q, k, v, grid=grid, window=window, dropout_p=dropout_p),
        "torch": lambda q, k, v: attend(q, k, v, grid=grid, window=window, dropout_p=dropout_p, backend="torch"),
        "sdpa": lambda q, k, v: F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, dropout_p=dropout_p),
    }
    if "flex" in names and dropout_p == 0.0 and device == "cuda":
        try:
            from torch.nn.attention.flex_attention import create_block_mask, flex_attention
        except ImportError:
            pass
        else:
            rh, rw = window[0] // 2, window[1] // 2

            def visible(b, h, q_idx, kv_idx):
                near_i = (q_idx // W - kv_idx // W).abs() <= rh
                near_j = (q_idx % W - kv_idx % W).abs() <= rw
                return ~(near_i & near_j)

            block_mask = create_block_mask(visible, None, None, H * W, H * W, device=device)
            flex = torch.compile(flex_attention)
            methods["flex"] = lambda q, k, v: flex(q, k, v, block_mask=block_mask)
    return {name: fn for name, fn in methods.items() if name in names}


def timer(device):
    if device == "cuda":
        from triton.testing import do_bench

        return lambda fn: do_bench(fn, warmup=25, rep=100, return_mode="median")

    def cpu_time(fn, reps=2):  # the interpreter: wall clock of a couple of calls, in ms
        fn()
        start = time.perf_counter()
        for _ in range(reps):
            fn()
        return (time.perf_counter() - start) / reps * 1e3

    return cpu_time


def inference(fn, q, k, v):
    import torch

    with torch.no_grad():  # the forward column: no autograd bookkeeping for anyone
        return fn(q, k, v)


def run(args, device):
    import torch

    measure = timer(device)
    window = (args.window, args.window)
    h, d = args.heads, args.head_dim
    rows = []
    for dtype_name in args.dtypes:
        dtype = getattr(torch, DTYPE_NAMES[dtype_name])
        for B in args.batch:
            for side in args.grids:
                grid, N = (side, side), side * side
                gen = torch.Generator(device=device).manual_seed(0)
                q, k, v = (torch.randn(B, h, N, d, device=device, dtype=dtype, generator=gen).requires_grad_()
                           for _ in range(3))
                do = torch.randn(B, h, N, d, device=device, dtype=dtype, generator=gen)
                flop = 4 * B * h * N * N * d
                results, fused_out = {}, None
                for name, fn in make_methods(torch, grid, window, args.dropout, device, args.methods).items():
                    try:
                        with torch.no_grad():
                            out = fn(q, k, v)
                        if name == "fused":
                            fused_out = out.float()
                        same_maths = fused_out is not None and name != "fused" and args.dropout == 0.0
                        err = (fused_out - out.float()).abs().max().item() if same_maths else float("nan")
                        del out
                        torch.autograd.grad(fn(q, k, v), (q, k, v), do)  # untimed: warm-up, autotuning
                        t_fwd = measure(lambda: inference(fn, q, k, v))
                        out = fn(q, k, v)
                        t_bwd = measure(lambda: torch.autograd.grad(out, (q, k, v), do, retain_graph=True))
                        del out
                        t_all = measure(lambda: torch.autograd.grad(fn(q, k, v), (q, k, v), do))
                        results[name] = (t_fwd, t_bwd, t_all, err)
                    except Exception as e:  # e.g. out of memory for a dense N x N: report it, go on
                        results[name] = None
                        print(f"<!-- {dtype_name} B={B} {side}x{side} {name}: {type(e).__name__}: "
                              f"{str(e).splitlines()[0][:120]} -->", file=sys.stderr)
                    if device == "cuda":
                        torch.cuda.empty_cache()
                others = [r[2] for n, r in results.items() if n != "fused" and r is not None]
                best_other = min(others) if others else float("nan")
                for name, r in results.items():
                    shape = f"| {dtype_name} | {B} | {side}x{side} | {name} "
                    if r is None:
                        rows.append(shape + "| OOM/error | | | | | | | |")
                        continue
                    t_fwd, t_bwd, t_all, err = r
                    ratio = best_other / t_all if name == "fused" else float("nan")
                    rows.append(
                        shape + f"| {t_fwd:.3f} | {t_bwd:.3f} | {t_all:.3f} | {flop / t_fwd * 1e-9:.3g} "
                        f"| {2.5 * flop / t_bwd * 1e-9:.3g} | {3.5 * flop / t_all * 1e-9:.3g} "
                        f"| {'' if math.isnan(err) else f'{err:.1e}'} "
                        f"| {'' if math.isnan(ratio) else f'{ratio:.2f}x'} |"
                    )
                del q, k, v, do
    return rows


def compile_check(dtypes, head_dims, dropouts, arch=90, N=3136, W=56, all_configs=True) -> list[str]:
    """Compile every kernel of `neighbor_attention` in every autotuning configuration (or only the
    first, the one used with UNIAD_MINI_AUTOTUNE=0) for an sm_`arch` GPU on a machine without one (an
    N-token grid of width W, N = W * W), and report registers and spills as Markdown rows.

    Catches what the interpreter cannot (the compiler's type rules, register pressure). `static.py`
    holds the machinery (and reads the loops too: `--static`).
    """
    from ..kernels import static

    if N != W * W:
        raise ValueError("compile_check compiles square grids: N must be W * W")
    rows = []
    with static.no_gpu(arch):
        for dtype_name in dtypes:
            for d in head_dims:
                for p in dropouts:
                    rows.append(_delta_row(static, dtype_name, d, p, N))
                    for kind, fn, cfg, args, kwargs in static.launches(dtype_name, d, p, W, not all_configs):
                        res = static.resources(fn.warmup(*args, **kwargs, grid=(1,)).asm["cubin"])
                        rows.append(f"| {dtype_name} | {d} | {p} | {kind} | {static.config_name(cfg)} "
                                    f"| {res['registers']} | {res['spill_bytes']} | {_mma(res['sass'])} |")
    return rows


def _delta_row(static, dtype_name, d, p, N) -> str:
    """The delta kernel (a row sum, no loop, no product): registers and spills."""
    import torch

    na = static._kernels()
    x = torch.empty(1, 1, N, d, dtype=getattr(torch, DTYPE_NAMES[dtype_name]))
    kernel = na._bwd_delta_kernel.warmup(x, x, torch.empty(1, N), x.stride(), x.stride(), 8, N=N, HEAD_DIM=d,
                                         D_PAD=max(16, 1 << (d - 1).bit_length()), BLOCK_M=64, grid=(1,))
    res = static.resources(kernel.asm["cubin"])
    return f"| {dtype_name} | {d} | {p} | delta | BLOCK_M=64 | {res['registers']} | {res['spill_bytes']} | none (FMA) |"


def _mma(sass: str) -> str:
    return "wgmma" if "HGMMA" in sass else "mma" if "HMMA" in sass else "none (FMA)"


def static_main(args) -> int:
    """--static: the loops of every kernel and config compiled for sm_90, as a table (and JSON)."""
    import json

    from ..kernels import static

    dropouts = [0.0, args.dropout] if args.dropout > 0 else [0.0, 0.1]
    try:
        static.tool("cuobjdump"), static.tool("nvdisasm")
    except FileNotFoundError as err:
        print(f"static analysis impossible here: {err}")
        return 1
    print("kernels compiled for sm_90, no GPU used; loops: SASS instructions per warp per iteration "
          f"(MUFU.EX2 in brackets), d = {args.head_dim}, 8 heads, 7 x 7 window\n")
    print(static.TABLE_HEADER)
    rows = static.static_rows(args.dtypes, dropouts, args.grids, args.kernels, args.head_dim, args.first_config,
                              progress=lambda r: print(static.table_row(r), flush=True))
    print("\nbest config per kernel (instructions per score per thread: a loop's count / scores per thread)\n")
    print("\n".join(static.summary(rows)))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


def _rerun(argv, interpret: bool) -> int:
    """Run this command again in a fresh process with Triton's interpreter on or off: the kernels
    were already defined (imported) in the other mode."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    if interpret:
        env["TRITON_INTERPRET"] = "1"
    cmd = [sys.executable, "-m", "uniad_mini.bench.kernel", *(argv if argv is not None else sys.argv[1:])]
    return subprocess.run(cmd, env=env).returncode


HEADER = (
    "| dtype | B | grid | method | fwd ms | bwd ms | fwd+bwd ms | fwd TFLOP/s | bwd TFLOP/s | fwd+bwd TFLOP/s "
    "| max abs diff to fused (fwd) | fastest other fwd+bwd / fused fwd+bwd |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|---|"
)


def main(argv=None) -> int:
    import importlib

    args = parse_args(argv)
    if args.compile_check or args.static:
        if importlib.import_module("uniad_mini.kernels.fused_attention").INTERPRET:
            return _rerun(argv, interpret=False)
        if args.static:
            return static_main(args)
        rows = compile_check(args.dtypes, [args.head_dim], [0.0, 0.1])
        print("kernels compiled for sm_90 (no GPU used); stack bytes > 0 means spilled registers\n")
        print("| dtype | d | dropout | kernel | launch config | registers | stack bytes | tensor cores |")
        print("|---|---|---|---|---|---|---|---|")
        print("\n".join(rows))
        return 0
    if args.interpret_smoke:
        kernels = sys.modules.get("uniad_mini.kernels.fused_attention")
        if kernels is not None and not kernels.INTERPRET:
            # `python -m uniad_mini.bench.kernel` imports the package, and so defines the kernels for a
            # GPU, before this line runs: start again in a process that has the interpreter on from the start
            return _rerun(argv, interpret=True)
        os.environ["TRITON_INTERPRET"] = "1"  # before the kernels are defined (imported)
        args.batch, args.grids, args.heads, args.head_dim, args.window = [1], [8], 2, 32, 3
        args.methods = [m for m in args.methods if m != "flex"]
        device = "cpu"
    else:
        import torch

        if not torch.cuda.is_available():
            print("no CUDA device: not measured on GPU (try --interpret-smoke for a CPU check that it runs)")
            return 0
        device = "cuda"
    import torch

    rows = run(args, device)
    title = (f"neighbor attention, {args.heads} heads, d={args.head_dim}, window {args.window}x{args.window}, "
             f"dropout {args.dropout}, on {torch.cuda.get_device_name() if device == 'cuda' else 'CPU (interpreter)'}")
    table = "\n".join([title, "rates are dense-equivalent (see the module docstring)", "", HEADER, *rows])
    print(table)
    if args.out:
        with open(args.out, "w") as f:
            f.write(table + "\n")
    if device == "cpu":
        print("\n(interpreter run: the kernels work; the timings say nothing about a GPU)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
