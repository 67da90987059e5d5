"""Reconstructors: every model that rebuilds feature grids (B, C, h, w) -> (B, C, h, w) (paper Sec. 3.1, Fig. 5a).

The one training loop (`training.train`) and the one scorer (`evaluation.score`) take any of them:

    OnTokens(m)        wraps a token model (B, N, C) -> (B, N, C), e.g. UniAD's `ReconstructionTransformer`
    NearestToken(bank) no training: every token is replaced by its nearest normal training token (L2); a
                       baseline that asks whether the features alone can tell an anomaly apart
"""
from __future__ import annotations

import torch
import torch.nn as nn


class OnTokens(nn.Module):
    """Wrap a token model (B, N, C) -> (B, N, C) so that it takes and returns grids (B, C, h, w)."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, x):  # (B, C, h, w)
        y = self.module(x.flatten(2).transpose(1, 2))  # (B, N, C), tokens row-major
        return y.transpose(1, 2).reshape(x.shape)


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
