"""Which keys a query may not see: the neighbor mask of UniAD's neighbor-masked attention (paper Sec. 3.3).

For the query token at (i, j) of an H x W grid, the keys (i', j') with |i - i'| <= kh // 2 and
|j - j'| <= kw // 2 (a kh x kw window, clipped at the border, the token itself included) are blocked.
Both attention paths read the geometry from here: the plain PyTorch one (`attention.py`) and the fused
Triton kernel (`kernels/`), which computes the same mask from token coordinates inside its tiles.
"""
from __future__ import annotations

import torch

from .errors import OptionError


def pair(size) -> tuple[int, int]:
    kh, kw = (size, size) if isinstance(size, int) else tuple(size)
    if kh < 1 or kw < 1:
        raise OptionError(f"neighbor window must be positive, got {size!r}")
    return int(kh), int(kw)


def check_grid_window(h: int, w: int, size) -> None:
    """Raise a clear error when some query would see no key at all (its softmax would be NaN)."""
    kh, kw = pair(size)
    # The query with the fewest visible keys is the grid's centre; it sees nothing iff the window,
    # centred there, covers the whole grid in both directions.
    if h // 2 <= kh // 2 and w // 2 <= kw // 2:
        raise OptionError(
            f"a {kh}x{kw} neighbor window blocks every key of some query on a {h}x{w} grid; "
            f"use a smaller window or a larger grid (a larger input image)"
        )


def neighbor_mask(h: int, w: int, size) -> torch.Tensor:
    """Bool (h*w, h*w) tensor, True where key (column) is *blocked* for query (row).

    Tokens are numbered row-major: token t sits at (t // w, t % w).
    """
    check_grid_window(h, w, size)
    kh, kw = pair(size)
    ### HINT: a key is blocked for a query when the two tokens lie within half a window of each other, in rows and
    ### HINT: in columns at once (the window is centred on the query); compare all pairs at once, without loops.
    ### BEGIN SOLUTION
    rows = torch.arange(h).repeat_interleave(w)  # (N,) i of each token
    cols = torch.arange(w).repeat(h)  # (N,) j of each token
    near_i = (rows[:, None] - rows[None, :]).abs() <= kh // 2  # (N, N)
    near_j = (cols[:, None] - cols[None, :]).abs() <= kw // 2  # (N, N)
    return near_i & near_j
    ### END SOLUTION
