"""Backward kernels of the fused neighbor-masked attention (paper Sec. 3.3): three launches, no atomics.

    delta_i = rowsum(dO_i * O_i)                          `_bwd_delta_kernel`, one pass over the output
    dK_j, dV_j  for a key block, walking over queries     `_bwd_dkdv_kernel`
    dQ_i        for a query block, walking over keys      `_bwd_dq_kernel`

Each recomputes the attention weights from Q, K and the saved log-sum-exp rather than storing them, and
regenerates the same dropout bits as the forward (`dropout.keep_tile`). The algorithm is explained in
`fused_attention.py`.
"""
from __future__ import annotations

import triton
import triton.language as tl

from .dropout import keep_tile
from .tiles import (_DKDV_CONFIGS, _DQ_CONFIGS, _PRUNE, _TUNE_KEY, _band, _band_tile, _free_tile, _head, _load_tile,
                    _program, _query_pos, _store_tile, _visible)


# ------------------------------------------------------------------------------------------------
# Backward
# ------------------------------------------------------------------------------------------------
@triton.jit
def _bwd_delta_kernel(O, DO, DELTA, o_strides, do_strides, HEADS, N: tl.constexpr,
                      HEAD_DIM: tl.constexpr, D_PAD: tl.constexpr, BLOCK_M: tl.constexpr):
    """delta = rowsum(dO * O) in fp32, (B*heads, N)."""
    start_m, offs_m, bh, b, h, _ = _program(HEADS, 1.0, BLOCK_M)
    offs_d = tl.arange(0, D_PAD)
    o = _load_tile(_head(O, o_strides, b, h), offs_m, offs_d, o_strides, N, HEAD_DIM, True)
    do = _load_tile(_head(DO, do_strides, b, h), offs_m, offs_d, do_strides, N, HEAD_DIM, True)
    tl.store(DELTA + bh * N + offs_m, tl.sum(o * do, 1), mask=offs_m < N)


@triton.jit
def _weights(q, k, lse, q_row, q_col, offs_n, qk_scale, N: tl.constexpr, W: tl.constexpr,
             HALF_H: tl.constexpr, HALF_W: tl.constexpr, MASKED: tl.constexpr, PRECISION: tl.constexpr):
    """P = exp2(q k^T * qk_scale - lse), (queries, keys): the softmax weights again, one fused
    multiply-add and one exp2 per score, 0 where blocked."""
    p = tl.math.exp2(tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale - lse[:, None])
    if MASKED:
        p = tl.where(_visible(q_row, q_col, offs_n, N, W, HALF_H, HALF_W), p, 0.0)
    return p


@triton.jit
def _dkdv_tile(dk, dv, k, v, Q, DO, LSE, DELTA, q_strides, do_strides, start_m, offs_n, start_n, offs_d,
               bh, qk_scale, threshold, keep_scale, seed, N: tl.constexpr, W: tl.constexpr,
               HALF_H: tl.constexpr, HALF_W: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr,
               BLOCK_N: tl.constexpr, MASKED: tl.constexpr, DROPOUT: tl.constexpr, UPCAST: tl.constexpr,
               PRECISION: tl.constexpr):
    """Add the queries start_m .. start_m + BLOCK_M - 1 to dK / scale and dV of the keys offs_n.

    Queries on rows, as in the forward, so the dropout bits come out in the threads' own layout (no
    transposed copy of them); the two products with a transposed operand, dV += A^T dO and
    dK += dS^T Q, take A and dS through shared memory."""
    offs_m = start_m + tl.arange(0, BLOCK_M)
    q = _load_tile(Q, offs_m, offs_d, q_strides, N, HEAD_DIM, UPCAST)  # (BLOCK_M, D_PAD)
    do = _load_tile(DO, offs_m, offs_d, do_strides, N, HEAD_DIM, UPCAST)  # (BLOCK_M, D_PAD)
    lse = tl.load(LSE + offs_m, mask=offs_m < N, other=0.0)  # (BLOCK_M,)
    delta = tl.load(DELTA + offs_m, mask=offs_m < N, other=0.0)  # (BLOCK_M,)
    q_row, q_col = _query_pos(offs_m, W, HALF_H, HALF_W)
    p = _weights(q, k, lse, q_row, q_col, offs_n, qk_scale, N, W, HALF_H, HALF_W, MASKED, PRECISION)
    dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)  # (BLOCK_M, BLOCK_N)
    if DROPOUT:  # the very bits the forward drew
        keep = keep_tile(seed, bh, offs_m, start_n, N, threshold, BLOCK_N)
        a = tl.where(keep, p * keep_scale, 0.0)
        dp = tl.where(keep, dp * keep_scale, 0.0)
    else:
        a = p
    dv += tl.dot(tl.trans(a.to(do.dtype)), do, input_precision=PRECISION)
    ds = p * (dp - delta[:, None])  # (BLOCK_M, BLOCK_N)
    dk += tl.dot(tl.trans(ds.to(q.dtype)), q, input_precision=PRECISION)
    return dk, dv


