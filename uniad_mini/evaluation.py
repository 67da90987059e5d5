"""The per-class evaluation (paper Sec. 4.1, "Metrics"): scores and maps (scoring.py) against the labels.

Every scorer of the project -- UniAD, the baselines, the shortcut experiments' reconstructors -- goes through
`scoring.score` and `evaluate`, so their numbers are comparable by construction. `evaluate` returns
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

from . import metrics as M
from .features import Cache

ALL_METRICS = ("image_auroc", "image_ap", "image_f1_max", "pixel_auroc", "pixel_ap", "pixel_f1_max", "aupro")
METRIC_SETS = {"all": ALL_METRICS, "auroc": ("image_auroc", "pixel_auroc")}
HEADERS = {"image_auroc": "image AUROC", "image_ap": "image AP", "image_f1_max": "image F1-max",
           "pixel_auroc": "pixel AUROC", "pixel_ap": "pixel AP", "pixel_f1_max": "pixel F1-max", "aupro": "AUPRO"}
RESULTS_FORMAT = 1  # the version of the results.json layout written by `write_results`


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
