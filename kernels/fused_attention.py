"""Fused neighbor-masked attention in Triton: forward, backward and dropout in one file.

UniAD (You et al., NeurIPS 2022, Sec. 3.3) lets every query attend to every key *except* the ones in
a window around itself -- the inverse of local attention. Tokens live on an H x W grid, numbered
row-major (token t sits at (t // W, t % W)), and key (i', j') is blocked for query (i, j) iff

    |i - i'| <= kh // 2   and   |j - j'| <= kw // 2.

The plain PyTorch version (`uniad_mini.attention.attend`, and `reference_attention` below) builds the
scores S = q k^T * scale, fills a dense (N, N) bool mask with -inf, softmaxes, drops, and multiplies by
v: it writes and re-reads the (B, heads, N, N) score, weight and dropout tensors to memory. This kernel
follows Triton's fused-attention tutorial (06) and FlashAttention-2 instead:

Forward (`_fwd_kernel`). One program owns BLOCK_M query rows of one (batch, head). It walks over the
keys in blocks of BLOCK_N and keeps three running quantities in registers,

    m  = the largest score seen so far          (per row)
    l  = sum_n exp(s_n - m)                     (per row, the softmax denominator)
    acc = sum_n exp(s_n - m) * keep_n / (1-p) * v_n    (BLOCK_M x d)

and when a new block raises the maximum from m to m', it rescales l and acc by exp(m - m') ("online
softmax"). The mask is computed from the token coordinates of the row and column indices -- a few
integer ops per score, never a tensor in memory. At the end o = acc / l, and the kernel stores the
log-sum-exp  lse = m + log(l)  per row (4 bytes per query) for the backward. Exponentials are `exp2`
with log2(e) folded into the scale, as in the tutorial. Scores, m, l and acc are fp32 whatever the
input dtype.

Why fuse rather than skip: a 7x7 window on a 14x14 grid blocks 49 of 196 keys for a central query, so
75% of its keys stay visible (94% at 28 x 28, 98% at 56 x 56; more for queries near the border). There
is little to skip; the speed comes from never materialising the (N, N) matrices.

Backward (`_bwd_dkdv_kernel`, `_bwd_dq_kernel`). With P = softmax(S), Z = keep / (1-p) and O = (P*Z) V,

    dV = (P*Z)^T dO,     dP = (dO V^T) * Z,     dS = P * (dP - delta),     delta = rowsum(dO * O),
    dQ = scale * dS K,   dK = scale * dS^T Q.

P is recomputed block by block from q, k and the saved lse (exp2(s - lse)), so nothing of size N x N
is stored between passes either. One launch (`_bwd_kernel`): program i first owns key block i and walks
over all queries (dK, dV; `_bwd_dkdv`), then owns query block i and walks over all keys (dQ; `_bwd_dq`).
Every gradient has one owner, so there are no atomics. delta is recomputed from O and dO where needed
instead of in a separate launch. (delta = rowsum(dO * O) holds with dropout too:
rowsum(dP * P) = rowsum(dO V^T * Z * P) = rowsum(dO * O).)

Dropout. The keep decision for score (b*heads + h, m, n) is `tl.rand(seed, counter) >= p` with the
counter ((b*heads + h) * N + m) * N + n: Philox is counter-based, so the backward regenerates exactly
the forward's bits from (seed, counter) without storing a mask. The seed is drawn from torch's
generator when not given, so `torch.manual_seed` makes a run reproducible. `dropout_keep_mask` writes
the same bits to a dense tensor -- for tests and the reference only.

On CPU the kernels run under Triton's interpreter (TRITON_INTERPRET=1, set before this module is
imported). Interpreter traps shape the code: bf16 `tl.dot` is wrong there (we upcast every load to fp32
when interpreting), it accepts blocks a GPU would reject (every dot operand here is >= 16 on each side:
blocks >= 16 and the head dim padded to a power of two >= 16), it lets a loop re-bind a variable to a
block of another shape (the compiler refuses: hence the two backward phases are separate functions),
and `tl.device_assert` never fires (all checks live in the Python wrapper).
"""
from __future__ import annotations

