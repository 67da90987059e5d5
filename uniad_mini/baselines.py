"""The baselines the paper's model is compared against (no part of UniAD itself): the nearest-token bank and the
small CNN reconstructor. Both map feature grids (B, C, h, w) -> (B, C, h, w), so the one training loop
(`training.train`) and the one scorer (`scoring.score`) take them as they take UniAD's transformer.

    NearestToken(bank)   no training: every token is replaced by its nearest normal training token (L2); it asks
                         whether the features alone can tell an anomaly apart
    CNN(C, kernel, ...)  a stack of k x k convolutions; `layers=1` is one conv C -> C (the shortcut experiments
                         of the notebooks build their 1 x 1 / 3 x 3 CNNs from it too)
    cnn3x3(C)            the CNN baseline of the benchmarks: C -> max(256, C) -> max(256, C) -> C, 3 x 3, ReLU
                         (the 3 x 3 CNN of the paper's Fig. 5a; the notebooks' experiments build the same one)
"""
from __future__ import annotations

import torch
import torch.nn as nn


class NearestToken(nn.Module):
    """Reconstruct each token by its nearest token (L2) in a bank of normal training tokens.

    bank: training feature grids (M, C, h, w) in the units the scorer uses (standardised for UniAD).
    One image at a time: its (h*w, M*h*w) distance matrix is the only large tensor.
    """

    def __init__(self, bank: torch.Tensor):
        super().__init__()
        self.register_buffer("bank", bank.flatten(2).transpose(1, 2).flatten(0, 1))  # (M*h*w, C)

    @torch.no_grad()
    def forward(self, x):  # (B, C, h, w)
        out = []
        for one in x.flatten(2).transpose(1, 2):  # (h*w, C)
            out.append(self.bank[torch.cdist(one[None], self.bank[None])[0].argmin(-1)])  # (h*w, C)
        return torch.stack(out).transpose(1, 2).reshape(x.shape)


class CNN(nn.Module):
    """A stack of k x k convolutions (padding k // 2 keeps the grid); `layers=1` is one conv C -> C."""

    def __init__(self, channels: int, kernel: int = 3, hidden: int = 256, layers: int = 3):
        super().__init__()
        widths = [channels] + [hidden] * (layers - 1) + [channels]
        mods = []
        for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
            mods += [nn.Conv2d(a, b, kernel, padding=kernel // 2)] + ([nn.ReLU()] if i < layers - 1 else [])
        self.net = nn.Sequential(*mods)

    def forward(self, x):  # (B, C, h, w)
        return self.net(x)


def cnn3x3(channels: int) -> CNN:
    """The 3 x 3 CNN baseline, at least C wide (no bottleneck): C -> max(256, C) -> max(256, C) -> C."""
    return CNN(channels, kernel=3, hidden=max(256, channels))
