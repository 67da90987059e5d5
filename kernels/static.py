"""What the kernels compile to on a Hopper GPU (sm_90), read without one: registers, spills, loops.

    python -m uniad_mini.bench.kernel --static                  # every kernel and config, bf16/fp32,
    python -m uniad_mini.bench.kernel --static --json rows.json #   dropout 0/0.1, grids 14/28/56

At head dim 32 the inner loops of these kernels are bound by instruction issue and the exponential unit
(`MUFU.EX2`), not by memory, so the instructions a loop issues per iteration are a fair proxy for its
speed. Triton compiles for sm_90 on a CPU-only machine when a stand-in driver answers its questions
about the GPU (`no_gpu`); its bundled `cuobjdump` and `nvdisasm` read the cubin. A loop is a backward
branch in the SASS; each kernel has two, in source order: the window band (masked), then the mask-free
tiles. Per warp and iteration, a tile of BLOCK_M x BLOCK_N scores spread over 32 * num_warps threads
gives `scores_per_thread`; a loop's instructions divided by it is the cost of one score.

Uses Triton internals (the active driver, `JITFunction.warmup`), checked with Triton 3.9.
"""
from __future__ import annotations

import collections
import contextlib
import importlib
import os
import re
import subprocess
import tempfile

from .tiles import configs_for

DTYPE_NAMES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}
KERNELS = ("fwd", "dkdv", "dq")
KEYS = ("kernel", "dtype", "dropout", "grid", "config", "registers", "spill_bytes", "band_loop", "free_loop",
        "scores_per_thread", "band_mufu", "free_mufu", "shared_bytes", "tensor_cores")
_INSTRUCTION = re.compile(r"^\s*/\*([0-9a-f]{4,})\*/\s+(.*?)\s*;")
_LABEL = re.compile(r"^(\.L_x_\d+):")
_BRANCH = re.compile(r"BRA\s+`?\(?(\.L_x_\d+)")


def tool(name: str) -> str:
    """Path of a CUDA binary tool shipped with Triton (cuobjdump, nvdisasm); FileNotFoundError if absent."""
    import triton

    path = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name)
    if not os.access(path, os.X_OK):
        raise FileNotFoundError(f"Triton's {name} is missing ({path}): cannot read compiled kernels")
    return path


@contextlib.contextmanager
def no_gpu(arch: int = 90):
    """Make Triton compile for an sm_`arch` GPU on a machine without one (restores its driver after)."""
    import torch
    from triton.backends.compiler import GPUTarget
    from triton.runtime import driver

    class NoGPU:  # answers the questions `warmup` asks the CUDA driver
        def get_current_target(self):
            return GPUTarget("cuda", arch, 32)

        def get_current_device(self):
            return 0

        def get_current_stream(self, device=None):
            return 0

        def get_active_torch_device(self):
            return torch.device("cpu")

    previous = driver._active
    driver.set_active(NoGPU())
    try:
        yield
    finally:
        driver._active = previous


def _kernels():
    module = importlib.import_module("uniad_mini.kernels.fused_attention")
    if module.INTERPRET:
        raise RuntimeError("compiling needs the kernels compiled, not interpreted: unset TRITON_INTERPRET")
    return module


def launches(dtype_name: str, d: int, p: float, side: int, first_only: bool = False):
    """(kind, JITFunction, config, args, kwargs) of every autotuned kernel at one shape: B = 1, 8 heads,
    a side x side grid, 7 x 7 window. The delta kernel (no loop) is compiled by `bench.compile_check`."""
    import torch

    na = _kernels()
    dtype = getattr(torch, DTYPE_NAMES[dtype_name])
    N = side * side
    x = torch.empty(1, 1, N, d, dtype=dtype)
    st, lse = x.stride(), torch.empty(1, N)
    runtime, meta = na._launch_args(N, side, 8, (7, 7), 0.2, p, 1, d, dtype)
    tensors = {"fwd": (na._fwd_kernel, (x, x, x, x, lse, *[st] * 4)),
               "dkdv": (na._bwd_dkdv_kernel, (x, x, x, x, x, x, lse, lse, *[st] * 6)),
               "dq": (na._bwd_dq_kernel, (x, x, x, x, x, lse, lse, *[st] * 5))}
    for kind, (tuned, args) in tensors.items():
        configs = configs_for(tuned.configs, dtype == torch.float32)  # those the autotuner may pick
        for cfg in configs[:1 if first_only else None]:  # the autotuner's JITFunction is .fn
            kwargs = dict(**meta, **cfg.kwargs, num_warps=cfg.num_warps, num_stages=cfg.num_stages)
            yield kind, tuned.fn, cfg, (*args, *runtime), kwargs


def config_name(cfg) -> str:
    return " ".join(f"{k}={v}" for k, v in cfg.kwargs.items()) + f" w{cfg.num_warps} s{cfg.num_stages}"


