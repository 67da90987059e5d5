"""How close a reconstructor is to the identity (paper Sec. 3.1, the "identical shortcut", and Fig. 3).

MSE reconstruction of normal features has the identity as a global minimiser. These measures say how far a
trained reconstructor has gone toward it:

    fully connected  y = W x + b    identity_distance: ||W - I|| / ||I||; least_squares_linear: the closed-form
                                    minimiser W* = S (S + ridge I)^-1, the projection onto the data's span
    convolution      y = K * x      identity_distance against the delta kernel (I at the centre tap);
                                    centre_fraction: the share of the kernel's energy at its centre tap
    attention with   y = A x        identity_distance: ||A - I|| / ||I|| of its attention map on inputs x
    a learned query
    any model        token_jacobian: the blocks J_ij = dy_i / dx_j of one output token; jacobian_identity:
                     ||J_ii - I|| / ||I|| (the one axis every reconstructor is compared on) and the share of
                     y_i's sensitivity that comes from x_i itself (1 for a copy, 0 when x_i cannot reach y_i),
                     averaged over positions of `copy_measures` (those measures of one token's Jacobian; a
                     student part of the course's assignment 07);
                     rank_bound: the least ||J_ii - I|| / ||I|| of a model whose tokens pass through r < C dimensions

The linear theory of notebook 02, in closed form. Full-batch gradient descent with step lr on the project's
loss L = mean over tokens and channels of (W x + b - x)^2, from W = 0, b = 0, on centred tokens with
covariance Sigma = U diag(lam) U^T, the residual W_k x - x of a token after k steps has a closed form in the
eigen-directions u_j: `gd_factors` holds it, with its derivation (notebook 02 derives it too; it is a student part
of the course's analysis assignment). `spectrum`, `direction_energy` and `gd_trajectory` build on it;
`tests/shortcut/test_shortcut.py` checks them against the layer trained by the one loop with optimizer "sgd".
"""
from __future__ import annotations

import torch
import torch.nn as nn

from .reconstructors import TRANSFORMER_SIZES, MaskedQueryLayer, QueryAttention, transformer

# ---------------------------------------------------------------------------------------------------
# One linear layer
# ---------------------------------------------------------------------------------------------------


def identity_distance(model: nn.Module, x: torch.Tensor | None = None) -> float:
    """||M - I||_F / ||I||_F for the one linear map of `model`:

    MLP(layers=1): M = W (C, C).  CNN(layers=1): M = K (C, C, k, k) against the delta kernel (I at the centre
    tap, zero elsewhere).  QueryAttention: M = its attention map (N, N) on the inputs x, averaged over x.
    """
    with torch.no_grad():
        if isinstance(model, QueryAttention):
            if x is None:
                raise ValueError("QueryAttention's distance to the identity is measured on inputs: pass x")
            A = model.attention(x)  # (B, N, N)
            eye = torch.eye(A.shape[-1])
            return ((A - eye).flatten(1).norm(dim=1) / eye.norm()).mean().item()
        linear = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
        if len(linear) != 1:
            raise ValueError(f"identity_distance needs a single linear layer, {type(model).__name__} has {len(linear)}")
        W = linear[0].weight  # (C, C) or (C, C, k, k)
        eye = delta_kernel(W.shape[0], W.shape[-1]) if W.dim() == 4 else torch.eye(W.shape[0])
        return ((W - eye).norm() / eye.norm()).item()


