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
from .tiles import _DKDV_CONFIGS, _DQ_CONFIGS, _TUNE_KEY, _band, _band_tile, _free_tile, _load_tile, _store_tile, _visible


# ------------------------------------------------------------------------------------------------
# Backward
# ------------------------------------------------------------------------------------------------
@triton.jit
def _bwd_delta_kernel(O, DO, DELTA, o_strides, do_strides, N, HEADS,
                      HEAD_DIM: tl.constexpr, D_PAD: tl.constexpr, BLOCK_M: tl.constexpr):
    """delta = rowsum(dO * O) in fp32, (B*heads, N)."""
    bh = tl.program_id(1)
    b, h = bh // HEADS, bh % HEADS
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, D_PAD)
    o = _load_tile(O + b * o_strides[0] + h * o_strides[1], offs_m, offs_d, o_strides, N, HEAD_DIM, True)
    do = _load_tile(DO + b * do_strides[0] + h * do_strides[1], offs_m, offs_d, do_strides, N, HEAD_DIM, True)
    tl.store(DELTA + bh * N + offs_m, tl.sum(o * do, 1), mask=offs_m < N)


@triton.jit
def _dkdv_tile(dk, dv, k, v, Q, DO, LSE, DELTA, q_strides, do_strides, start_m, offs_n, start_n, offs_d,
               bh, N, W, HALF_H, HALF_W, qk_scale, threshold, keep_scale, seed,
               HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, MASKED: tl.constexpr,
               DROPOUT: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr):
    """Add the queries start_m .. start_m + BLOCK_M - 1 to dK / scale and dV of the keys offs_n.
    Transposed orientation (keys down, queries across): dV = A^T dO and dK = dS^T Q are plain dots."""
    offs_m = start_m + tl.arange(0, BLOCK_M)
    q = _load_tile(Q, offs_m, offs_d, q_strides, N, HEAD_DIM, UPCAST)  # (BLOCK_M, D_PAD)
    do = _load_tile(DO, offs_m, offs_d, do_strides, N, HEAD_DIM, UPCAST)  # (BLOCK_M, D_PAD)
    lse = tl.load(LSE + offs_m, mask=offs_m < N, other=0.0)  # (BLOCK_M,)
    delta = tl.load(DELTA + offs_m, mask=offs_m < N, other=0.0)  # (BLOCK_M,)
    s_t = tl.dot(k, tl.trans(q), input_precision=PRECISION) * qk_scale  # (BLOCK_N, BLOCK_M)
    p_t = tl.math.exp2(s_t - lse[None, :])  # softmax weights P^T
    if MASKED:
        p_t = tl.where(_visible(offs_m[None, :], offs_n[:, None], N, W, HALF_H, HALF_W), p_t, 0.0)
    dp_t = tl.dot(v, tl.trans(do), input_precision=PRECISION)  # (dO V^T)^T
    if DROPOUT:  # the very bits the forward drew
        keep_t = tl.trans(keep_tile(seed, bh, offs_m, start_n, N, threshold, BLOCK_N))
        a_t = tl.where(keep_t, p_t * keep_scale, 0.0)
        dp_t = tl.where(keep_t, dp_t * keep_scale, 0.0)
    else:
        a_t = p_t
    dv += tl.dot(a_t.to(do.dtype), do, input_precision=PRECISION)
    ds_t = p_t * (dp_t - delta[None, :])  # (BLOCK_N, BLOCK_M)
    dk += tl.dot(ds_t.to(q.dtype), q, input_precision=PRECISION)
    return dk, dv


@triton.autotune(configs=_DKDV_CONFIGS, key=_TUNE_KEY)
@triton.jit(do_not_specialize=["seed"])
def _bwd_dkdv_kernel(
    Q, K, V, DO, DK, DV, LSE, DELTA,
    q_strides, k_strides, v_strides, do_strides, dk_strides, dv_strides,
    N, W, HEADS, HALF_H, HALF_W, sm_scale, threshold, keep_scale, seed,
    HEAD_DIM: tl.constexpr, D_PAD: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    DROPOUT: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr,
):
    """Program (j, bh) computes dK and dV of key block j, walking over the queries."""
    start_n = tl.program_id(0) * BLOCK_N
    bh = tl.program_id(1)
    b, h = bh // HEADS, bh % HEADS
    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, D_PAD)
    Q += b * q_strides[0] + h * q_strides[1]
    DO += b * do_strides[0] + h * do_strides[1]
    LSE += bh * N
    DELTA += bh * N
    k = _load_tile(K + b * k_strides[0] + h * k_strides[1], offs_n, offs_d, k_strides, N, HEAD_DIM, UPCAST)
    v = _load_tile(V + b * v_strides[0] + h * v_strides[1], offs_n, offs_d, v_strides, N, HEAD_DIM, UPCAST)
    qk_scale = sm_scale * 1.4426950408889634
    dk = tl.zeros([BLOCK_N, D_PAD], tl.float32)
    dv = tl.zeros([BLOCK_N, D_PAD], tl.float32)

    lo, hi, n_band, n_free = _band(start_n, BLOCK_N, N, W, HALF_H, BLOCK_M)  # queries these keys hide from
    for i in range(0, n_band):
        dk, dv = _dkdv_tile(dk, dv, k, v, Q, DO, LSE, DELTA, q_strides, do_strides, _band_tile(i, lo, hi, N, BLOCK_M),
                            offs_n, start_n, offs_d, bh, N, W, HALF_H, HALF_W, qk_scale, threshold, keep_scale,
                            seed, HEAD_DIM, BLOCK_M, BLOCK_N, True, DROPOUT, UPCAST, PRECISION)
    for i in range(0, n_free):
        dk, dv = _dkdv_tile(dk, dv, k, v, Q, DO, LSE, DELTA, q_strides, do_strides, _free_tile(i, lo, hi, BLOCK_M),
                            offs_n, start_n, offs_d, bh, N, W, HALF_H, HALF_W, qk_scale, threshold, keep_scale,
                            seed, HEAD_DIM, BLOCK_M, BLOCK_N, False, DROPOUT, UPCAST, PRECISION)
    _store_tile(DK + b * dk_strides[0] + h * dk_strides[1], dk * sm_scale, offs_n, offs_d, dk_strides, N, HEAD_DIM)
    _store_tile(DV + b * dv_strides[0] + h * dv_strides[1], dv, offs_n, offs_d, dv_strides, N, HEAD_DIM)


