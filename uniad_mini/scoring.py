"""Anomaly maps and image scores (paper Sec. 3.5): how a reconstruction becomes a map and a number.

    reconstruction f^ and target f (B, C, h, w)
      -> ||f^ - f||_2 over channels per token, bilinear (align_corners) up to S x S     map (B, S, S)
      -> (optional, off by default: Gaussian smoothing of the map, sigma in pixels)      map (B, S, S)
      -> max of the 16 x 16 average-pooled map (stride 1, no padding)                   score (B,)

`UniAD.forward` runs `scores_and_maps` on one batch; `score` runs any grid -> grid reconstructor (UniAD's,
the baselines', the shortcut experiments') over cached features, so their numbers compare by construction.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def anomaly_map(rec: torch.Tensor, feats: torch.Tensor, size) -> torch.Tensor:
    """||f^ - f||_2 over channels per token, bilinear (align_corners) up to `size`: (B, C, h, w) -> (B, H, W)."""
    ### HINT: a token's error is the length of (reconstruction - feature) across the channels; the map then grows
    ### HINT: from the token grid to the image size smoothly, the corner tokens staying at the image's corners.
    ### BEGIN SOLUTION
    m = (rec - feats).pow(2).sum(1, keepdim=True).sqrt()  # (B, 1, h, w)
    return F.interpolate(m, size=tuple(size), mode="bilinear", align_corners=True)[:, 0]
    ### END SOLUTION


def image_score(maps: torch.Tensor, pool: int = 16) -> torch.Tensor:
    """Max of the 16 x 16 average-pooled map (stride 1, no padding): (B, H, W) -> (B,). The window's mean is
    taken as the mean over 16 columns of the means over 16 rows (the same number, 2 x 16 additions per pixel
    instead of 16 x 16)."""
    ### HINT: the largest mean of the map over any pool x pool window inside the image (slid one pixel at a time):
    ### HINT: one small hot pixel is not an anomaly, a hot region is; one number per image.
    ### BEGIN SOLUTION
    rows = F.avg_pool2d(maps[:, None], (pool, 1), stride=1)  # mean of each pool-row window: (B, 1, H - pool + 1, W)
    return F.avg_pool2d(rows, (1, pool), stride=1).amax(dim=(1, 2, 3))  # then of each pool-column window
    ### END SOLUTION


def smooth(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian smoothing of anomaly maps (B, H, W), sigma in pixels (0: the maps as they are); the kernel is
    cut at 4 sigma, the border reflected. Not in the paper; a common post-processing of later methods."""
    if sigma <= 0:
        return maps
    r = min(int(4 * sigma + 0.5), min(maps.shape[-2:]) - 1)  # radius (4 sigma); reflect padding needs r < size
    x = torch.arange(-r, r + 1, dtype=maps.dtype, device=maps.device)
    g = torch.exp(-0.5 * (x / sigma) ** 2)
    g = g / g.sum()  # (2r + 1,)
    m = F.pad(maps[:, None], (r, r, r, r), mode="reflect")  # (B, 1, H + 2r, W + 2r)
    m = F.conv2d(m, g.view(1, 1, 1, -1))  # along the rows: (B, 1, H + 2r, W)
    return F.conv2d(m, g.view(1, 1, -1, 1))[:, 0]  # along the columns: (B, H, W)


def module_device(model: nn.Module) -> torch.device:
    """Where a module's parameters (or, for a parameter-free one, its buffers) live; the CPU if it has none."""
    for t in list(model.parameters()) + list(model.buffers()):
        return t.device
    return torch.device("cpu")


def scores_and_maps(rec: torch.Tensor, feats: torch.Tensor, size, map_size=None, pool: int = 16, sigma: float = 0.0):
    """(image scores (B,), anomaly maps (B, H, W)) of reconstructions f^ of features f, both (B, C, h, w).

    Scores always come from maps at `size` (the evaluation resolution); the returned maps are at `map_size`
    (default `size`), smoothed with sigma scaled to it."""
    maps = smooth(anomaly_map(rec, feats, size), sigma)  # (B, S, S)
    scores = image_score(maps, pool)  # (B,)
    if map_size is not None and tuple(map_size) != tuple(size):
        maps = smooth(anomaly_map(rec, feats, map_size), sigma * map_size[0] / size[0])
    return scores, maps


@torch.no_grad()
def score(model: nn.Module, feats: torch.Tensor, size, map_size=None, batch_size: int = 32, pool: int = 16,
          sigma: float = 0.0):
    """(image scores (N,), anomaly maps (N, H, W)) of a reconstructor on feature grids (N, C, h, w).

    `model` maps grids to grids and is run in eval mode (no jitter, no dropout), `batch_size` grids at a time;
    size and map_size as in `scores_and_maps`. pool: the image score's window (`image_score`); sigma: Gaussian smoothing of the maps (`smooth`) in pixels
    at `size`, scaled with the map for `map_size` (UniAD passes its Config's score_pool and map_sigma).
    """
    was_training = model.training
    model.eval()
    device = module_device(model)
    scores, maps = [], []
    for x in feats.split(batch_size):
        x = x.to(device)
        s, m = scores_and_maps(model(x), x, size, map_size, pool, sigma)
        scores.append(s.cpu())
        maps.append(m.cpu())
    model.train(was_training)
    return torch.cat(scores), torch.cat(maps)
