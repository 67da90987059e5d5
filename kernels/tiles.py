"""Tile helpers of the fused neighbor-masked attention kernels (paper Sec. 3.3): visibility, the window band, I/O.

Shared by the forward kernel (`fused_attention.py`) and the backward kernels (`backward.py`): which scores
a query may see (`_visible`), which key or query tiles can meet a block's 7 x 7 window band (`_band`) and the
tiles outside it that need no mask at all (`_free_tile`), tile loads and stores, and the launch
configurations the autotuner chooses from.
"""
from __future__ import annotations

import triton
import triton.language as tl

from uniad_mini.environment import env_flag

# The kernels were built (decorated) in the mode current at import time: interpreted Python that runs on
# CPU tensors, or compiled for a GPU. Only the first can take CPU tensors.
INTERPRET = bool(triton.knobs.runtime.interpret)


# ------------------------------------------------------------------------------------------------
# Helpers: which scores are visible, where the window band lies, tile I/O
# ------------------------------------------------------------------------------------------------
@triton.jit
def _visible(q_idx, k_idx, N, W, HALF_H, HALF_W):
    """True where query q_idx may look at key k_idx (broadcastable index blocks): a real token pair,
    the key outside the query's window."""
    near_i = tl.abs(q_idx // W - k_idx // W) <= HALF_H
    near_j = tl.abs(q_idx % W - k_idx % W) <= HALF_W
    return (k_idx < N) & (q_idx < N) & ~(near_i & near_j)


@triton.jit
def _band(start, BLOCK: tl.constexpr, N, W, HALF_H, STEP: tl.constexpr):
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
def _band_tile(i, lo, hi, N, STEP: tl.constexpr):
    """Start of the i-th masked tile: through the band, then the last partial tile."""
    return tl.multiple_of(tl.where(i * STEP < hi - lo, lo + i * STEP, N // STEP * STEP), STEP)


@triton.jit
def _free_tile(i, lo, hi, STEP: tl.constexpr):
    """Start of the i-th tile outside the band: those before it, then those after it."""
    return tl.multiple_of(tl.where(i * STEP < lo, i * STEP, i * STEP + (hi - lo)), STEP)


@triton.jit
def _load_tile(base, rows, cols, strides, N, HEAD_DIM, UPCAST: tl.constexpr):
    """Load a (len(rows), len(cols)) tile of a (N, HEAD_DIM) matrix; zeros outside it."""
    ptrs = base + rows[:, None] * strides[2] + cols[None, :] * strides[3]
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
    """triton.Configs from (BLOCK_M, BLOCK_N, num_warps, num_stages) tuples.

    Interpreting: one config (no autotuning), tiles small enough to cross several blocks at the tests'
    small N. UNIAD_MINI_AUTOTUNE=0: the first config of the list, no autotuning (quick GPU runs).
    """
    if INTERPRET:
        tiles = [interpret_tile]
    elif not env_flag("UNIAD_MINI_AUTOTUNE", default=True):
        tiles = tiles[:1]
    return [triton.Config(dict(BLOCK_M=m, BLOCK_N=n), num_warps=w, num_stages=s) for m, n, w, s in tiles]


# (BLOCK_M queries, BLOCK_N keys, warps, stages); 8 warps only for 128 x 128 tiles. The first is the
# default when autotuning is off. Every config is compiled for sm_90 by `bench.compile_check`.
_FWD_CONFIGS = _configs([(128, 64, 4, 3), (128, 128, 8, 3), (128, 64, 4, 4), (128, 32, 4, 4),
                         (64, 64, 4, 3), (64, 128, 4, 2)], (32, 32, 1, 1))
# dK/dV own BLOCK_N keys and walk over BLOCK_M queries; dQ owns BLOCK_M queries and walks over BLOCK_N keys.
_DKDV_CONFIGS = _configs([(32, 128, 4, 3), (64, 128, 8, 3), (32, 64, 4, 3), (64, 64, 4, 2),
                          (16, 128, 4, 4)], (32, 32, 1, 1))
_DQ_CONFIGS = _configs([(128, 32, 4, 3), (128, 64, 8, 3), (64, 32, 4, 3), (64, 64, 4, 2),
                        (128, 16, 4, 4)], (32, 32, 1, 1))
_TUNE_KEY = ["N", "HEAD_DIM", "DROPOUT"]  # the autotuner adds the dtypes of the tensor arguments
