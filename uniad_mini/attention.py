"""Multi-head attention by hand, with UniAD's neighbor mask (paper Sec. 3.3, "Neighbor Masked Attention").

UniAD reconstructs every feature token from the *other* tokens: in each attention layer a query at grid
position (i, j) may not look at the keys in the window around itself,

    blocked(i, j ; i', j')  <=>  |i - i'| <= kh // 2  and  |j - j'| <= kw // 2      (7 x 7 by default)

the window including the query itself. Without it the cheapest way to reconstruct a token is to copy
it (the "identical shortcut"), and a model that copies reconstructs anomalies too.

Interchangeable implementations of the same math sit behind one switch, `backend`:
  "torch"  -- the plain PyTorch lines below (the reference a student can read),
  "sdpa"   -- PyTorch's fused `scaled_dot_product_attention` with the mask as a bool tensor,
  "triton" -- the fused kernel in `uniad_mini.kernels` (the mask computed from coordinates, never stored),
  "auto"   -- the one measured fastest for the device and precision (`AUTO`, measured by
              `uniad-mini bench-speed --only attention`, docs/performance.md), the plain lines wherever
              they are as fast.

This is the one place a backend is chosen: a model stores "auto" or the name it was given, and the name
is resolved per call from the tensors' device and whether bf16 autocast is on, so a model trained on a GPU
with any backend scores on a CPU once loaded there (`UniAD.load(path, backend=...)`).
"""
from __future__ import annotations

import math
from functools import lru_cache

import torch
import torch.nn as nn
import torch.nn.functional as F

from .environment import env_flag
from .neighbors import neighbor_mask, pair
from .errors import OptionError

BACKENDS = ("auto", "torch", "sdpa", "triton")
# "auto" per (device type, precision of the products): the fastest measured, docs/performance.md.
# CPU bf16: PyTorch's CPU flash attention is slower than the plain lines (its backward most of all).
AUTO = {("cuda", "fp32"): "sdpa", ("cuda", "bf16"): "sdpa", ("cpu", "fp32"): "sdpa", ("cpu", "bf16"): "torch"}


@lru_cache(maxsize=16)
def _cached_mask(h: int, w: int, kh: int, kw: int, device: str) -> torch.Tensor:
    return neighbor_mask(h, w, (kh, kw)).to(device)


@lru_cache(maxsize=16)
def _cached_bias(h: int, w: int, kh: int, kw: int, device: str, dtype: torch.dtype) -> torch.Tensor:
    """The mask as the additive term of softmax(q k^T / sqrt(d) + mask): 0 where a key may be read, -inf where not."""
    blocked = _cached_mask(h, w, kh, kw, device)
    return torch.zeros(blocked.shape, dtype=dtype, device=device).masked_fill(blocked, float("-inf"))


@lru_cache(maxsize=16)
def _cached_allowed(h: int, w: int, kh: int, kw: int, device: str) -> torch.Tensor:
    return ~_cached_mask(h, w, kh, kw, device)  # SDPA's bool mask: True = may attend


def resolve_backend(backend: str, device: torch.device, precision: str | None = None) -> str:
    """Turn "auto" into a concrete backend for tensors on `device` (`AUTO`); precision "fp32" | "bf16", or
    None: read from autocast (on for bf16 training, off for scoring)."""
    if backend not in BACKENDS:
        raise OptionError(f"unknown attention backend {backend!r}; choose one of {BACKENDS}")
    if backend == "triton" and device.type != "cuda":
        if not env_flag("TRITON_INTERPRET"):
            raise OptionError(
                f"backend='triton' got tensors on {device.type}, but Triton kernels run on CPU only in "
                "Triton's interpreter: set TRITON_INTERPRET=1 before importing triton (slow, for tests), "
                "or use backend='torch' (or 'auto')"
            )
    if backend != "auto":
        return backend
    if precision is None:
        precision = "bf16" if torch.is_autocast_enabled(device.type) else "fp32"
    return AUTO.get((device.type, precision), "torch")


def attend(q, k, v, grid=None, window=None, dropout_p: float = 0.0, backend: str = "auto"):
    """softmax(q k^T / sqrt(d) + mask) v for q, k, v of shape (B, heads, N, d).

    grid=(H, W) and window=(kh, kw) switch the neighbor mask on (N must be H*W); window=None attends
    to every key. dropout_p drops attention weights (pass 0.0 in eval).
    """
    backend = resolve_backend(backend, q.device)
    if backend == "triton" and window is not None:
        from uniad_mini.kernels import neighbor_attention

        return neighbor_attention(q, k, v, grid=grid, window=pair(window), dropout_p=dropout_p)
    if backend == "sdpa":
        mask = None
        if window is not None:
            kh, kw = pair(window)
            mask = _cached_allowed(grid[0], grid[1], kh, kw, str(q.device))  # (N, N) True = may attend
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)
    return attend_by_hand(q, k, v, grid=grid, window=window, dropout_p=dropout_p)


def attend_by_hand(q, k, v, grid=None, window=None, dropout_p: float = 0.0):
    """The plain PyTorch reference of `attend` (backend "torch"): softmax(q k^T / sqrt(d) + mask) v, written out.

    q, k, v (B, heads, N, d); grid, window and dropout_p as in `attend`. `_cached_bias` gives the neighbor mask as
    the added term (an add, where a masked_fill would be a select: 18% faster in ONNX Runtime's exported graph).
    """
    ### HINT: each query's output is a weighted mean of the values; the weights come from how well the query
    ### HINT: matches each key (scaled so that they do not grow with d); a blocked key must get weight exactly 0.
    ### BEGIN SOLUTION
    scores = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])  # (B, heads, N, N)
    if window is not None:
        kh, kw = pair(window)
        scores = scores + _cached_bias(grid[0], grid[1], kh, kw, str(q.device), scores.dtype)  # (N, N): 0 or -inf
    weights = scores.softmax(dim=-1)
    if dropout_p > 0.0:
        weights = F.dropout(weights, p=dropout_p, training=True)
    return weights @ v  # (B, heads, N, d)
    ### END SOLUTION


class MultiHeadAttention(nn.Module):
    """Q, K, V and output projections around `attend` (Vaswani et al. 2017, written out)."""

    def __init__(self, dim: int, heads: int, dropout: float = 0.0, backend: str = "auto"):
        super().__init__()
        if dim % heads:
            raise OptionError(f"width {dim} is not divisible by {heads} heads")
        self.heads, self.dropout, self.backend = heads, dropout, backend
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)

    def _split(self, x):  # (B, N, D) -> (B, heads, N, D / heads)
        B, N, D = x.shape
        return x.view(B, N, self.heads, D // self.heads).transpose(1, 2)

    def forward(self, query, key, value, grid=None, window=None):
        q = self._split(self.q_proj(query))  # (B, h, Nq, d)
        k = self._split(self.k_proj(key))  # (B, h, Nk, d)
        v = self._split(self.v_proj(value))  # (B, h, Nk, d)
        p = self.dropout if self.training else 0.0
        y = attend(q, k, v, grid=grid, window=window, dropout_p=p, backend=self.backend)
        B, h, N, d = y.shape
        return self.out_proj(y.transpose(1, 2).reshape(B, N, h * d))  # (B, N, D)
