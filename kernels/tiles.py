"""Tile helpers of the fused neighbor-masked attention kernels (paper Sec. 3.3): visibility, the window band, I/O.

Shared by the forward kernel (`fused_attention.py`) and the backward kernels (`backward.py`): which scores
a query may see (`_visible`), which key or query tiles can meet a block's 7 x 7 window band (`_band`) and the
tiles outside it that need no mask at all (`_free_tile`), tile loads and stores, and the launch
configurations the autotuner chooses from.
"""
from __future__ import annotations

import os

import triton
import triton.language as tl


# The kernels were built (decorated) in the mode current at import time: interpreted Python that runs on
# CPU tensors, or compiled for a GPU. Only the first can take CPU tensors.
INTERPRET = bool(triton.knobs.runtime.interpret)


# ------------------------------------------------------------------------------------------------
# Helpers: which scores are visible, where the window band lies, tile I/O
# ------------------------------------------------------------------------------------------------
@triton.jit
def _program(HEADS, sm_scale, BLOCK: tl.constexpr):
    """The prologue of every attention kernel: program (i, bh) owns tokens i*BLOCK .. i*BLOCK+BLOCK-1 of
    head h of batch b. Returns (start, offsets, bh, b, h, qk_scale); qk_scale = scale * log2(e) turns raw
    scores into log2 units for exp2."""
    start = tl.program_id(0) * BLOCK
    bh = tl.program_id(1)
    return start, start + tl.arange(0, BLOCK), bh, bh // HEADS, bh % HEADS, sm_scale * 1.4426950408889634


@triton.jit
def _head(X, strides, b, h):
    """Pointer to the (N, d) matrix of batch b, head h of a (B, heads, N, d)-strided tensor."""
    return X + b * strides[0] + h * strides[1]


@triton.jit
def _query_pos(q_idx, W: tl.constexpr, HALF_H: tl.constexpr, HALF_W: tl.constexpr):
    """Grid row and column of the queries q_idx, each shifted by the window half: once per program."""
    return q_idx // W + HALF_H, q_idx % W + HALF_W


