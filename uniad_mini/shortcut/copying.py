"""The identical shortcut made to happen and measured, and one remedy ablated against it (paper Sec. 3.1 and
Sec. 3.4, Eq. 4): the data, models and loop of the course's assignments 07 and 08.

The teaching notebooks 02-05 ask whether UniAD's reconstructors copy; on the project's features at CPU scale the
transformers 96 wide for C = 192 could not (`identity.rank_bound`), and 200 wide, where the bound rules nothing
out, they did not in 12 epochs (notebook 04). Here the copy is made to happen on purpose,
on synthetic features where everything is known, with a model wide enough to copy, and then a remedy
is switched on:

    synthetic_features   normal feature grids (N, C, h, w): a smooth pattern in a few directions plus a noise floor
                         in every direction (so that the identity is the one map that reconstructs them exactly),
                         and test grids with a defect (a disc of tokens pushed along one direction), with the
                         clean grid each defect was added to
    token_mlp            a per-token ReLU MLP C -> hidden -> hidden -> C (`reconstructors.MLP`): hidden >= C can
                         copy (`reconstructors.relu_identity`), hidden = r < C cannot come closer to a copy than
                         sqrt(1 - r / C) (`identity.rank_bound`)
    Jittered             feature jittering (Eq. 4) around any grid reconstructor: noise on its input in training
                         mode only (its forward is a student part of assignment 08)
    fit                  a plain Adam loop on the MSE to the clean grid (not the project's `training.train`, so
                         that these notebooks need no other assignment's part)
    measure              the copy measures of `identity.jacobian_identity` (assignment 07's part) with the errors
                         on normal and anomalous tokens, the share of a defect that passes through the model,
                         and the share of defect tokens caught at a 1% false-alarm rate
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .identity import jacobian_identity
from .reconstructors import MLP

POSITIONS = ((7, 7), (3, 10))  # where the copy is measured on a 14 x 14 grid


@dataclass
class CopyData:
    """Synthetic feature grids: normal training grids, and test grids of which the second half carry a defect."""

    train: torch.Tensor  # (N, C, h, w) normal grids
    test: torch.Tensor  # (M, C, h, w) test grids: M // 2 normal, then M - M // 2 with a defect
    clean: torch.Tensor  # (M, C, h, w) the test grids before their defects were added (= test for normal ones)
    anomalous: torch.Tensor  # (M, h, w) bool: the tokens a defect moved
    normal: torch.Tensor  # (M, h, w) bool: every token of the normal test grids
    pattern: int  # how many directions the smooth pattern spans
    noise: float  # the noise floor's standard deviation per channel
    strength: float  # ||the move of a defect token||

    @property
    def channels(self) -> int:
        return self.train.shape[1]


def _grids(n: int, A: torch.Tensor, noise: float, grid, g: torch.Generator) -> torch.Tensor:
    """n grids A z + noise * eps: z a smooth unit-variance field (pattern, h, w), eps white (C, h, w)."""
    d, (h, w) = A.shape[1], grid
    k = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0])
    k = (k[:, None] * k[None]) / 256  # (5, 5) binomial smoothing; its squares sum to (70 / 256)^2
    z = F.conv2d(torch.randn(n, d, h + 4, w + 4, generator=g), k.expand(d, 1, 5, 5), groups=d) / (70 / 256)
    return torch.einsum("cd,ndhw->nchw", A, z) + noise * torch.randn(n, A.shape[0], h, w, generator=g)


def synthetic_features(channels: int = 32, pattern: int = 6, noise: float = 0.5, strength: float = 4.0,
                       n_train: int = 64, n_test: int = 32, grid=(14, 14), seed: int = 0) -> CopyData:
    """Normal grids x = A z + noise * eps, A (C, pattern) orthogonal columns of norm sqrt(C / pattern) (the
    pattern carries a variance of about 1 per channel), z a smooth Gaussian field, eps white noise in all C
    directions: the normal tokens span every direction, most of their energy in `pattern` of them.

    The second half of the test grids get a defect: the tokens of a disc (radius 1.2 to 2.5 tokens) moved by
    `strength` along one random unit direction (mostly off the pattern: it has C - pattern of C dimensions)."""
    g = torch.Generator().manual_seed(seed)
    A = torch.linalg.qr(torch.randn(channels, pattern, generator=g))[0] * math.sqrt(channels / pattern)  # (C, d)
    train = _grids(n_train, A, noise, grid, g)  # (N, C, h, w)
    clean = _grids(n_test, A, noise, grid, g)  # (M, C, h, w)
    test, anomalous = clean.clone(), torch.zeros(n_test, *grid, dtype=torch.bool)
    r, c = torch.arange(grid[0])[:, None].float(), torch.arange(grid[1])[None].float()  # (h, 1), (1, w)
    for i in range(n_test // 2, n_test):
        cr, cc = (2 + torch.rand(2, generator=g) * (torch.tensor(grid) - 5)).tolist()  # the centre, off the edge
        radius = 1.2 + 1.3 * torch.rand((), generator=g).item()
        disc = (r - cr) ** 2 + (c - cc) ** 2 <= radius ** 2  # (h, w)
        v = torch.randn(channels, generator=g)
        test[i][:, disc] += strength * (v / v.norm())[:, None]
        anomalous[i] = disc
    normal = torch.zeros_like(anomalous)
    normal[: n_test // 2] = True
    return CopyData(train, test, clean, anomalous, normal, pattern, noise, strength)


def token_mlp(channels: int, hidden: int) -> MLP:
    """C -> hidden -> hidden -> C, ReLU, the same on every token (its Jacobian has no blocks J_ij, j != i)."""
    return MLP(channels, hidden=hidden, layers=3)


class Jittered(nn.Module):
    """Feature jittering (paper Sec. 3.4, Eq. 4) around any reconstructor `inner` of grids (B, C, h, w): in
    training mode `inner` reads x + eps, eps ~ N(0, (scale ||x_i|| / C)^2) drawn anew for every token i and call,
    ||x_i|| the norm of the token's C channels (axis 1); in eval mode, or with scale 0, x itself. The loss still
    compares the output with the clean x, so the model learns to remove noise, and copying stops paying.
    No parameters of its own: Jittered(m, s) starts from m's weights."""

    def __init__(self, inner: nn.Module, scale: float):
        super().__init__()
        self.inner, self.scale = inner, float(scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, h, w) -> inner's output (B, C, h, w)
        ### HINT: Eq. 4 on a grid, in training mode only: Gaussian noise whose size follows each token's own norm
        ### HINT: over the C channels (axis 1 here), times the scale, over C; switched off, x goes in as it is.
        ### BEGIN SOLUTION
        if self.training and self.scale > 0:
            x = x + torch.randn_like(x) * (self.scale * x.norm(dim=1, keepdim=True) / x.shape[1])  # (B, C, h, w)
        ### END SOLUTION
        return self.inner(x)