import functools
import math

import torch
import triton
import triton.language as tl

from uniad_mini.attention import _pair, check_grid_window, neighbor_mask

# The kernels below were built (decorated) in the mode current at import time: interpreted Python that
# runs on CPU tensors, or compiled for a GPU. Only the first can take CPU tensors.
INTERPRET = bool(triton.knobs.runtime.interpret)

MAX_HEAD_DIM = 128


# ------------------------------------------------------------------------------------------------
# Helpers shared by every kernel: which scores are visible, which survive dropout, tile I/O.
# `q_idx` and `k_idx` are broadcastable index blocks, e.g. offs_m[:, None] and offs_n[None, :].
# ------------------------------------------------------------------------------------------------
@triton.jit
def _visible(q_idx, k_idx, N, W, HALF_H, HALF_W):
    """True where query q_idx may look at key k_idx: a real key, outside the query's window."""
    near_i = tl.abs(q_idx // W - k_idx // W) <= HALF_H
    near_j = tl.abs(q_idx % W - k_idx % W) <= HALF_W
    return (k_idx < N) & ~(near_i & near_j)


@triton.jit
def _keep(seed, bh, q_idx, k_idx, N, dropout_p):
    """The dropout decision for score (bh, q_idx, k_idx): one Philox draw per (seed, counter)."""
    counter = (bh * N + q_idx).to(tl.int64) * N + k_idx  # int64: B*heads*N*N overflows int32
    return tl.rand(seed, counter) >= dropout_p


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
# Forward
# ------------------------------------------------------------------------------------------------
@triton.jit(do_not_specialize=["seed"])
def _fwd_kernel(
    Q, K, V, O, LSE,  # (B, heads, N, d) x 4 and (B*heads, N) fp32
    q_strides, k_strides, v_strides, o_strides,  # (batch, head, token, dim) strides of each
    N, W, HEADS, HALF_H, HALF_W, sm_scale, dropout_p, seed,
    HEAD_DIM: tl.constexpr, D_PAD: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    DROPOUT: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr,
):
    start_m = tl.program_id(0) * BLOCK_M
    bh = tl.program_id(1)
    b, h = bh // HEADS, bh % HEADS
    offs_m = start_m + tl.arange(0, BLOCK_M)  # query rows of this program
    offs_d = tl.arange(0, D_PAD)
    Q += b * q_strides[0] + h * q_strides[1]
    K += b * k_strides[0] + h * k_strides[1]
    V += b * v_strides[0] + h * v_strides[1]
    O += b * o_strides[0] + h * o_strides[1]

    q = _load_tile(Q, offs_m, offs_d, q_strides, N, HEAD_DIM, UPCAST)  # (BLOCK_M, D_PAD)
    qk_scale = sm_scale * 1.4426950408889634  # exp(x) = exp2(x * log2(e))
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)  # running max (log2 units)
    l_i = tl.zeros([BLOCK_M], tl.float32)  # running softmax denominator
    acc = tl.zeros([BLOCK_M, D_PAD], tl.float32)  # running numerator @ v

    for start_n in range(0, N, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        k = _load_tile(K, offs_n, offs_d, k_strides, N, HEAD_DIM, UPCAST)  # (BLOCK_N, D_PAD)
        v = _load_tile(V, offs_n, offs_d, v_strides, N, HEAD_DIM, UPCAST)  # (BLOCK_N, D_PAD)
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale  # (BLOCK_M, BLOCK_N)
        visible = _visible(offs_m[:, None], offs_n[None, :], N, W, HALF_H, HALF_W)
        s = tl.where(visible, s, float("-inf"))

        # Online softmax. A row may have seen only blocked keys so far (its max is still -inf): use 0
        # as its reference point, so exp2(-inf - 0) = 0 instead of exp2(-inf + inf) = NaN.
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_ref = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.math.exp2(m_i - m_ref)  # rescales what was accumulated under the old max
        p = tl.math.exp2(s - m_ref[:, None])  # (BLOCK_M, BLOCK_N), 0 where blocked
        l_i = l_i * alpha + tl.sum(p, 1)  # the denominator counts dropped weights too
        if DROPOUT:
            keep = _keep(seed, bh, offs_m[:, None], offs_n[None, :], N, dropout_p)
            p = tl.where(keep, p * (1.0 / (1.0 - dropout_p)), 0.0)  # kept weights, scaled by 1/(1-p)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
        m_i = m_new

    # Every real query sees at least one key (checked in the wrapper), so l_i > 0 on rows < N; the
    # padding rows past N are never stored.
    l_safe = tl.where(l_i > 0.0, l_i, 1.0)
    _store_tile(O, acc / l_safe[:, None], offs_m, offs_d, o_strides, N, HEAD_DIM)
    tl.store(LSE + bh * N + offs_m, m_i + tl.math.log2(l_safe), mask=offs_m < N)  # log2 units


# ------------------------------------------------------------------------------------------------
# Backward
# ------------------------------------------------------------------------------------------------
@triton.jit
def _bwd_dkdv(Q, K, V, O, DO, LSE, q_strides, k_strides, v_strides, o_strides, do_strides,
              offs_n, offs_d, bh, N, W, HALF_H, HALF_W, qk_scale, dropout_p, seed,
              HEAD_DIM: tl.constexpr, BLOCK_WALK: tl.constexpr, DROPOUT: tl.constexpr,
              UPCAST: tl.constexpr, PRECISION: tl.constexpr):
    """dK / scale and dV for the keys offs_n, walking over all queries.

    Transposed orientation (keys down, queries across), as in the tutorial, so that dV = A^T dO and
    dK = dS^T Q are plain dots without transposing a computed tile.
    """
    k = _load_tile(K, offs_n, offs_d, k_strides, N, HEAD_DIM, UPCAST)  # (BLOCK_OWN, D_PAD)
    v = _load_tile(V, offs_n, offs_d, v_strides, N, HEAD_DIM, UPCAST)  # (BLOCK_OWN, D_PAD)
    dk = tl.zeros(k.shape, tl.float32)
    dv = tl.zeros(v.shape, tl.float32)
    for start_m in range(0, N, BLOCK_WALK):
        offs_m = start_m + tl.arange(0, BLOCK_WALK)
        q = _load_tile(Q, offs_m, offs_d, q_strides, N, HEAD_DIM, UPCAST)  # (BLOCK_WALK, D_PAD)
        do = _load_tile(DO, offs_m, offs_d, do_strides, N, HEAD_DIM, UPCAST)  # (BLOCK_WALK, D_PAD)
        o = _load_tile(O, offs_m, offs_d, o_strides, N, HEAD_DIM, UPCAST)
        delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)  # (BLOCK_WALK,) rowsum(dO * O)
        lse = tl.load(LSE + offs_m, mask=offs_m < N, other=0.0)  # (BLOCK_WALK,)

        s_t = tl.dot(k, tl.trans(q), input_precision=PRECISION) * qk_scale  # (BLOCK_OWN, BLOCK_WALK)
        visible = _visible(offs_m[None, :], offs_n[:, None], N, W, HALF_H, HALF_W) & (offs_m[None, :] < N)
        p_t = tl.where(visible, tl.math.exp2(s_t - lse[None, :]), 0.0)  # softmax weights P^T
        dp_t = tl.dot(v, tl.trans(do), input_precision=PRECISION)  # (dO V^T)^T
        if DROPOUT:  # the very bits the forward drew: same seed, same counters
            keep_t = _keep(seed, bh, offs_m[None, :], offs_n[:, None], N, dropout_p)
            a_t = tl.where(keep_t, p_t * (1.0 / (1.0 - dropout_p)), 0.0)
            dp_t = tl.where(keep_t, dp_t * (1.0 / (1.0 - dropout_p)), 0.0)
        else:
            a_t = p_t
        dv += tl.dot(a_t.to(do.dtype), do, input_precision=PRECISION)
        ds_t = p_t * (dp_t - delta[None, :])  # (BLOCK_OWN, BLOCK_WALK)
        dk += tl.dot(ds_t.to(q.dtype), q, input_precision=PRECISION)
    return dk, dv


