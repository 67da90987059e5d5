"""Anomaly maps, image scores and the per-class evaluation (paper Sec. 3.5 and Sec. 4.1, "Metrics").

    reconstruction f^ and target f (B, C, h, w)
      -> ||f^ - f||_2 over channels per token, bilinear (align_corners) up to S x S     map (B, S, S)
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
    ### HINT: the L2 norm of rec - feats over channels (keep that axis), F.interpolate bilinear, align_corners=True
    ### BEGIN SOLUTION
    m = (rec - feats).pow(2).sum(1, keepdim=True).sqrt()  # (B, 1, h, w)
    return F.interpolate(m, size=tuple(size), mode="bilinear", align_corners=True)[:, 0]
    ### END SOLUTION


def image_score(maps: torch.Tensor, pool: int = 16) -> torch.Tensor:
    """Max of the 16 x 16 average-pooled map (stride 1, no padding): (B, H, W) -> (B,)."""
    ### HINT: F.avg_pool2d needs a channel axis (maps[:, None]); pool x pool window, stride 1; max per image
    ### BEGIN SOLUTION
    return F.avg_pool2d(maps[:, None], pool, stride=1).amax(dim=(1, 2, 3))
    ### END SOLUTION


def module_device(model: nn.Module) -> torch.device:
    """Where a module's parameters (or, for a parameter-free one, its buffers) live; the CPU if it has none."""
    for t in list(model.parameters()) + list(model.buffers()):
        return t.device
    return torch.device("cpu")


@torch.no_grad()
def score(model: nn.Module, feats: torch.Tensor, size, map_size=None, batch_size: int = 32):
    """(image scores (N,), anomaly maps (N, H, W)) of a reconstructor on feature grids (N, C, h, w).

    `model` maps grids to grids and is run in eval mode (no jitter, no dropout). Scores always come from
    maps at `size` (the evaluation resolution); the returned maps are at `map_size` (default `size`).
    """
    was_training = model.training
    model.eval()
    device = module_device(model)
    scores, maps = [], []
    for x in feats.split(batch_size):
        x = x.to(device)
        rec = model(x)  # (b, C, h, w)
        m = anomaly_map(rec, x, size)  # (b, S, S)
        scores.append(image_score(m).cpu())
        if map_size is not None and tuple(map_size) != tuple(size):
            m = anomaly_map(rec, x, map_size)
        maps.append(m.cpu())
    model.train(was_training)
    return torch.cat(scores), torch.cat(maps)


def class_metrics(scores, labels, maps, masks, metrics: str = "all") -> dict[str, float]:
    """The chosen metrics of one class (fractions in [0, 1])."""
    if metrics == "all":
        return M.anomaly_metrics(scores, labels, maps, masks)
    return {"image_auroc": M.auroc(scores, labels), "pixel_auroc": M.auroc(maps, masks)}


def evaluate(scores: torch.Tensor, maps: torch.Tensor, cache: Cache, metrics: str = "all") -> dict:
    """Per-class metrics of image scores (N,) and maps (N, S, S) for the samples of `cache`, plus the mean.

    metrics: "all" (seven) or "auroc" (image and pixel AUROC). The "mean" row is the unweighted mean over
    classes, as in the paper's tables.
    """
    if metrics not in METRIC_SETS:
        raise ValueError(f"unknown metrics {metrics!r}; choose one of {sorted(METRIC_SETS)}")
    out = {}
    for name, idx in cache.class_indices().items():
        idx = torch.tensor(idx)
        out[name] = class_metrics(scores[idx], cache.labels[idx], maps[idx], cache.masks[idx], metrics)
    keys = METRIC_SETS[metrics]
    out["mean"] = {k: sum(out[c][k] for c in out) / len(out) for k in keys}
    return out


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


def write_results(path, results: dict, **meta) -> Path:
    """Write results.json atomically: {"format": RESULTS_FORMAT, "results": {...}, **meta}."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:  # a full disk or Ctrl-C mid-write leaves the earlier results.json, and no half-written .tmp
        tmp.write_text(json.dumps({"format": RESULTS_FORMAT, **meta, "results": results}, indent=1))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