@triton.jit
def _dq_tile(dq, q, do, lse, delta, K, V, k_strides, v_strides, offs_m, start_n, offs_d,
             bh, N, W, HALF_H, HALF_W, qk_scale, threshold, keep_scale, seed,
             HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr, MASKED: tl.constexpr,
             DROPOUT: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr):
    """Add the keys start_n .. start_n + BLOCK_N - 1 to dQ / scale of the queries offs_m."""
    offs_n = start_n + tl.arange(0, BLOCK_N)
    k = _load_tile(K, offs_n, offs_d, k_strides, N, HEAD_DIM, UPCAST)  # (BLOCK_N, D_PAD)
    v = _load_tile(V, offs_n, offs_d, v_strides, N, HEAD_DIM, UPCAST)
    s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale  # (BLOCK_M, BLOCK_N)
    p = tl.math.exp2(s - lse[:, None])
    if MASKED:
        p = tl.where(_visible(offs_m[:, None], offs_n[None, :], N, W, HALF_H, HALF_W), p, 0.0)
    dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)  # (BLOCK_M, BLOCK_N)
    if DROPOUT:
        dp = tl.where(keep_tile(seed, bh, offs_m, start_n, N, threshold, BLOCK_N), dp * keep_scale, 0.0)
    ds = p * (dp - delta[:, None])
    return dq + tl.dot(ds.to(k.dtype), k, input_precision=PRECISION)


@triton.autotune(configs=_DQ_CONFIGS, key=_TUNE_KEY)
@triton.jit(do_not_specialize=["seed"])
def _bwd_dq_kernel(
    Q, K, V, DO, DQ, LSE, DELTA,
    q_strides, k_strides, v_strides, do_strides, dq_strides,
    N, W, HEADS, HALF_H, HALF_W, sm_scale, threshold, keep_scale, seed,
    HEAD_DIM: tl.constexpr, D_PAD: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    DROPOUT: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr,
):
    """Program (i, bh) computes dQ of query block i, walking over the keys."""
    start_m = tl.program_id(0) * BLOCK_M
    bh = tl.program_id(1)
    b, h = bh // HEADS, bh % HEADS
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, D_PAD)
    K += b * k_strides[0] + h * k_strides[1]
    V += b * v_strides[0] + h * v_strides[1]
    q = _load_tile(Q + b * q_strides[0] + h * q_strides[1], offs_m, offs_d, q_strides, N, HEAD_DIM, UPCAST)
    do = _load_tile(DO + b * do_strides[0] + h * do_strides[1], offs_m, offs_d, do_strides, N, HEAD_DIM, UPCAST)
    lse = tl.load(LSE + bh * N + offs_m, mask=offs_m < N, other=0.0)
    delta = tl.load(DELTA + bh * N + offs_m, mask=offs_m < N, other=0.0)
    qk_scale = sm_scale * 1.4426950408889634
    dq = tl.zeros([BLOCK_M, D_PAD], tl.float32)

    lo, hi, n_band, n_free = _band(start_m, BLOCK_M, N, W, HALF_H, BLOCK_N)
    for i in range(0, n_band):
        dq = _dq_tile(dq, q, do, lse, delta, K, V, k_strides, v_strides, offs_m, _band_tile(i, lo, hi, N, BLOCK_N),
                      offs_d, bh, N, W, HALF_H, HALF_W, qk_scale, threshold, keep_scale, seed,
                      HEAD_DIM, BLOCK_N, True, DROPOUT, UPCAST, PRECISION)
    for i in range(0, n_free):
        dq = _dq_tile(dq, q, do, lse, delta, K, V, k_strides, v_strides, offs_m, _free_tile(i, lo, hi, BLOCK_N),
                      offs_d, bh, N, W, HALF_H, HALF_W, qk_scale, threshold, keep_scale, seed,
                      HEAD_DIM, BLOCK_N, False, DROPOUT, UPCAST, PRECISION)
    _store_tile(DQ + b * dq_strides[0] + h * dq_strides[1], dq * sm_scale, offs_m, offs_d, dq_strides, N, HEAD_DIM)