@triton.jit
def _visible(q_row, q_col, k_idx, N: tl.constexpr, W: tl.constexpr, HALF_H: tl.constexpr,
             HALF_W: tl.constexpr):
    """(len(q_row), len(k_idx)) bool: True where the query may look at key k_idx -- a real key outside
    the query's window. q_row, q_col come from `_query_pos`; queries past N are never stored, so they
    need no test.

    |i - i'| <= h is one unsigned compare: i + h - i' lies in [0, 2h] (a negative difference wraps to a
    huge unsigned number). W, the halves and N are compile-time constants, so k // W and k % W are a
    multiply and a shift, per key, not per score."""
    near_i = (q_row[:, None] - (k_idx // W)[None, :]).to(tl.uint32, bitcast=True) <= 2 * HALF_H
    near_j = (q_col[:, None] - (k_idx % W)[None, :]).to(tl.uint32, bitcast=True) <= 2 * HALF_W
    blocked = near_i & near_j
    if tl.constexpr(N) % k_idx.shape[0] != 0:  # only then can a key tile run past the last token
        blocked = blocked | (k_idx >= N)[None, :]
    return ~blocked


@triton.jit
def _band(start, BLOCK: tl.constexpr, N: tl.constexpr, W: tl.constexpr, HALF_H: tl.constexpr,
          STEP: tl.constexpr):
    """For the tokens start .. start+BLOCK-1: the tiles of STEP tokens on the other axis that can be
    blocked for one of them, as loop counts and a first tile.

    Returns (lo, hi, n_band, n_free): the band is [lo, hi) (multiples of STEP); n_band tiles get the
    mask (the band, plus the last partial tile if the band misses it), n_free tiles need none.
    """
    r0 = start // W
    r1 = (tl.minimum(start + BLOCK, N) - 1) // W
    lo = tl.maximum(r0 - HALF_H, 0) * W // STEP * STEP
    hi = tl.cdiv(tl.minimum((r1 + HALF_H + 1) * W, N), STEP) * STEP
    full_end = N // STEP * STEP  # end of the full tiles
    n_band = (hi - lo) // STEP + ((full_end < N) & (hi <= full_end)).to(tl.int32)
    n_free = lo // STEP + tl.maximum(full_end - hi, 0) // STEP
    return lo, hi, n_band, n_free


@triton.jit
def _band_tile(i, lo, hi, N: tl.constexpr, STEP: tl.constexpr):
    """Start of the i-th masked tile: through the band, then the last partial tile."""
    return tl.multiple_of(tl.where(i * STEP < hi - lo, lo + i * STEP, N // STEP * STEP), STEP)


@triton.jit
def _free_tile(i, lo, hi, STEP: tl.constexpr):
    """Start of the i-th tile outside the band: those before it, then those after it."""
    return tl.multiple_of(tl.where(i * STEP < lo, i * STEP, i * STEP + (hi - lo)), STEP)


@triton.jit
def _load_tile(base, rows, cols, strides, N: tl.constexpr, HEAD_DIM: tl.constexpr, UPCAST: tl.constexpr):
    """Load a (len(rows), len(cols)) tile of a (N, HEAD_DIM) matrix; zeros outside it. rows starts at a
    multiple of its length, so when that divides N and HEAD_DIM needs no padding nothing is masked."""
    ptrs = base + rows[:, None] * strides[2] + cols[None, :] * strides[3]
    if tl.constexpr(N) % rows.shape[0] == 0 and tl.constexpr(HEAD_DIM) == cols.shape[0]:
        x = tl.load(ptrs)
    else:
        x = tl.load(ptrs, mask=(rows[:, None] < N) & (cols[None, :] < HEAD_DIM), other=0.0)
    if UPCAST:  # the interpreter's bf16 dot is wrong: do the maths in fp32 there
        x = x.to(tl.float32)
    return x


@triton.jit
def _store_tile(base, x, rows, cols, strides, N, HEAD_DIM):
    ptrs = base + rows[:, None] * strides[2] + cols[None, :] * strides[3]
    tl.store(ptrs, x.to(base.dtype.element_ty), mask=(rows[:, None] < N) & (cols[None, :] < HEAD_DIM))


# ------------------------------------------------------------------------------------------------
# Launch configurations: a short Hopper list for the autotuner, one small tile set when interpreting
# ------------------------------------------------------------------------------------------------
def _configs(tiles, interpret_tile):
    """triton.Configs from (BLOCK_M, BLOCK_N, num_warps, num_stages, dtypes) tuples; dtypes "any" or
    "16-bit" (a tile that spills registers with fp32's three-product tf32x3 is for fp16/bf16 only).

    Interpreting: one config (no autotuning), tiles small enough to cross several blocks at the tests'
    small N. UNIAD_MINI_AUTOTUNE=0: the first config of the list and the first for fp32, no autotuning.
    """
    if INTERPRET:
        tiles = [(*interpret_tile, "any")]
    elif os.environ.get("UNIAD_MINI_AUTOTUNE", "1").strip().lower() in ("0", "false", "no", "off"):
        tiles = tiles[:1] + [t for t in tiles if t[4] == "any"][:1 if tiles[0][4] != "any" else 0]
    configs = []
    for m, n, w, s, dtypes in tiles:
        configs.append(triton.Config(dict(BLOCK_M=m, BLOCK_N=n), num_warps=w, num_stages=s))
        _FP32_OK[id(configs[-1])] = dtypes == "any"
    return configs


_FP32_OK = {}  # id(Config) -> may it run fp32 inputs (configs made elsewhere may)


def configs_for(configs, fp32: bool):
    """The configs the autotuner may pick for fp32 (or 16-bit) inputs."""
    return [c for c in configs if _FP32_OK.get(id(c), True) or not fp32]


def _prune(configs, named_args, **kwargs):
    return configs_for(configs, named_args["Q"].dtype.itemsize == 4)


_PRUNE = {"early_config_prune": _prune}

# (BLOCK_M queries, BLOCK_N keys, warps, stages, dtypes); 8 warps only for 128 x 128 tiles. The first is
# the default when autotuning is off (with the first "any" one for fp32). Every config is compiled for
# sm_90 by `static.py` (`bench --static`): none of them spills registers in the dtypes it is listed for.
_FWD_CONFIGS = _configs([(128, 64, 4, 3, "16-bit"), (128, 128, 8, 3, "16-bit"), (128, 64, 4, 4, "16-bit"),
                         (64, 128, 4, 2, "16-bit"), (64, 64, 4, 3, "any"), (128, 32, 4, 4, "16-bit"),
                         (64, 64, 4, 2, "any")], (32, 32, 1, 1))
# dK/dV own BLOCK_N keys and walk over BLOCK_M queries; dQ owns BLOCK_M queries and walks over BLOCK_N keys.
_DKDV_CONFIGS = _configs([(64, 64, 4, 2, "16-bit"), (64, 64, 4, 3, "16-bit"), (128, 64, 8, 2, "16-bit"),
                          (32, 64, 4, 2, "any")], (32, 32, 1, 1))
_DQ_CONFIGS = _configs([(128, 32, 4, 3, "any"), (128, 64, 8, 3, "any"), (64, 32, 4, 3, "any"),
                        (64, 64, 4, 2, "16-bit"), (128, 16, 4, 4, "16-bit")], (32, 32, 1, 1))
# The autotuner adds the dtypes of the tensor arguments; BH_BUCKET is B * heads rounded up to a power of 2.
_TUNE_KEY = ["N", "HEAD_DIM", "DROPOUT", "BH_BUCKET"]