@triton.autotune(configs=_DKDV_CONFIGS, key=_TUNE_KEY, prune_configs_by=_PRUNE)
@triton.jit(do_not_specialize=["seed"])
def _bwd_dkdv_kernel(
    Q, K, V, DO, DK, DV, LSE, DELTA,
    q_strides, k_strides, v_strides, do_strides, dk_strides, dv_strides,
    HEADS, BH_BUCKET, sm_scale, threshold, keep_scale, seed,
    N: tl.constexpr, W: tl.constexpr, HALF_H: tl.constexpr, HALF_W: tl.constexpr,
    HEAD_DIM: tl.constexpr, D_PAD: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    DROPOUT: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr,
):
    """Program (j, bh) computes dK and dV of key block j, walking over the queries."""
    start_n, offs_n, bh, b, h, qk_scale = _program(HEADS, sm_scale, BLOCK_N)
    offs_d = tl.arange(0, D_PAD)
    Q, DO = _head(Q, q_strides, b, h), _head(DO, do_strides, b, h)
    LSE += bh * N
    DELTA += bh * N
    k = _load_tile(_head(K, k_strides, b, h), offs_n, offs_d, k_strides, N, HEAD_DIM, UPCAST)
    v = _load_tile(_head(V, v_strides, b, h), offs_n, offs_d, v_strides, N, HEAD_DIM, UPCAST)
    dk = tl.zeros([BLOCK_N, D_PAD], tl.float32)
    dv = tl.zeros([BLOCK_N, D_PAD], tl.float32)

    lo, hi, n_band, n_free = _band(start_n, BLOCK_N, N, W, HALF_H, BLOCK_M)  # queries these keys hide from
    for i in range(0, n_band):
        dk, dv = _dkdv_tile(dk, dv, k, v, Q, DO, LSE, DELTA, q_strides, do_strides, _band_tile(i, lo, hi, N, BLOCK_M),
                            offs_n, start_n, offs_d, bh, qk_scale, threshold, keep_scale, seed, N, W, HALF_H,
                            HALF_W, HEAD_DIM, BLOCK_M, BLOCK_N, True, DROPOUT, UPCAST, PRECISION)
    for i in range(0, n_free):
        dk, dv = _dkdv_tile(dk, dv, k, v, Q, DO, LSE, DELTA, q_strides, do_strides, _free_tile(i, lo, hi, BLOCK_M),
                            offs_n, start_n, offs_d, bh, qk_scale, threshold, keep_scale, seed, N, W, HALF_H,
                            HALF_W, HEAD_DIM, BLOCK_M, BLOCK_N, False, DROPOUT, UPCAST, PRECISION)
    _store_tile(_head(DK, dk_strides, b, h), dk * sm_scale, offs_n, offs_d, dk_strides, N, HEAD_DIM)
    _store_tile(_head(DV, dv_strides, b, h), dv, offs_n, offs_d, dv_strides, N, HEAD_DIM)