@triton.jit
def _bwd_dq(Q, K, V, O, DO, LSE, q_strides, k_strides, v_strides, o_strides, do_strides,
            offs_m, offs_d, bh, N, W, HALF_H, HALF_W, qk_scale, dropout_p, seed,
            HEAD_DIM: tl.constexpr, BLOCK_WALK: tl.constexpr, DROPOUT: tl.constexpr,
            UPCAST: tl.constexpr, PRECISION: tl.constexpr):
    """dQ / scale for the queries offs_m, walking over all keys."""
    q = _load_tile(Q, offs_m, offs_d, q_strides, N, HEAD_DIM, UPCAST)  # (BLOCK_OWN, D_PAD)
    do = _load_tile(DO, offs_m, offs_d, do_strides, N, HEAD_DIM, UPCAST)
    o = _load_tile(O, offs_m, offs_d, o_strides, N, HEAD_DIM, UPCAST)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)  # (BLOCK_OWN,) rowsum(dO * O)
    lse = tl.load(LSE + offs_m, mask=offs_m < N, other=0.0)
    dq = tl.zeros(q.shape, tl.float32)
    for start_n in range(0, N, BLOCK_WALK):
        offs_n = start_n + tl.arange(0, BLOCK_WALK)
        k = _load_tile(K, offs_n, offs_d, k_strides, N, HEAD_DIM, UPCAST)  # (BLOCK_WALK, D_PAD)
        v = _load_tile(V, offs_n, offs_d, v_strides, N, HEAD_DIM, UPCAST)
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale  # (BLOCK_OWN, BLOCK_WALK)
        visible = _visible(offs_m[:, None], offs_n[None, :], N, W, HALF_H, HALF_W) & (offs_m[:, None] < N)
        p = tl.where(visible, tl.math.exp2(s - lse[:, None]), 0.0)
        dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)  # (BLOCK_OWN, BLOCK_WALK)
        if DROPOUT:
            keep = _keep(seed, bh, offs_m[:, None], offs_n[None, :], N, dropout_p)
            dp = tl.where(keep, dp * (1.0 / (1.0 - dropout_p)), 0.0)
        ds = p * (dp - delta[:, None])
        dq += tl.dot(ds.to(k.dtype), k, input_precision=PRECISION)
    return dq


