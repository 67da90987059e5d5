"""uniad_mini.kernels: fused GPU kernels (Triton) for UniAD's neighbor-masked attention.

    from uniad_mini.kernels import neighbor_attention
    y = neighbor_attention(q, k, v, grid=(14, 14), window=(7, 7), dropout_p=0.1)  # (B, heads, N, d)

Triton decides when a kernel is *defined* -- when this package is first imported -- whether it is
compiled for a GPU or interpreted on CPU, so set TRITON_INTERPRET=1 before importing it to run on CPU.
`uniad_mini` itself never imports this package; `uniad_mini.attention.attend` does so only when the
Triton backend is used. The algorithm is explained in `fused_attention.py` (backward kernels in
`backward.py`, tile helpers in `tiles.py`, dropout bits in `dropout.py`) and docs/kernel.md.
"""

try:
    import triton  # noqa: F401
except ImportError as err:  # pragma: no cover - depends on the platform
    raise ImportError(
        "uniad_mini.kernels needs Triton (pip install triton; Linux only). Use backend='torch' without it."
    ) from err

from .fused_attention import neighbor_attention

__all__ = ["neighbor_attention"]
