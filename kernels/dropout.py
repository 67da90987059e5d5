"""Attention dropout for the fused kernels: 16 keep decisions per Philox call, 8 bits each, laid out
the way the tensor cores hand out scores.

The keep decision for score (bh, m, n) -- bh = b * heads + h, query m, key n -- is a function of
(seed, bh, m, n) alone, never of the tile that asks for it, so the forward and the two backward kernels
regenerate exactly the same mask with whatever block sizes each one runs (all multiples of 16). Writing
n = 64 j + 8 a + 2 c + e (a in 0..7, c in 0..3, e in 0..1):

    counter = ((bh * N + m) * cdiv(N, 64) + j) * 4 + c          (int64)
    w0, w1, w2, w3 = Philox-4x32 (7 rounds) of (seed, counter)  (tl.randint4x)
    byte  = byte 2 (a % 2) + e of word w_(a // 2)
    keep  = byte >= t,        t = round(256 p), clamped to 1 .. 255 when p > 0

Why this grouping: in the accumulator of a Hopper (or Ampere) matrix product, one thread holds, in each
row, columns 2c and 2c + 1 of every 8 -- exactly the 16 keys of one Philox call among 64. So every
thread draws the bits of its own scores, once, and no two threads run the same call (grouping 16
*consecutive* keys instead made four threads compute each call). The price of 8-bit decisions is
resolution: the dropout probability is realised as t / 256 (`effective_dropout_p`: 0.1 -> 26/256 =
0.1015625, 0.5 -> exactly 0.5, any p > 0 gives at least 1/256), and kept weights are scaled by
256 / (256 - t) = 1 / (1 - t/256), so the dropped weights stay unbiased for the probability used.
"""
from __future__ import annotations

import triton
import triton.language as tl

GROUP = 16  # keys sharing one Philox call; every BLOCK_N and tile start is a multiple of it


def dropout_threshold(dropout_p: float) -> int:
    """The 8-bit threshold t: a weight is kept iff its random byte is >= t (probability 1 - t/256)."""
    if dropout_p <= 0.0:
        return 0
    return min(255, max(1, round(256 * dropout_p)))


def effective_dropout_p(dropout_p: float) -> float:
    """The dropout probability the kernels realise for `dropout_p`: t / 256."""
    return dropout_threshold(dropout_p) / 256


@triton.jit
def keep_tile(seed, bh, offs_m, start_n, N, threshold, BLOCK_N: tl.constexpr):
    """Bool (len(offs_m), BLOCK_N): which scores (bh, offs_m, start_n + 0..BLOCK_N-1) survive dropout.

    start_n must be a multiple of min(BLOCK_N, 64). The tile is built as (m, j, a, c, e) and reshaped
    to (m, n), n = 64 j + 8 a + 2 c + e: the Philox counters live on (m, j, c), so the compiler lays
    them out with the threads that own those scores. Decisions for keys >= N exist but mean nothing
    (those keys are masked out anyway).
    """
    J: tl.constexpr = (BLOCK_N + 63) // 64  # 64-key blocks in the tile
    A: tl.constexpr = BLOCK_N // (8 * J)  # 8-key chunks per block: 8, or fewer in a narrow tile
    j = (start_n // 64 + tl.arange(0, J))[None, :, None, None, None]
    c = tl.arange(0, 4)[None, None, None, :, None]
    row = (bh * N + offs_m).to(tl.int64)[:, None, None, None, None]
    counter = (row * tl.cdiv(N, 64) + j) * 4 + c  # (M, J, 1, 4, 1)
    w0, w1, w2, w3 = tl.randint4x(seed, counter, n_rounds=7)
    if BLOCK_N >= 64:  # whole blocks: a is known per register, so are the word and the shift below
        a = tl.arange(0, A)[None, None, :, None, None]  # (1, 1, A, 1, 1)
    else:
        a = ((start_n % 64) // 8 + tl.arange(0, A))[None, None, :, None, None]
    e = tl.arange(0, 2)[None, None, None, None, :]
    word = tl.where(a < 4, tl.where(a < 2, w0, w1), tl.where(a < 6, w2, w3))  # (M, J, A, 4, 1)
    shift = (8 * (2 * (a % 2) + e)).to(tl.uint32)  # (1, 1, A, 1, 2)
    byte = ((word >> shift) & 0xFF).to(tl.int32)  # (M, J, A, 4, 2)
    return tl.reshape(byte >= threshold, (offs_m.shape[0], BLOCK_N))


@triton.jit(do_not_specialize=["seed"])
def keep_mask_kernel(KEEP, N, threshold, seed, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Write the kernels' dropout decisions densely to an int8 (B*heads, N, N) tensor (tests only)."""
    bh = tl.program_id(2)
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    start_n = tl.program_id(1) * BLOCK_N
    offs_n = start_n + tl.arange(0, BLOCK_N)
    keep = keep_tile(seed, bh, offs_m, start_n, N, threshold, BLOCK_N)
    ptrs = KEEP + (bh * N + offs_m[:, None]).to(tl.int64) * N + offs_n[None, :]
    tl.store(ptrs, keep.to(tl.int8), mask=(offs_m[:, None] < N) & (offs_n[None, :] < N))


def dense_keep_mask(keep, N: int, dropout_p: float, seed: int) -> None:
    """Fill int8 `keep` (B*heads, N, N) with the decisions `neighbor_attention` makes for this seed."""
    grid = (triton.cdiv(N, 64), triton.cdiv(N, 64), keep.shape[0])
    keep_mask_kernel[grid](keep, N, dropout_threshold(dropout_p), int(seed), BLOCK_M=64, BLOCK_N=64)
