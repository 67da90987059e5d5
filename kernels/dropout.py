"""Attention dropout for the fused kernels: 16 keep decisions per Philox call, 8 bits each.

The keep decision for score (bh, m, n) -- bh = b * heads + h, query m, key n -- is a function of
(seed, bh, m, n) alone, never of the tile that asks for it, so the forward and the two backward kernels
regenerate exactly the same mask with whatever block sizes each one runs (all multiples of 16):

    counter = (bh * N + m) * cdiv(N, 16) + n // 16           (int64)
    w0, w1, w2, w3 = Philox-4x32 (7 rounds) of (seed, counter)  (tl.randint4x)
    byte  = bits 8 * (n % 4) .. 8 * (n % 4) + 7 of w_((n % 16) // 4)
    keep  = byte >= t,        t = round(256 p), clamped to 1 .. 255 when p > 0

One Philox call thus serves 16 neighbouring keys of one query (FlashAttention-2 does the same), where
`tl.rand` would run a 10-round Philox for every score. The price is resolution: the dropout probability
is realised as t / 256 (`effective_dropout_p`: 0.1 -> 26/256 = 0.1015625, 0.5 -> exactly 0.5, any p > 0
gives at least 1/256), and kept weights are scaled by 256 / (256 - t) = 1 / (1 - t/256), so the dropped
weights stay unbiased for the probability actually used.
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

    start_n must be a multiple of 16. Decisions for keys >= N exist but mean nothing (those keys are
    masked out anyway).
    """
    G: tl.constexpr = BLOCK_N // 16
    groups = start_n // 16 + tl.arange(0, G)  # (G,)
    counter = (bh * N + offs_m[:, None]).to(tl.int64) * tl.cdiv(N, 16) + groups[None, :]  # (M, G)
    w0, w1, w2, w3 = tl.randint4x(seed, counter, n_rounds=7)  # 4 x (M, G) uint32
    lane = tl.arange(0, 16)[None, None, :]  # key n % 16 within its group
    word = lane // 4
    bits = tl.where(word == 0, w0[:, :, None], tl.where(word == 1, w1[:, :, None],
                    tl.where(word == 2, w2[:, :, None], w3[:, :, None])))  # (M, G, 16)
    byte = ((bits >> (8 * (lane % 4)).to(tl.uint32)) & 0xFF).to(tl.int32)
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