def fit(model: nn.Module, feats: torch.Tensor, epochs: int, lr: float = 3e-3, batch_size: int = 8, seed: int = 0,
        callback=None) -> list[float]:
    """Train `model` to give back the grids feats (N, C, h, w): Adam, constant lr, shuffled batches, the MSE to
    the clean grid. `seed` fixes the batch order and any noise the model draws. callback(model, epoch, loss)
    runs before the first epoch (epoch 0, loss None) and after each (the epoch's mean training loss). Returns the
    mean training loss of each epoch."""
    torch.manual_seed(seed)
    order = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    if callback:
        callback(model, 0, None)
    for epoch in range(1, epochs + 1):
        model.train()
        total = 0.0
        for idx in torch.randperm(len(feats), generator=order).split(batch_size):
            batch = feats[idx]  # (b, C, h, w)
            mse = F.mse_loss(model(batch), batch)
            opt.zero_grad()
            mse.backward()
            opt.step()
            total += mse.item() * len(idx)
        losses.append(total / len(feats))
        if callback:
            callback(model, epoch, losses[-1])
    model.eval()
    return losses


@torch.no_grad()
def errors(model: nn.Module, data: CopyData) -> dict:
    """In eval mode, with e = ||f(x) - x||^2 per token:

        normal_error, anomalous_error   mean e over the normal test tokens / the defect tokens; ratio: their ratio
        defect_passed                   mean over defect tokens of <f(x) - f(x_clean), d> / ||d||^2, d = x - x_clean:
                                        the share of the defect the output carries (1: copied, 0: removed)
        caught                          the share of defect tokens whose e exceeds the 99th percentile of the
                                        normal tokens' e (detected at a 1% false-alarm rate)"""
    was_training = model.training
    model.eval()
    y, y_clean = model(data.test), model(data.clean)  # (M, C, h, w)
    e = (y - data.test).pow(2).sum(1)  # (M, h, w)
    d = data.test - data.clean  # (M, C, h, w), zero outside the defects
    passed = ((y - y_clean) * d).sum(1)[data.anomalous] / d.pow(2).sum(1)[data.anomalous]  # (defect tokens,)
    a, n = e[data.anomalous], e[data.normal]
    model.train(was_training)
    return {"normal_error": n.mean().item(), "anomalous_error": a.mean().item(),
            "ratio": a.mean().item() / max(n.mean().item(), 1e-12), "defect_passed": passed.mean().item(),
            "caught": (a > n.quantile(0.99)).float().mean().item()}


def measure(model: nn.Module, data: CopyData, positions=POSITIONS) -> dict:
    """`errors` and the copy measures (identity_distance, self_norm, self_share of `identity.jacobian_identity`)
    at `positions` of the first normal test grid."""
    return {**jacobian_identity(model, data.test[:1], positions), **errors(model, data)}


def train_and_measure(model: nn.Module, data: CopyData, epochs: int, at=(), lr: float = 3e-3, seed: int = 0,
                      positions=POSITIONS) -> list[dict]:
    """`fit` the model on data.train for `epochs`, and `measure` it at each epoch in `at` (0: before training)
    and after the last: [{"epoch", "loss" (the epoch's training loss; None at 0), and the measures}, ...]."""
    rows = []

    def record(m, epoch, loss):
        if epoch in at or epoch == epochs:
            rows.append({"epoch": epoch, "loss": loss, **measure(m, data, positions)})

    fit(model, data.train, epochs, lr=lr, seed=seed, callback=record)
    return rows