@triton.jit(do_not_specialize=["seed"])
def _bwd_kernel(
    Q, K, V, O, DO, DQ, DK, DV, LSE,
    q_strides, k_strides, v_strides, o_strides, do_strides, dq_strides, dk_strides, dv_strides,
    N, W, HEADS, HALF_H, HALF_W, sm_scale, dropout_p, seed,
    HEAD_DIM: tl.constexpr, D_PAD: tl.constexpr, BLOCK_OWN: tl.constexpr, BLOCK_WALK: tl.constexpr,
    DROPOUT: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr,
):
    """Program i of one (batch, head) computes dK, dV of key block i (walking over all queries), then
    dQ of query block i (walking over all keys). Every gradient has a single owner: no atomics.

    delta = rowsum(dO * O) is recomputed from O where it is needed rather than in a separate launch:
    BLOCK_WALK x d multiply-adds per step, next to four BLOCK_OWN x BLOCK_WALK x d dots.
    """
    bh = tl.program_id(1)
    b, h = bh // HEADS, bh % HEADS
    own = tl.program_id(0) * BLOCK_OWN + tl.arange(0, BLOCK_OWN)
    offs_d = tl.arange(0, D_PAD)
    Q += b * q_strides[0] + h * q_strides[1]
    K += b * k_strides[0] + h * k_strides[1]
    V += b * v_strides[0] + h * v_strides[1]
    O += b * o_strides[0] + h * o_strides[1]
    DO += b * do_strides[0] + h * do_strides[1]
    LSE += bh * N
    qk_scale = sm_scale * 1.4426950408889634

    dk, dv = _bwd_dkdv(Q, K, V, O, DO, LSE, q_strides, k_strides, v_strides, o_strides, do_strides,
                       own, offs_d, bh, N, W, HALF_H, HALF_W, qk_scale, dropout_p, seed,
                       HEAD_DIM, BLOCK_WALK, DROPOUT, UPCAST, PRECISION)
    _store_tile(DK + b * dk_strides[0] + h * dk_strides[1], dk * sm_scale, own, offs_d, dk_strides, N, HEAD_DIM)
    _store_tile(DV + b * dv_strides[0] + h * dv_strides[1], dv, own, offs_d, dv_strides, N, HEAD_DIM)

    dq = _bwd_dq(Q, K, V, O, DO, LSE, q_strides, k_strides, v_strides, o_strides, do_strides,
                 own, offs_d, bh, N, W, HALF_H, HALF_W, qk_scale, dropout_p, seed,
                 HEAD_DIM, BLOCK_WALK, DROPOUT, UPCAST, PRECISION)
    _store_tile(DQ + b * dq_strides[0] + h * dq_strides[1], dq * sm_scale, own, offs_d, dq_strides, N, HEAD_DIM)


