"""Anomaly maps, image scores and the per-class evaluation (paper Sec. 3.5 and Sec. 4.1, "Metrics").

    reconstruction f^ and target f (B, C, h, w)
      -> ||f^ - f||_2 over channels per token, bilinear (align_corners) up to S x S     map (B, S, S)
      -> (optional, off by default: Gaussian smoothing of the map, sigma in pixels)      map (B, S, S)
      -> max of the 16 x 16 average-pooled map (stride 1, no padding)                   score (B,)

Every scorer of the project -- UniAD, the nearest-token baseline, the shortcut experiments' reconstructors --
goes through `score` and `evaluate`, so their numbers are comparable by construction. `evaluate` returns
one layout for every caller,

    {class: {metric: fraction}, ..., "mean": {metric: unweighted mean over classes}}

with the seven metrics of later benchmarks (image AUROC / AP / F1-max; pixel AUROC / AP / F1-max, AUPRO) or,
with `metrics="auroc"`, only image and pixel AUROC (the paper's two; AUPRO is the slow one).
`markdown_table` is the project's one table formatter; `write_results` its one results.json layout.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import metrics as M
from .features import Cache

ALL_METRICS = ("image_auroc", "image_ap", "image_f1_max", "pixel_auroc", "pixel_ap", "pixel_f1_max", "aupro")
METRIC_SETS = {"all": ALL_METRICS, "auroc": ("image_auroc", "pixel_auroc")}
HEADERS = {"image_auroc": "image AUROC", "image_ap": "image AP", "image_f1_max": "image F1-max",
           "pixel_auroc": "pixel AUROC", "pixel_ap": "pixel AP", "pixel_f1_max": "pixel F1-max", "aupro": "AUPRO"}
RESULTS_FORMAT = 1  # the version of the results.json layout written by `write_results`


def anomaly_map(rec: torch.Tensor, feats: torch.Tensor, size) -> torch.Tensor:
    """||f^ - f||_2 over channels per token, bilinear (align_corners) up to `size`: (B, C, h, w) -> (B, H, W)."""
    ### HINT: a token's error is the length of (reconstruction - feature) across the channels; the map then grows
    ### HINT: from the token grid to the image size smoothly, the corner tokens staying at the image's corners.
    ### BEGIN SOLUTION
    m = (rec - feats).pow(2).sum(1, keepdim=True).sqrt()  # (B, 1, h, w)
    return F.interpolate(m, size=tuple(size), mode="bilinear", align_corners=True)[:, 0]
    ### END SOLUTION


def image_score(maps: torch.Tensor, pool: int = 16) -> torch.Tensor:
    """Max of the 16 x 16 average-pooled map (stride 1, no padding): (B, H, W) -> (B,)."""
    ### HINT: the largest mean of the map over any pool x pool window inside the image (slid one pixel at a time):
    ### HINT: one small hot pixel is not an anomaly, a hot region is; one number per image.
    ### BEGIN SOLUTION
    return F.avg_pool2d(maps[:, None], pool, stride=1).amax(dim=(1, 2, 3))
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


PIXEL_METRICS = ("pixel_auroc", "pixel_ap", "pixel_f1_max", "aupro")  # what a defect image with no mask leaves


def class_metrics(scores, labels, maps, masks, metrics: str = "all") -> dict[str, float]:
    """The chosen metrics of one class (fractions in [0, 1]); scores, labels (N,); maps, masks (M <= N, S, S).

    The maps may be fewer than the scores (`pixel_labelled` leaves some out); with no anomalous pixel left the
    pixel metrics are NaN (undefined), not a failure.
    """
    if metrics == "all":
        if masks.any():
            return M.anomaly_metrics(scores, labels, maps, masks)
        image = M.anomaly_metrics(scores, labels, scores[:, None, None], labels[:, None, None])  # image part only
        return {k: float("nan") if k in PIXEL_METRICS else v for k, v in image.items()}
    pixel = M.auroc(maps, masks) if masks.any() else float("nan")
    return {"image_auroc": M.auroc(scores, labels), "pixel_auroc": pixel}


def pixel_labelled(cache: Cache) -> torch.Tensor:
    """(N,) bool: False for a defect image whose mask marks no pixel. Its pixels are unlabelled, not normal
    (a defect that covers the whole surface, a data set published without its masks): it counts for the
    image metrics and is left out of the pixel metrics and AUPRO."""
    return ~((cache.labels == 1) & (cache.masks.flatten(1).amax(1) == 0))


def left_out(cache: Cache) -> dict[str, list[str]]:
    """{metric: paths of the images it leaves out} for results.json; {} when every defect image has a mask."""
    paths = [cache.paths[i] if cache.paths else str(i) for i in (~pixel_labelled(cache)).nonzero()[:, 0].tolist()]
    return {k: paths for k in PIXEL_METRICS} if paths else {}


def left_out_line(cache: Cache) -> str | None:
    """The one line that says how many defect images the pixel metrics leave out (None: none)."""
    n = int((~pixel_labelled(cache)).sum())
    if not n:
        return None
    return (f"{n} defect image{'s' * (n > 1)} with an empty mask: counted in the image metrics, left out of the "
            f"pixel metrics and AUPRO (its pixels are unlabelled; listed under left_out in results.json)")


def evaluate(scores: torch.Tensor, maps: torch.Tensor, cache: Cache, metrics: str = "all") -> dict:
    """Per-class metrics of image scores (N,) and maps (N, S, S) for the samples of `cache`, plus the mean.

    metrics: "all" (seven) or "auroc" (image and pixel AUROC). The "mean" row is the unweighted mean over
    classes, as in the paper's tables. Defect images with an empty mask count for the image metrics only
    (`pixel_labelled`; `left_out` lists them).
    """
    if metrics not in METRIC_SETS:
        raise ValueError(f"unknown metrics {metrics!r}; choose one of {sorted(METRIC_SETS)}")
    out, labelled = {}, pixel_labelled(cache)
    for name, idx in cache.class_indices().items():
        idx = torch.tensor(idx)
        pix = idx[labelled[idx]]  # the images whose pixels are labelled
        out[name] = class_metrics(scores[idx], cache.labels[idx], maps[pix], cache.masks[pix], metrics)
    keys = METRIC_SETS[metrics]
    out["mean"] = {k: _mean([out[c][k] for c in out]) for k in keys}
    return out


def _mean(values: list[float]) -> float:
    """The unweighted mean of the classes that have the metric (NaN: a class with no labelled defect pixel)."""
    defined = [v for v in values if v == v]
    return sum(defined) / len(defined) if defined else float("nan")


def markdown_table(header: list[str], rows: list[list]) -> str:
    """The project's one table formatter: a header and rows of cells (str() each) -> a Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def results_table(results: dict, keys=None) -> str:
    """{class: {metric: fraction}, "mean": ...} -> a Markdown table in percent, one column per metric."""
    keys = keys or [k for k in ALL_METRICS if k in results["mean"]]
    rows = [[f"**{name}**" if name == "mean" else name] + [f"{100 * r[k]:.1f}" for k in keys]
            for name, r in results.items()]
    return markdown_table(["class"] + [HEADERS[k] for k in keys], rows)


def _no_nan(x):
    """NaN (a metric a class cannot have) as JSON's null, so results.json stays standard JSON."""
    if isinstance(x, dict):
        return {k: _no_nan(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_no_nan(v) for v in x]
    return None if isinstance(x, float) and x != x else x


def write_results(path, results: dict, **meta) -> Path:
    """Write results.json atomically: {"format": RESULTS_FORMAT, "results": {...}, **meta}; NaN as null.

    Callers add `left_out=left_out(cache)` when some images are left out of some metrics."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:  # a full disk or Ctrl-C mid-write leaves the earlier results.json, and no half-written .tmp
        tmp.write_text(json.dumps(_no_nan({"format": RESULTS_FORMAT, **meta, "results": results}), indent=1))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