def delta_kernel(channels: int, kernel: int) -> torch.Tensor:
    """The identity as a k x k convolution: I at the centre tap, zero elsewhere; (C, C, k, k)."""
    K = torch.zeros(channels, channels, kernel, kernel)
    K[:, :, kernel // 2, kernel // 2] = torch.eye(channels)
    return K


def centre_fraction(conv_weight: torch.Tensor) -> float:
    """Share of a k x k kernel's energy at its centre tap, ||K[..., c, c]||^2 / ||K||^2 (1 for the delta)."""
    k = conv_weight.shape[-1] // 2
    return (conv_weight[..., k, k].norm() ** 2 / conv_weight.norm() ** 2).item()


def least_squares_linear(x: torch.Tensor, ridge: float = 1e-6) -> torch.Tensor:
    """The closed-form minimiser of sum ||W x_i - x_i||^2 (+ ridge ||W||^2) over x (M, C) tokens (centred data, b = 0):

        W* = S (S + ridge I)^-1,  S = X^T X / M    ->  the projection onto the data's span as ridge -> 0.
    """
    x64 = x.double()  # float64: the small eigenvalues decide how close to I the result is
    S = x64.T @ x64 / x.shape[0]  # (C, C)
    W = torch.linalg.solve(S + ridge * torch.eye(S.shape[0], dtype=S.dtype), S).T  # S (S + rI)^-1, S symmetric
    return W.to(x.dtype)


# ---------------------------------------------------------------------------------------------------
# The linear theory: full-batch gradient descent from W = 0, in closed form
# ---------------------------------------------------------------------------------------------------


def tokens_of(feats: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Feature grids (N, C, h, w) -> tokens (M, C), all of them or those where mask (N, h, w) is True."""
    t = feats.permute(0, 2, 3, 1)  # (N, h, w, C)
    return t.reshape(-1, t.shape[-1]) if mask is None else t[mask]


def spectrum(tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenvalues lam (C,), largest first, and eigenvectors U (C, C) (columns) of Sigma = X^T X / M, float64."""
    x = tokens.double()
    lam, U = torch.linalg.eigh(x.T @ x / len(x))  # ascending
    return lam.flip(0), U.flip(1)


def direction_energy(U: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Mean energy (u_j . x)^2 of tokens (M, C) along each eigenvector u_j: (C,), summing to the mean ||x||^2."""
    return ((tokens.double() @ U) ** 2).mean(0)


def gd_factors(lam: torch.Tensor, lr: float, steps) -> torch.Tensor:
    """f[k, j] for every k in steps and direction j (lam (C,), largest first): (K, C) float64, the share of each
    eigen-direction's energy that the residual W_k x - x of a token keeps after k steps of full-batch gradient
    descent from W = 0:  ||W_k x - x||^2 = sum_j f[k, j] (u_j . x)^2  and  ||W_k - I||_F^2 = sum_j f[k, j]."""
    ### HINT: write the gradient of L in W, then the error E_k = W_k - I after one step in terms of E_(k-1); in the
    ### HINT: eigenbasis of Sigma every direction evolves on its own, by a factor per step that you then square.
    ### BEGIN SOLUTION
    # dL/dW = (2 / C) (W - I) Sigma  ->  E_k = E_(k-1) (I - 2 lr Sigma / C) = -(I - 2 lr Sigma / C)^k  (E_0 = -I)
    # W_k x - x = E_k x, so along u_j the residual keeps the factor (1 - 2 lr lam_j / C)^k, its energy the square
    k = torch.as_tensor(list(steps), dtype=torch.float64)[:, None]  # (K, 1)
    return (1 - 2 * lr * lam.double() / len(lam))[None, :].pow(2 * k)  # (K, C)
    ### END SOLUTION


def gd_trajectory(lam: torch.Tensor, lr: float, steps, energies: dict | None = None) -> list[dict]:
    """The closed-form trajectory of the linear layer under full-batch gradient descent from W = 0:
    [{"epoch": k, "identity_distance": ||W_k - I||_F / ||I||_F, NAME + "_error": mean ||W_k x - x||^2}, ...]
    for each (NAME, energy (C,)) in `energies` (from `direction_energy` of those tokens)."""
    f = gd_factors(lam, lr, steps)  # (K, C)
    out = []
    for k, row in zip(steps, f):
        r = {"epoch": int(k), "identity_distance": row.mean().sqrt().item()}
        r.update({f"{name}_error": (row * e).sum().item() for name, e in (energies or {}).items()})
        out.append(r)
    return out


def gd_token_errors(U: torch.Tensor, lam: torch.Tensor, lr: float, steps, tokens: torch.Tensor) -> torch.Tensor:
    """||W_k x - x||^2 of every token x in tokens (M, C) after each k in steps of full-batch gradient descent
    from W = 0, in closed form: (K, M)."""
    return gd_factors(lam, lr, steps) @ ((tokens.double() @ U) ** 2).T  # (K, C) @ (C, M)


def rare_share(energy: torch.Tensor, rare: int) -> float:
    """Share of an energy profile (C,), directions largest eigenvalue first, in the `rare` last directions."""
    return (energy[-rare:].sum() / energy.sum()).item()


# ---------------------------------------------------------------------------------------------------
# Any reconstructor: the Jacobian of one output token
# ---------------------------------------------------------------------------------------------------

POSITIONS = ((7, 7), (3, 10), (10, 3), (1, 1))  # where the Jacobian is measured on a 14 x 14 grid


def token_jacobian(model: nn.Module, x: torch.Tensor, position: tuple[int, int], chunk: int = 32,
                   rows: torch.Tensor | None = None) -> torch.Tensor:
    """J[a, j, b] = d y_(i, a) / d x_(j, b) for the output token i at `position` of one input x (1, C, h, w),
    in eval mode: (C, N, C), input tokens j row-major; with `rows` (output channels a), only those rows.

    C copies of x go through the model as one batch; copy a contributes only its output channel a at i, so
    one backward pass gives row a of every block from copy a (the copies do not interact: no batch statistics).
    """
    was_training = model.training
    model.eval()
    r, c = position
    out = []
    for a in (torch.arange(x.shape[1]) if rows is None else rows).split(chunk):
        z = torch.zeros(len(a), *x.shape[1:], requires_grad=True)  # (k, C, h, w)
        y = model(x.expand(len(a), -1, -1, -1) + z)  # (k, C, h, w)
        (g,) = torch.autograd.grad(y[torch.arange(len(a)), a, r, c].sum(), z)  # (k, C, h, w)
        out.append(g.flatten(2).transpose(1, 2))  # (k, N, C)
    model.train(was_training)
    return torch.cat(out)  # (C or len(rows), N, C)


def rank_bound(width: int, channels: int) -> float:
    """The least ||J_ii - I||_F / ||I||_F of a model whose output token y_i is a linear map of a `width`-dimensional
    vector (a transformer's output_proj D -> C, an MLP's last layer): sqrt(1 - r / C) for r = width < C, else 0.

    J_ii = dy_i / dx_i then has rank at most r. The singular values of I are C ones, and the closest rank-r matrix
    to I in the Frobenius norm keeps r of them (Eckart-Young), so ||J_ii - I||_F^2 >= C - r, with equality for
    the projection onto any r directions. The bound says nothing about how far above it a trained model ends."""
    return max(0.0, 1 - width / channels) ** 0.5


def copy_measures(J: torch.Tensor, i: int, rows: torch.Tensor | None = None) -> dict:
    """How close the output token i is to a copy of its input token, from its Jacobian J (C, N, C)
    (`token_jacobian`: J[a, j, b] = d y_(i, a) / d x_(j, b); with `rows`, J (len(rows), N, C) holds only the output
    channels `rows` and I means those rows of the identity, (len(rows), C)):

        identity_distance  ||J_ii - I||_F / ||I||_F             0 for a copy, 1 when x_i does not reach y_i
        self_norm          ||J_ii||_F / ||I||_F                 1 for a copy, 0 when x_i does not reach y_i
        self_share         ||J_ii||_F^2 / sum_j ||J_ij||_F^2    1 for a copy, 0 when y_i is made of others only

    A block of rank r on C channels is at least sqrt(1 - r / C) from I (`rank_bound`). Floats; the copy measure,
    a student part of the course's assignment 07 (notebooks/assignments/07_make_it_copy.ipynb)."""
    ### HINT: the block J_ii is one slice of J; compare it with the identity (only the rows J holds) by the Frobenius
    ### HINT: norm, and weigh its squared norm against the squared norms of all N blocks, each a sum over both channels.
    ### BEGIN SOLUTION
    eye = torch.eye(J.shape[-1]) if rows is None else torch.eye(J.shape[-1])[rows]  # (rows, C)
    blocks = J.pow(2).sum(dim=(0, 2))  # (N,) ||J_ij||_F^2 over the rows
    return {"identity_distance": ((J[:, i] - eye).norm() / eye.norm()).item(),
            "self_norm": (J[:, i].norm() / eye.norm()).item(),
            "self_share": (blocks[i] / blocks.sum().clamp_min(1e-30)).item()}
    ### END SOLUTION


def jacobian_identity(model: nn.Module, x: torch.Tensor, positions=POSITIONS, rows: int | None = None) -> dict:
    """How close `model` is to copying: `copy_measures` of the Jacobian at each of `positions` of every input in
    x (B, C, h, w), averaged (identity_distance, self_norm, self_share).

    rows=None: every output channel (exact). rows=k: k evenly spaced output channels only, about C / k times
    faster, the three measures then taken over those rows of J (exact where they are 0 or 1)."""
    C = x.shape[1]
    pick = None if rows is None else torch.linspace(0, C - 1, min(rows, C)).round().long()
    found = []
    for one in x.split(1):
        for p in positions:
            J = token_jacobian(model, one, p, rows=pick)  # (rows, N, C)
            found.append(copy_measures(J, p[0] * x.shape[-1] + p[1], pick))
    return {k: sum(f[k] for f in found) / len(found) for k in ("identity_distance", "self_norm", "self_share")}


def mask_leak(x: torch.Tensor, layers=(1, 2, 4), size: str = "tiny", seed: int = 0, positions=POSITIONS,
              rows: int | None = None) -> list[dict]:
    """What the neighbor mask guarantees, measured: `jacobian_identity` on inputs x (B, C, h, w) of

        one masked attention layer with a learned query (`MaskedQueryLayer`): y_i cannot depend on x_i;
        UniAD's transformer (layer-wise queries, no jitter) with L = each of `layers` encoder + decoder layers,
        with the 7 x 7 mask and without it,

    all at their random initialisation (seeded; `rows` as in `jacobian_identity`): the structure, before
    training decides the weights. Through the residual path an encoder token j far from i carries v(x_i), and
    the decoder at i may read j, so two masked attentions in a row already let x_i back into y_i.
    Returns one dict per model: {"model", "layers", "mask", and the measures of `jacobian_identity`}."""
    C, grid = x.shape[1], tuple(x.shape[-2:])
    torch.manual_seed(seed)
    out = [{"model": "one masked attention layer", "layers": 1, "mask": True,
            **jacobian_identity(MaskedQueryLayer(C, grid), x, positions, rows)}]
    for L in layers:
        for window in (7, None):
            torch.manual_seed(seed)
            m = transformer(C, grid, **{**TRANSFORMER_SIZES[size], "layers": L}, neighbor_size=window,
                            layerwise_query=True)
            out.append({"model": "UniAD transformer", "layers": L, "mask": window is not None,
                        **jacobian_identity(m, x, positions, rows)})
    return out