@triton.jit(do_not_specialize=["seed"])
def _keep_mask_kernel(KEEP, N, dropout_p, seed, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Write the dropout decisions the attention kernels use, densely (tests and reference only)."""
    bh = tl.program_id(2)
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    keep = _keep(seed, bh, offs_m[:, None], offs_n[None, :], N, dropout_p)
    ptrs = KEEP + (bh * N + offs_m[:, None]).to(tl.int64) * N + offs_n[None, :]
    tl.store(ptrs, keep.to(tl.int8), mask=(offs_m[:, None] < N) & (offs_n[None, :] < N))


# ------------------------------------------------------------------------------------------------
# Launch configuration
# ------------------------------------------------------------------------------------------------
# (16-bit inputs?, padded head dim) -> (BLOCK_M, BLOCK_N, num_warps) of the forward and
# (BLOCK_OWN, BLOCK_WALK, num_warps) of the backward, for many programs / for few. Chosen so that none
# spills registers on sm_90 (compiled ahead of time and checked with cuobjdump, see docs/kernel.md),
# except fp32 at d = 128; not yet tuned by measurement.
_FWD_TILES = {
    (True, 16): ((128, 64, 8), (64, 64, 4)), (True, 32): ((128, 64, 8), (64, 64, 4)),
    (True, 64): ((128, 64, 8), (64, 32, 4)), (True, 128): ((128, 64, 8), (64, 64, 4)),
    (False, 16): ((128, 32, 8), (64, 32, 4)), (False, 32): ((128, 32, 8), (64, 32, 4)),
    (False, 64): ((128, 32, 8), (64, 32, 4)), (False, 128): ((128, 32, 8), (128, 32, 8)),
}
_BWD_TILES = {
    (True, 16): ((128, 32, 8), (64, 32, 4)), (True, 32): ((128, 32, 8), (64, 32, 4)),
    (True, 64): ((64, 16, 8), (64, 16, 8)), (True, 128): ((32, 16, 4), (32, 16, 4)),
    (False, 16): ((128, 32, 8), (64, 32, 4)), (False, 32): ((128, 32, 8), (64, 32, 4)),
    (False, 64): ((32, 16, 4), (32, 16, 4)), (False, 128): ((32, 16, 4), (32, 16, 4)),
}


def _blocks(kind: str, d_pad: int, dtype: torch.dtype, N: int, bh: int) -> dict:
    """Tile sizes and launch options of the forward ("fwd") or backward ("bwd") kernel.

    Under the interpreter the sizes only trade Python overhead against NumPy work; 32 keeps the loops
    short while still crossing several blocks at the small N of the tests. On a GPU, the larger tiles
    (more reuse of each loaded tile) when they still give every SM a few programs to run.
    """
    if INTERPRET:
        return dict(BLOCK_M=32, BLOCK_N=32) if kind == "fwd" else dict(BLOCK_OWN=32, BLOCK_WALK=32)
    many = bh * triton.cdiv(N, 128) >= 4 * _sm_count()
    table = _FWD_TILES if kind == "fwd" else _BWD_TILES
    own, walk, warps = table[(dtype != torch.float32, d_pad)][0 if many else 1]
    if kind == "fwd":
        return dict(BLOCK_M=own, BLOCK_N=walk, num_warps=warps, num_stages=3)
    return dict(BLOCK_OWN=own, BLOCK_WALK=walk, num_warps=warps, num_stages=2)


@functools.lru_cache(maxsize=None)
def _sm_count() -> int:
    return torch.cuda.get_device_properties(torch.cuda.current_device()).multi_processor_count


def _dot_precision(dtype: torch.dtype) -> str:
    """fp32 inputs: "tf32x3" (three TF32 tensor-core products, about fp32 accuracy) unless the user
    allowed plain TF32 for torch matmuls too ("ieee" would leave the tensor cores idle). fp16/bf16 use
    the tensor cores natively and ignore this."""
    if dtype == torch.float32 and not INTERPRET and not torch.backends.cuda.matmul.allow_tf32:
        return "tf32x3"
    return "tf32" if not INTERPRET else "ieee"


def _check_inputs(q, k, v, grid, window, dropout_p):
    if not (q.shape == k.shape == v.shape) or q.dim() != 4:
        raise ValueError(f"q, k, v must share one (B, heads, N, d) shape, got {tuple(q.shape)}, "
                         f"{tuple(k.shape)}, {tuple(v.shape)}")
    if not (q.dtype == k.dtype == v.dtype) or q.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise TypeError(f"neighbor_attention takes fp32, fp16 or bf16 q, k, v of one dtype, got "
                        f"{q.dtype}, {k.dtype}, {v.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError("q, k, v must be on one device")
    H, W = grid
    if q.shape[2] != H * W:
        raise ValueError(f"{q.shape[2]} tokens do not fill a {H}x{W} grid")
    if q.shape[3] > MAX_HEAD_DIM:
        raise ValueError(f"head dim {q.shape[3]} > {MAX_HEAD_DIM} is not supported by the fused kernel")
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"dropout_p must be in [0, 1), got {dropout_p}")
    check_grid_window(H, W, window)  # the reference's error when some query would see no key
    if q.device.type != "cuda" and not INTERPRET:
        raise RuntimeError(
            "the Triton neighbor-attention kernel got CPU tensors, but its kernels were compiled for a "
            "GPU: on CPU it runs only in Triton's interpreter. Set TRITON_INTERPRET=1 before "
            "uniad_mini.kernels (and triton) are imported, or use backend='torch'."
        )


def _launch_args(N, W, heads, window, scale, dropout_p, seed, d, dtype):
    kh, kw = window
    d_pad = max(16, triton.next_power_of_2(d))
    runtime = (N, W, heads, kh // 2, kw // 2, scale, dropout_p, seed)
    meta = dict(HEAD_DIM=d, D_PAD=d_pad, DROPOUT=dropout_p > 0.0,
                UPCAST=INTERPRET, PRECISION=_dot_precision(dtype))
    return runtime, meta, d_pad


# ------------------------------------------------------------------------------------------------
# Autograd wrapper
# ------------------------------------------------------------------------------------------------
class _NeighborAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, grid, window, dropout_p, scale, seed):
        B, heads, N, d = q.shape
        runtime, meta, d_pad = _launch_args(N, grid[1], heads, window, scale, dropout_p, seed, d, q.dtype)
        o = torch.empty((B, heads, N, d), device=q.device, dtype=q.dtype)
        lse = torch.empty((B * heads, N), device=q.device, dtype=torch.float32)
        cfg = _blocks("fwd", d_pad, q.dtype, N, B * heads)
        _fwd_kernel[(triton.cdiv(N, cfg["BLOCK_M"]), B * heads)](
            q, k, v, o, lse, q.stride(), k.stride(), v.stride(), o.stride(), *runtime, **meta, **cfg)
        ctx.save_for_backward(q, k, v, o, lse)
        ctx.runtime, ctx.meta, ctx.d_pad = runtime, meta, d_pad
        return o

    @staticmethod
    def backward(ctx, do):
        q, k, v, o, lse = ctx.saved_tensors
        runtime, meta, d_pad = ctx.runtime, ctx.meta, ctx.d_pad
        B, heads, N, d = q.shape
        dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
        cfg = _blocks("bwd", d_pad, q.dtype, N, B * heads)
        _bwd_kernel[(triton.cdiv(N, cfg["BLOCK_OWN"]), B * heads)](
            q, k, v, o, do, dq, dk, dv, lse,
            q.stride(), k.stride(), v.stride(), o.stride(), do.stride(), dq.stride(), dk.stride(), dv.stride(),
            *runtime, **meta, **cfg)
        return dq, dk, dv, None, None, None, None, None


def neighbor_attention(q, k, v, grid, window=(7, 7), dropout_p: float = 0.0, scale: float | None = None,
                       seed: int | None = None):
    """softmax(q k^T * scale, keys in each query's window blocked) (dropped) @ v, fused.

    q, k, v: (B, heads, H*W, d) fp32/fp16/bf16, d <= 128; grid=(H, W); window=(kh, kw) or an int.
    scale defaults to 1/sqrt(d). With dropout_p > 0 the kernel drops attention weights with Philox
    random numbers from `seed` (drawn from torch's default generator when None). Returns (B, heads, N, d).
    """
    window = _pair(window)
    grid = (int(grid[0]), int(grid[1]))
    _check_inputs(q, k, v, grid, window, dropout_p)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    if seed is None:
        seed = int(torch.randint(0, 2**31 - 1, (1,)).item()) if dropout_p > 0.0 else 0
    return _NeighborAttention.apply(q, k, v, grid, window, float(dropout_p), scale, int(seed))


# ------------------------------------------------------------------------------------------------
# The plain PyTorch reference, with the dropout mask made explicit
# ------------------------------------------------------------------------------------------------
def dropout_keep_mask(seed: int, B: int, heads: int, N: int, dropout_p: float, device="cpu") -> torch.Tensor:
    """Bool (B, heads, N, N), True where `neighbor_attention(..., dropout_p, seed=seed)` keeps a weight."""
    keep = torch.empty((B, heads, N, N), device=device, dtype=torch.int8)
    grid = (triton.cdiv(N, 64), triton.cdiv(N, 64), B * heads)
    _keep_mask_kernel[grid](keep, N, float(dropout_p), int(seed), BLOCK_M=64, BLOCK_N=64)
    return keep.bool()


def reference_attention(q, k, v, grid, window, dropout_p: float = 0.0, keep=None, scale=None):
    """The same maths in plain PyTorch (dense (N, N) mask), in the dtype of q.

    keep: bool (B, heads, N, N) dropout decisions (see `dropout_keep_mask`), required when dropout_p > 0.
    """
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    blocked = neighbor_mask(grid[0], grid[1], window).to(q.device)  # (N, N), True = blocked
    scores = (q @ k.transpose(-2, -1)) * scale  # (B, heads, N, N)
    weights = scores.masked_fill(blocked, float("-inf")).softmax(dim=-1)
    if dropout_p > 0.0:
        if keep is None:
            raise ValueError("reference_attention with dropout needs the keep mask (dropout_keep_mask)")
        weights = weights * keep / (1.0 - dropout_p)
    return weights @ v  # (B, heads, N, d)
