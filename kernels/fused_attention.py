"""Fused neighbor-masked attention in Triton: forward, backward and dropout.

UniAD (You et al., NeurIPS 2022, Sec. 3.3) lets every query attend to every key *except* the ones in
a window around itself -- the inverse of local attention. Tokens live on an H x W grid, numbered
row-major (token t sits at (t // W, t % W)), and key (i', j') is blocked for query (i, j) iff

    |i - i'| <= kh // 2   and   |j - j'| <= kw // 2.

The plain PyTorch version (`uniad_mini.attention.attend`, and `reference_attention` below) builds the
scores S = q k^T * scale, fills a dense (N, N) bool mask with -inf, softmaxes, drops, and multiplies by
v: it writes and re-reads (B, heads, N, N) tensors. These kernels follow Triton's fused-attention
tutorial (06) and FlashAttention-2 instead, and never hold more than a tile of scores.

Forward (`_fwd_kernel`). One program owns BLOCK_M query rows of one (batch, head) and walks over the
keys in blocks of BLOCK_N, keeping in fp32 registers the running row max m, the softmax denominator
l = sum_n exp(s_n - m) and acc = sum_n exp(s_n - m) * keep_n * v_n; when a block raises the maximum
from m to m', l and acc are rescaled by exp(m - m') ("online softmax"). At the end o = acc / l (times
1/(1-p) with dropout) and the log-sum-exp lse = m + log l of each row is stored for the backward.
Exponentials are `exp2`, with log2(e) folded into the scale; the max is taken on the raw scores, so
each score costs one fused multiply-add (s * scale - m) before its exp2.

Band split. The mask is computed from token coordinates (`_visible`), never loaded: the grid width,
the window halves and N are compile-time constants, and |i - i'| <= h is one unsigned compare. A query tile that
spans grid rows r0..r1 can only have blocked keys among the rows r0 - kh//2 .. r1 + kh//2, i.e. in the
contiguous token range [(r0 - kh//2) W, (r1 + kh//2 + 1) W) (`_band`). Every loop below therefore runs
twice: over the key tiles that meet this band (plus the partial last tile), with the mask, then over
all other tiles, with no mask arithmetic at all -- like the two stages of the tutorial's causal loop.
At 56 x 56 a 128-query tile meets 9-10 of the 49 key tiles of 64; the rest skip the mask. The window
is symmetric, so the same band bounds the queries that a key tile is blocked for.

Backward, three launches and no atomics. With P = softmax(S), Z = keep / (1-p) and O = (P*Z) V,

    dV = (P*Z)^T dO,     dP = (dO V^T) * Z,     dS = P * (dP - delta),     delta = rowsum(dO * O),
    dQ = scale * dS K,   dK = scale * dS^T Q.

(delta = rowsum(dP * P) = rowsum(dO * O) holds with dropout too.) `_bwd_delta_kernel` computes delta
once per row; `_bwd_dkdv_kernel` owns a block of keys and walks over the queries (dK, dV), queries on
the rows of its tiles as in the forward (so the dropout bits come out where the threads hold the
scores); `_bwd_dq_kernel` owns a block of queries and walks over the keys (dQ). P is recomputed tile by
tile as exp2(s * scale - lse): nothing N x N is stored.

Dropout (`dropout.py`): the keep decision of score (bh, m, n) comes from one 7-round Philox call per
16 scores, 8 bits per decision, so p is realised as a multiple of 1/256 (`effective_dropout_p`); the
16 scores of a call are the ones one thread holds, so no two threads repeat a call.

Launch configurations are chosen by `triton.autotune` per (N, head dim, dtype, dropout, B * heads
rounded up to a power of two) from a short list of Hopper-sized tiles, those that spill registers with
fp32 inputs pruned for fp32. Every kernel is a pure function of its inputs (no atomics, no in-place
writes, the seed is an argument), so the autotuner may run it as often as it likes.

On CPU the kernels run under Triton's interpreter (TRITON_INTERPRET=1, set before this module is
imported), with one small configuration each. Interpreter traps shape the code: bf16 `tl.dot` is wrong
there (every load is upcast to fp32 when interpreting), it accepts blocks a GPU would reject (every dot
operand here is >= 16 on each side), it lets a loop re-bind a variable to a block of another shape
(the compiler refuses; `bench --compile-check` / `--static` catch it on CPU), and `tl.device_assert` never fires
(all checks live in the Python wrapper).
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from uniad_mini.neighbors import check_grid_window, neighbor_mask, pair

from .backward import _bwd_delta_kernel, _bwd_dkdv_kernel, _bwd_dq_kernel
from .dropout import dense_keep_mask, dropout_threshold, effective_dropout_p, keep_tile
from .tiles import (INTERPRET, _FWD_CONFIGS, _PRUNE, _TUNE_KEY, _band, _band_tile, _free_tile, _head, _load_tile,
                    _program, _query_pos, _store_tile, _visible)

MAX_HEAD_DIM = 128


# ------------------------------------------------------------------------------------------------
# Forward
# ------------------------------------------------------------------------------------------------
@triton.jit
def _fwd_tile(acc, l_i, m_i, q, q_row, q_col, K, V, k_strides, v_strides, offs_m, start_n, offs_d, bh,
              qk_scale, threshold, seed, N: tl.constexpr, W: tl.constexpr, HALF_H: tl.constexpr,
              HALF_W: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr, MASKED: tl.constexpr,
              DROPOUT: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr):
    """Fold the keys start_n .. start_n + BLOCK_N - 1 into the running (acc, l, m) of the queries offs_m.

    The max is taken on the raw scores (scale > 0 keeps the order) and scaled per row, so each score
    costs one fused multiply-add, s * qk_scale - m, before its exp2."""
    offs_n = start_n + tl.arange(0, BLOCK_N)
    k = _load_tile(K, offs_n, offs_d, k_strides, N, HEAD_DIM, UPCAST)  # (BLOCK_N, D_PAD)
    v = _load_tile(V, offs_n, offs_d, v_strides, N, HEAD_DIM, UPCAST)  # (BLOCK_N, D_PAD)
    s = tl.dot(q, tl.trans(k), input_precision=PRECISION)  # (BLOCK_M, BLOCK_N), raw scores
    if MASKED:
        s = tl.where(_visible(q_row, q_col, offs_n, N, W, HALF_H, HALF_W), s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1) * qk_scale)  # log2 units
    if MASKED:
        # A row may have seen only blocked keys so far (max still -inf): measure from 0, so that
        # exp2(-inf - 0) = 0 instead of exp2(-inf + inf) = NaN.
        m_ref = tl.where(m_new == float("-inf"), 0.0, m_new)
    else:
        m_ref = m_new  # finite: every score of the tile is
    alpha = tl.math.exp2(m_i - m_ref)  # rescales what was accumulated under the old max
    p = tl.math.exp2(s * qk_scale - m_ref[:, None])  # (BLOCK_M, BLOCK_N), 0 where blocked
    l_i = l_i * alpha + tl.sum(p, 1)  # the denominator counts dropped weights too
    if DROPOUT:  # the 1/(1-p) is applied once, at the end
        p = tl.where(keep_tile(seed, bh, offs_m, start_n, N, threshold, BLOCK_N), p, 0.0)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
    return acc, l_i, m_new


@triton.autotune(configs=_FWD_CONFIGS, key=_TUNE_KEY, prune_configs_by=_PRUNE)
@triton.jit(do_not_specialize=["seed"])
def _fwd_kernel(
    Q, K, V, O, LSE,  # (B, heads, N, d) x 4 and (B*heads, N) fp32
    q_strides, k_strides, v_strides, o_strides,  # (batch, head, token, dim) strides of each
    HEADS, BH_BUCKET, sm_scale, threshold, keep_scale, seed,
    N: tl.constexpr, W: tl.constexpr, HALF_H: tl.constexpr, HALF_W: tl.constexpr,
    HEAD_DIM: tl.constexpr, D_PAD: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    DROPOUT: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr,
):
    start_m, offs_m, bh, b, h, qk_scale = _program(HEADS, sm_scale, BLOCK_M)
    offs_d = tl.arange(0, D_PAD)
    K, V = _head(K, k_strides, b, h), _head(V, v_strides, b, h)
    q = _load_tile(_head(Q, q_strides, b, h), offs_m, offs_d, q_strides, N, HEAD_DIM, UPCAST)
    q_row, q_col = _query_pos(offs_m, W, HALF_H, HALF_W)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)  # running max (log2 units)
    l_i = tl.zeros([BLOCK_M], tl.float32)  # running softmax denominator
    acc = tl.zeros([BLOCK_M, D_PAD], tl.float32)  # running numerator @ v

    lo, hi, n_band, n_free = _band(start_m, BLOCK_M, N, W, HALF_H, BLOCK_N)
    for i in range(0, n_band):  # key tiles that meet the window band: with the mask
        acc, l_i, m_i = _fwd_tile(acc, l_i, m_i, q, q_row, q_col, K, V, k_strides, v_strides, offs_m,
                                  _band_tile(i, lo, hi, N, BLOCK_N), offs_d, bh, qk_scale, threshold, seed,
                                  N, W, HALF_H, HALF_W, HEAD_DIM, BLOCK_N, True, DROPOUT, UPCAST, PRECISION)
    for i in range(0, n_free):  # all other key tiles: full and visible, no mask
        acc, l_i, m_i = _fwd_tile(acc, l_i, m_i, q, q_row, q_col, K, V, k_strides, v_strides, offs_m,
                                  _free_tile(i, lo, hi, BLOCK_N), offs_d, bh, qk_scale, threshold, seed,
                                  N, W, HALF_H, HALF_W, HEAD_DIM, BLOCK_N, False, DROPOUT, UPCAST, PRECISION)

    # Every real query sees at least one key (checked in the wrapper), so l_i > 0 on rows < N; the
    # padding rows past N are never stored.
    l_safe = tl.where(l_i > 0.0, l_i, 1.0)
    if DROPOUT:
        acc = acc * keep_scale  # kept weights count 1 / (1 - p)
    _store_tile(_head(O, o_strides, b, h), acc / l_safe[:, None], offs_m, offs_d, o_strides, N, HEAD_DIM)
    tl.store(LSE + bh * N + offs_m, m_i + tl.math.log2(l_safe), mask=offs_m < N)  # log2 units


# ------------------------------------------------------------------------------------------------
# Python side: checks, arguments, autograd wrapper
# ------------------------------------------------------------------------------------------------
def _dot_precision(dtype: torch.dtype) -> str:
    """fp32 inputs: "tf32x3" (three TF32 tensor-core products, about fp32 accuracy) unless the user
    allowed plain TF32 for torch matmuls too ("ieee" would leave the tensor cores idle). fp16/bf16 use
    the tensor cores natively and ignore this."""
    if dtype == torch.float32 and not INTERPRET and not torch.backends.cuda.matmul.allow_tf32:
        return "tf32x3"
    return "tf32" if not INTERPRET else "ieee"


def _check_inputs(q, k, v, grid, window, dropout_p, scale):
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
    if not scale > 0.0:  # the kernels take the row max on raw scores
        raise ValueError(f"scale must be positive, got {scale}")
    check_grid_window(H, W, window)  # the reference's error when some query would see no key
    if q.device.type != "cuda" and not INTERPRET:
        raise RuntimeError(
            "the Triton neighbor-attention kernel got CPU tensors, but its kernels were compiled for a "
            "GPU: on CPU it runs only in Triton's interpreter. Set TRITON_INTERPRET=1 before "
            "uniad_mini.kernels (and triton) are imported, or use backend='torch'."
        )


def _launch_args(N, W, heads, window, scale, dropout_p, seed, d, dtype, bh=1):
    """Runtime arguments shared by the attention kernels, and their constexprs (bar the tiles).

    The grid width, the window halves and N are compile-time constants (one compile per grid and
    window, as the autotuner keys on N anyway): the mask's divisions become multiplies. bh = B * heads
    enters the autotune key rounded up to a power of two (tiles tuned at B = 8 are not reused at 64)."""
    kh, kw = window
    threshold = dropout_threshold(dropout_p)
    keep_scale = 256.0 / (256 - threshold)  # 1 / (1 - effective p)
    runtime = (heads, triton.next_power_of_2(bh), scale, threshold, keep_scale, seed)
    meta = dict(N=N, W=W, HALF_H=kh // 2, HALF_W=kw // 2, HEAD_DIM=d, D_PAD=max(16, triton.next_power_of_2(d)),
                DROPOUT=threshold > 0, UPCAST=INTERPRET, PRECISION=_dot_precision(dtype))
    return runtime, meta


def _rows(N, bh):
    """Launch grid over row blocks: (cdiv(N, BLOCK_M), B*heads)."""
    return lambda META: (triton.cdiv(N, META["BLOCK_M"]), bh)


class _NeighborAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, grid, window, dropout_p, scale, seed):
        B, heads, N, d = q.shape
        runtime, meta = _launch_args(N, grid[1], heads, window, scale, dropout_p, seed, d, q.dtype, B * heads)
        o = torch.empty((B, heads, N, d), device=q.device, dtype=q.dtype)
        lse = torch.empty((B * heads, N), device=q.device, dtype=torch.float32)
        _fwd_kernel[_rows(N, B * heads)](q, k, v, o, lse, q.stride(), k.stride(), v.stride(), o.stride(),
                                         *runtime, **meta)
        ctx.save_for_backward(q, k, v, o, lse)
        ctx.runtime, ctx.meta = runtime, meta
        return o

    @staticmethod
    def backward(ctx, do):
        q, k, v, o, lse = ctx.saved_tensors
        runtime, meta = ctx.runtime, ctx.meta
        B, heads, N, d = q.shape
        delta = torch.empty_like(lse)
        _bwd_delta_kernel[(triton.cdiv(N, 64), B * heads)](
            o, do, delta, o.stride(), do.stride(), heads, N=N, HEAD_DIM=d, D_PAD=meta["D_PAD"], BLOCK_M=64)
        dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
        keys = lambda META: (triton.cdiv(N, META["BLOCK_N"]), B * heads)  # noqa: E731
        _bwd_dkdv_kernel[keys](q, k, v, do, dk, dv, lse, delta, q.stride(), k.stride(), v.stride(), do.stride(),
                               dk.stride(), dv.stride(), *runtime, **meta)
        _bwd_dq_kernel[_rows(N, B * heads)](q, k, v, do, dq, lse, delta, q.stride(), k.stride(), v.stride(),
                                            do.stride(), dq.stride(), *runtime, **meta)
        return dq, dk, dv, None, None, None, None, None


def neighbor_attention(q, k, v, grid, window=(7, 7), dropout_p: float = 0.0, scale: float | None = None,
                       seed: int | None = None):
    """softmax(q k^T * scale, keys in each query's window blocked) (dropped) @ v, fused.

    q, k, v: (B, heads, H*W, d) fp32/fp16/bf16, d <= 128; grid=(H, W); window=(kh, kw) or an int.
    scale defaults to 1/sqrt(d). With dropout_p > 0 the kernel drops attention weights with probability
    `effective_dropout_p(dropout_p)` (p rounded to a multiple of 1/256) using Philox random numbers
    from `seed` (drawn from torch's default generator when None). Returns (B, heads, N, d).
    """
    window = pair(window)
    grid = (int(grid[0]), int(grid[1]))
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    _check_inputs(q, k, v, grid, window, dropout_p, scale)
    if seed is None:
        seed = int(torch.randint(0, 2**31 - 1, (1,)).item()) if dropout_p > 0.0 else 0
    return _NeighborAttention.apply(q, k, v, grid, window, float(dropout_p), scale, int(seed))


# ------------------------------------------------------------------------------------------------
# The plain PyTorch reference, with the dropout mask made explicit
# ------------------------------------------------------------------------------------------------
def dropout_keep_mask(seed: int, B: int, heads: int, N: int, dropout_p: float, device="cpu") -> torch.Tensor:
    """Bool (B, heads, N, N), True where `neighbor_attention(..., dropout_p, seed=seed)` keeps a weight."""
    keep = torch.empty((B * heads, N, N), device=device, dtype=torch.int8)
    dense_keep_mask(keep, N, dropout_p, seed)
    return keep.view(B, heads, N, N).bool()


def reference_attention(q, k, v, grid, window, dropout_p: float = 0.0, keep=None, scale=None):
    """The same maths in plain PyTorch (dense (N, N) mask), in the dtype of q.

    keep: bool (B, heads, N, N) dropout decisions (see `dropout_keep_mask`), required when dropout_p > 0;
    kept weights are scaled by 1 / (1 - effective_dropout_p(dropout_p)), as in the kernel.
    """
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    blocked = neighbor_mask(grid[0], grid[1], window).to(q.device)  # (N, N), True = blocked
    scores = (q @ k.transpose(-2, -1)) * scale  # (B, heads, N, N)
    weights = scores.masked_fill(blocked, float("-inf")).softmax(dim=-1)
    if dropout_p > 0.0:
        if keep is None:
            raise ValueError("reference_attention with dropout needs the keep mask (dropout_keep_mask)")
        weights = weights * keep / (1.0 - effective_dropout_p(dropout_p))
    return weights @ v  # (B, heads, N, d)
