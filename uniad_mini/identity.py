"""How close a reconstructor is to the identity (paper Sec. 3.1, the "identical shortcut", and Fig. 3).

MSE reconstruction of normal features has the identity as a global minimiser. These measures say how far a
trained reconstructor has gone toward it:

    fully connected  y = W x + b    identity_distance: ||W - I|| / ||I||; least_squares_linear: the closed-form
                                    minimiser W* = S (S + ridge I)^-1, the projection onto the data's span
    convolution      y = K * x      identity_distance against the delta kernel (I at the centre tap);
                                    centre_fraction: the share of the kernel's energy at its centre tap
    attention with   y = A x        identity_distance: ||A - I|| / ||I|| of its attention map on inputs x
    a learned query
"""
from __future__ import annotations

import torch
import torch.nn as nn

from .reconstructors import QueryAttention


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
