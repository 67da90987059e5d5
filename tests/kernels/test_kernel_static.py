"""The kernels' mask arithmetic and their static analysis: the unsigned range test that replaced
|i - i'| <= h, checked against the plain definition on the interpreter, and `kernels/static.py` -- the
sm_90 compile and SASS loop count -- run on a small part, on the CPU, in a process without the
interpreter.
"""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # before torch / triton / uniad_mini are imported

import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
from hypothesis import example, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

triton = pytest.importorskip("triton")
import triton.language as tl  # noqa: E402

from uniad_mini.kernels import static  # noqa: E402
from uniad_mini.kernels.tiles import INTERPRET, _query_pos, _visible  # noqa: E402


@triton.jit
def _visible_kernel(OUT, N: tl.constexpr, W: tl.constexpr, HALF_H: tl.constexpr, HALF_W: tl.constexpr,
                    BLOCK: tl.constexpr):
    """OUT[q, k] = the kernels' visibility of key k for query q, over a whole BLOCK x BLOCK tile."""
    idx = tl.arange(0, BLOCK)
    q_row, q_col = _query_pos(idx, W, HALF_H, HALF_W)
    visible = _visible(q_row, q_col, idx, N, W, HALF_H, HALF_W)
    tl.store(OUT + idx[:, None] * BLOCK + idx[None, :], visible.to(tl.int8))


@pytest.mark.skipif(not INTERPRET, reason="runs the tile helper on CPU tensors in the interpreter")
@settings(max_examples=25)
@given(H=st.integers(1, 9), W=st.integers(1, 9), half_h=st.integers(0, 4), half_w=st.integers(0, 4))
@example(H=1, W=7, half_h=0, half_w=3)  # one row: every row difference is 0
@example(H=8, W=8, half_h=0, half_w=0)  # N = 64: no padding keys
def test_the_unsigned_range_test_is_the_window_rule(H, W, half_h, half_w):
    """|i - i'| <= h as (i + h - i') <= 2h unsigned: negative differences must wrap to 'far', keys past
    N (the tile's padding) must be invisible, everything else is the plain definition."""
    N = H * W
    block = max(16, triton.next_power_of_2(N))
    out = torch.full((block, block), -1, dtype=torch.int8)
    _visible_kernel[(1,)](out, N=N, W=W, HALF_H=half_h, HALF_W=half_w, BLOCK=block)
    t = torch.arange(N)
    rows, cols = t // W, t % W
    blocked = ((rows[:, None] - rows[None, :]).abs() <= half_h) & ((cols[:, None] - cols[None, :]).abs() <= half_w)
    assert torch.equal(out[:N, :N].bool(), ~blocked)
    assert not out[:, N:].bool().any()  # padding keys: never visible, whatever the query


def test_fp32_inputs_get_only_the_configs_listed_for_them_and_the_key_has_batch_x_heads():
    from uniad_mini.kernels import fused_attention, tiles

    a, b = triton.Config(dict(BLOCK_M=64, BLOCK_N=64)), triton.Config(dict(BLOCK_M=128, BLOCK_N=64))
    tiles._FP32_OK[id(b)] = False  # as `_configs` marks a "16-bit" tile
    try:
        assert tiles._prune([a, b], {"Q": torch.zeros(1, dtype=torch.float32)}) == [a]
        assert tiles._prune([a, b], {"Q": torch.zeros(1, dtype=torch.bfloat16)}) == [a, b]
    finally:
        del tiles._FP32_OK[id(b)]
    for kernel in (fused_attention._fwd_kernel, fused_attention._bwd_dkdv_kernel, fused_attention._bwd_dq_kernel):
        assert kernel.keys == ["N", "HEAD_DIM", "DROPOUT", "BH_BUCKET"]
    runtime, _ = fused_attention._launch_args(196, 14, 8, (7, 7), 0.2, 0.0, 0, 32, torch.float32, bh=24)
    assert runtime[1] == 32  # B * heads = 24 tunes with 17..32


SASS = """
        /*0000*/                   MOV R1, c[0x0][0x28] ;
.L_x_0:
        /*0010*/                   FFMA R2, R3, R4, R5 ;
        /*0020*/                   MUFU.EX2 R2, R2 ;
        /*0030*/               @P0 BRA `(.L_x_0) ;
        /*0040*/              @!P1 BRA `(.L_x_2) ;
.L_x_1:
        /*0050*/                   MUFU.EX2 R6, R6 ;
        /*0060*/               @P2 BRA `(.L_x_1) ;
.L_x_2:
        /*0070*/                   EXIT ;
.L_x_3:
        /*0080*/                   BRA `(.L_x_3);
"""


def test_loops_are_backward_branches_and_the_final_self_branch_is_not_one():
    assert static.loops(SASS) == [(3, 1), (2, 1)]  # forward branch .L_x_2 and trap .L_x_3 ignored


def _static_tools_missing():
    try:
        static.tool("cuobjdump"), static.tool("nvdisasm")
    except FileNotFoundError as err:
        return str(err)
    return ""


@pytest.mark.slow
@pytest.mark.skipif(bool(_static_tools_missing()), reason=f"Triton's CUDA tools are missing: {_static_tools_missing()}")
def test_static_analysis_of_the_forward_kernel_for_sm90_on_the_cpu(tmp_path):
    """`bench --static --json` on one kernel, one config, one grid: the rows carry the documented keys,
    the two loops are told apart (the band loop does the mask on top of the mask-free work), every
    score costs at least one exp2, dropout adds work, nothing spills."""
    out = tmp_path / "rows.json"
    cmd = [sys.executable, "-m", "uniad_mini.bench.kernel", "--static", "--dtypes", "bf16", "--grids", "14",
           "--kernels", "fwd", "--first-config", "--json", str(out)]
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = json.loads(out.read_text())
    assert [(r["kernel"], r["dtype"], r["dropout"], r["grid"]) for r in rows] == [
        ("fwd", "bf16", 0.0, "14x14"), ("fwd", "bf16", 0.1, "14x14")]
    plain, dropped = rows
    for r in rows:
        assert set(r) >= {"kernel", "dtype", "dropout", "grid", "config", "registers", "spill_bytes",
                          "band_loop", "free_loop", "scores_per_thread"}
        assert r["spill_bytes"] == 0 and 0 < r["registers"] <= 255
        assert r["scores_per_thread"] == 64  # 128 x 64 scores over 4 warps
        assert r["band_loop"] > r["free_loop"] > r["scores_per_thread"]
        assert r["free_mufu"] >= r["scores_per_thread"]  # one exp2 per score, plus the rescale
        assert r["tensor_cores"].startswith("HGMMA bf16")
        assert f"| fwd | bf16 | {r['dropout']} | 14x14 |" in done.stdout
    assert dropped["free_loop"] > plain["free_loop"]