def resources(cubin: bytes) -> dict:
    """{"REG": .., "STACK": ..} from `cuobjdump -res-usage`, and the SASS text from `nvdisasm`."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        usage = subprocess.run([tool("cuobjdump"), "-res-usage", f.name], capture_output=True, text=True,
                               check=True).stdout
        sass = subprocess.run([tool("nvdisasm"), "-c", f.name], capture_output=True, text=True, check=True).stdout
    fields = dict(t.split(":") for t in usage.split() if t.startswith(("REG:", "STACK:")))
    return dict(registers=int(fields["REG"]), spill_bytes=int(fields["STACK"]), sass=sass)


def loops(sass: str) -> list[tuple[int, int]]:
    """(instructions, MUFU.EX2) of each loop body, in code order: a loop runs from a label to a later
    branch back to it (not counting the one-instruction `BRA` to itself that ends every kernel)."""
    code, labels = [], {}
    for line in sass.splitlines():
        if m := _LABEL.match(line):
            labels[m.group(1)] = len(code)
        elif m := _INSTRUCTION.match(line):
            code.append(m.group(2))
    found = []
    for i, text in enumerate(code):
        m = _BRANCH.search(text)
        if m and labels.get(m.group(1), i) < i:
            body = code[labels[m.group(1)]:i + 1]
            found.append((len(body), sum("MUFU.EX2" in t for t in body)))
    return found


def tensor_cores(sass: str) -> str:
    """The matrix instructions and how many: e.g. "HGMMA bf16 x24" (wgmma), "HMMA ..." (mma.sync), "none"."""
    kinds = collections.Counter(re.findall(r"\b(HGMMA|HMMA)\.\S*?\.F32\.(\w+)", sass))
    return " + ".join(f"{op} {src.lower()} x{n}" for (op, src), n in kinds.items()) or "none"


def analyse(kind, fn, cfg, args, kwargs, dtype_name, p, side) -> dict:
    """Compile one launch for sm_90 and describe it as one row (keys: `KEYS`)."""
    kernel = fn.warmup(*args, **kwargs, grid=(1,))
    res = resources(kernel.asm["cubin"])
    body = loops(res["sass"])
    if len(body) != 2:
        raise RuntimeError(f"{kind} {config_name(cfg)}: expected a band and a mask-free loop, found {body}")
    (band, band_mufu), (free, free_mufu) = body
    return dict(kernel=kind, dtype=dtype_name, dropout=p, grid=f"{side}x{side}", config=config_name(cfg),
                registers=res["registers"], spill_bytes=res["spill_bytes"], band_loop=band, free_loop=free,
                scores_per_thread=cfg.kwargs["BLOCK_M"] * cfg.kwargs["BLOCK_N"] // (32 * cfg.num_warps),
                band_mufu=band_mufu, free_mufu=free_mufu, shared_bytes=kernel.metadata.shared,
                tensor_cores=tensor_cores(res["sass"]))


def static_rows(dtypes=("bf16", "fp32"), dropouts=(0.0, 0.1), grids=(14, 28, 56), kernels=KERNELS, d=32,
                first_only=False, progress=None) -> list[dict]:
    """Every (dtype, dropout, grid, kernel, config) compiled for sm_90 and analysed."""
    rows = []
    with no_gpu():
        for dtype_name in dtypes:
            for p in dropouts:
                for side in grids:
                    for kind, fn, cfg, args, kwargs in launches(dtype_name, d, p, side, first_only):
                        if kind in kernels:
                            rows.append(analyse(kind, fn, cfg, args, kwargs, dtype_name, p, side))
                            if progress:
                                progress(rows[-1])
    return rows


TABLE_HEADER = ("| kernel | dtype | dropout | grid | config | regs | spill B | smem KB | tensor cores "
                "| scores/thr | band loop (MUFU) | free loop (MUFU) | band / score | free / score |\n"
                "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")


def table_row(r: dict) -> str:
    s = r["scores_per_thread"]
    return (f"| {r['kernel']} | {r['dtype']} | {r['dropout']} | {r['grid']} | {r['config']} | {r['registers']} "
            f"| {r['spill_bytes']} | {r['shared_bytes'] / 1024:.0f} | {r['tensor_cores']} | {s} "
            f"| {r['band_loop']} ({r['band_mufu']}) | {r['free_loop']} ({r['free_mufu']}) "
            f"| {r['band_loop'] / s:.1f} | {r['free_loop'] / s:.1f} |")


def best(rows: list[dict], key: str = "free_loop") -> dict:
    """Per (kernel, dtype, dropout, grid): the non-spilling config with the fewest `key` per score."""
    out = {}
    for r in rows:
        k = (r["kernel"], r["dtype"], r["dropout"], r["grid"])
        cost = (r["spill_bytes"] > 0, r[key] / r["scores_per_thread"])
        if k not in out or cost < out[k][0]:
            out[k] = (cost, r)
    return {k: r for k, (cost, r) in out.items()}


def summary(rows: list[dict]) -> list[str]:
    """Markdown lines: per kernel, dtype, dropout and grid the best non-spilling config (fewest mask-free
    loop instructions per score) with both loops per score; then every config that spills."""
    lines = ["| kernel | dtype | dropout | grid | best config | band / score | free / score |",
             "|---|---|---|---|---|---|---|"]
    for (kind, dtype, p, grid), r in sorted(best(rows).items()):
        s = r["scores_per_thread"]
        lines.append(f"| {kind} | {dtype} | {p} | {grid} | {r['config']} | {r['band_loop'] / s:.1f} "
                     f"| {r['free_loop'] / s:.1f} |")
    spills = [r for r in rows if r["spill_bytes"] > 0]
    lines.append(f"\n{len(spills)} of {len(rows)} compiled configs spill" + (":" if spills else "."))
    lines += [f"- {r['kernel']} {r['dtype']} dropout {r['dropout']} {r['grid']} {r['config']}: "
              f"{r['spill_bytes']} bytes" for r in spills]
    return lines