@triton.jit
def _dq_tile(dq, q, do, lse, delta, q_row, q_col, K, V, k_strides, v_strides, offs_m, start_n, offs_d,
             bh, qk_scale, threshold, keep_scale, seed, N: tl.constexpr, W: tl.constexpr,
             HALF_H: tl.constexpr, HALF_W: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr,
             MASKED: tl.constexpr, DROPOUT: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr):
    """Add the keys start_n .. start_n + BLOCK_N - 1 to dQ / scale of the queries offs_m."""
    offs_n = start_n + tl.arange(0, BLOCK_N)
    k = _load_tile(K, offs_n, offs_d, k_strides, N, HEAD_DIM, UPCAST)  # (BLOCK_N, D_PAD)
    v = _load_tile(V, offs_n, offs_d, v_strides, N, HEAD_DIM, UPCAST)
    p = _weights(q, k, lse, q_row, q_col, offs_n, qk_scale, N, W, HALF_H, HALF_W, MASKED, PRECISION)
    dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)  # (BLOCK_M, BLOCK_N)
    if DROPOUT:
        dp = tl.where(keep_tile(seed, bh, offs_m, start_n, N, threshold, BLOCK_N), dp * keep_scale, 0.0)
    ds = p * (dp - delta[:, None])
    return dq + tl.dot(ds.to(k.dtype), k, input_precision=PRECISION)


@triton.autotune(configs=_DQ_CONFIGS, key=_TUNE_KEY, prune_configs_by=_PRUNE)
@triton.jit(do_not_specialize=["seed"])
def _bwd_dq_kernel(
    Q, K, V, DO, DQ, LSE, DELTA,
    q_strides, k_strides, v_strides, do_strides, dq_strides,
    HEADS, BH_BUCKET, sm_scale, threshold, keep_scale, seed,
    N: tl.constexpr, W: tl.constexpr, HALF_H: tl.constexpr, HALF_W: tl.constexpr,
    HEAD_DIM: tl.constexpr, D_PAD: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    DROPOUT: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr,
):
    """Program (i, bh) computes dQ of query block i, walking over the keys."""
    start_m, offs_m, bh, b, h, qk_scale = _program(HEADS, sm_scale, BLOCK_M)
    offs_d = tl.arange(0, D_PAD)
    K, V = _head(K, k_strides, b, h), _head(V, v_strides, b, h)
    q = _load_tile(_head(Q, q_strides, b, h), offs_m, offs_d, q_strides, N, HEAD_DIM, UPCAST)
    do = _load_tile(_head(DO, do_strides, b, h), offs_m, offs_d, do_strides, N, HEAD_DIM, UPCAST)
    lse = tl.load(LSE + bh * N + offs_m, mask=offs_m < N, other=0.0)
    delta = tl.load(DELTA + bh * N + offs_m, mask=offs_m < N, other=0.0)
    q_row, q_col = _query_pos(offs_m, W, HALF_H, HALF_W)
    dq = tl.zeros([BLOCK_M, D_PAD], tl.float32)

    lo, hi, n_band, n_free = _band(start_m, BLOCK_M, N, W, HALF_H, BLOCK_N)
    for i in range(0, n_band):
        dq = _dq_tile(dq, q, do, lse, delta, q_row, q_col, K, V, k_strides, v_strides, offs_m,
                      _band_tile(i, lo, hi, N, BLOCK_N), offs_d, bh, qk_scale, threshold, keep_scale, seed,
                      N, W, HALF_H, HALF_W, HEAD_DIM, BLOCK_N, True, DROPOUT, UPCAST, PRECISION)
    for i in range(0, n_free):
        dq = _dq_tile(dq, q, do, lse, delta, q_row, q_col, K, V, k_strides, v_strides, offs_m,
                      _free_tile(i, lo, hi, BLOCK_N), offs_d, bh, qk_scale, threshold, keep_scale, seed,
                      N, W, HALF_H, HALF_W, HEAD_DIM, BLOCK_N, False, DROPOUT, UPCAST, PRECISION)
    _store_tile(_head(DQ, dq_strides, b, h), dq * sm_scale, offs_m, offs_d, dq_strides, N, HEAD_DIM)
