"""Speed benchmarks: three Markdown tables, measured in one run on this machine's CPU.

    uniad-mini perf                      # about 1-3 minutes on 2 cores (also python -m uniad_mini.commands.perf)

1. Inference: images/s of the whole pipeline (`UniAD.predict`) at 2 threads, and how the time splits
   between the frozen backbone, the reconstruction transformer, and the anomaly map + image score.
2. Training: seconds per epoch with cached backbone features (what `fit` does), in fp32 and in bf16, against
   recomputing the backbone in every step; the step is the training loop's own `training.train_step`. A few steps are
   timed and multiplied by the steps of an epoch (stated).
3. Metrics: the hand-written pixel AUROC and AUPRO (metrics.py) on 10M scores. The package does not
   import scikit-learn (a test oracle only): `python tests/metric_speed_vs_sklearn.py` times the same
   table side by side with scikit-learn.

Inputs are random (timing does not depend on the picture): images uniform in [0, 1], maps uniform noise
plus a bump on the defect squares. No timing here is asserted by a test: wall time depends on the load.
"""
from __future__ import annotations

import math
import os
import time

import numpy as np
import torch

from .. import metrics
from ..evaluation import anomaly_map, image_score, markdown_table
from ..model import UniAD, train_settings
from ..training import make_optimizer, native_bf16, resolve_precision, train_step

# training images: the dev set in ../shared/data (bottle 209 + grid 25 + hazelnut_toy 24), full MVTec AD
EPOCH_SIZES = {"dev set (258 images)": 258, "MVTec AD (3,629 images)": 3629}


def _timed(fn) -> float:
    """Seconds of one call of fn, waiting for a GPU to finish (a no-op on the CPU)."""
    t = time.perf_counter()
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - t


def _best_time(fn, repeats: int) -> float:
    """The fastest of `repeats` calls (after one warm-up): the least disturbed by other jobs."""
    fn()
    return min(_timed(fn) for _ in range(repeats))


# --------------------------------------------------------------------------------------------------


@torch.no_grad()
def inference(model: UniAD, batch: int, repeats: int) -> str:
    """images/s of predict() and the share of backbone / transformer / map + score in it."""
    model.eval()
    S = model.config.image_size
    images = torch.rand(batch, 3, S, S, device=model.feature_mean.device)  # (B, 3, S, S)
    feats = model.features(images)  # (B, C, 14, 14)
    target, rec = model.reconstruct(feats)
    parts = {
        "backbone (EfficientNet taps + stacking)": lambda: model.features(images),
        "reconstruction transformer": lambda: model.reconstruct(feats),
        "anomaly map + image score": lambda: image_score(anomaly_map(rec, target, (S, S))),
    }
    total = _best_time(lambda: model.predict(images), repeats)
    rows = [["whole pipeline (`predict`)", f"{1000 * total / batch:.1f}", f"{batch / total:.1f}", "100%"]]
    for name, fn in parts.items():
        t = _best_time(fn, repeats)
        rows.append([name, f"{1000 * t / batch:.1f}", f"{batch / t:.1f}", f"{100 * t / total:.0f}%"])
    return markdown_table(["stage", "ms / image", "images / s", "share of pipeline"], rows)


def training(model: UniAD, batch: int, steps: int) -> str:
    """Seconds per step -- cached features in fp32 and in bf16, and the backbone recomputed -- extrapolated to
    an epoch of each data set. The recomputed step trains in the model's own precision."""
    S = model.config.image_size
    images = torch.rand(batch, 3, S, S, device=model.feature_mean.device)
    feats = model.standardize(model.features(images))  # (B, C, h, w), what the loop trains on
    rec, s = model.reconstructor(), train_settings(model.config)
    own = resolve_precision(s.precision, feats.device)
    opt = make_optimizer(rec.parameters(), s)
    rec.train()
    variants = {"fp32": lambda: train_step(rec, opt, feats, s.grad_clip, precision="fp32"),
                "bf16": lambda: train_step(rec, opt, feats, s.grad_clip, precision="bf16"),
                "recomputed": lambda: train_step(rec, opt, model.standardize(model.features(images)), s.grad_clip,
                                                 precision=own)}
    times = {k: [] for k in variants}
    for fn in variants.values():  # warm-up
        fn()
    for _ in range(steps):  # interleaved, so that all see the same load from other jobs
        for k, fn in variants.items():
            times[k].append(_timed(fn))
    best = {k: min(v) for k, v in times.items()}
    model.eval()
    rows = []
    for name, n in EPOCH_SIZES.items():
        k = math.ceil(n / batch)
        rows.append([name, str(k), f"{k * best['fp32']:.0f}", f"{k * best['bf16']:.0f}",
                     f"{best['fp32'] / best['bf16']:.2f}x", f"{k * best['recomputed']:.0f}"])
    table = markdown_table(["training set", f"steps / epoch (batch {batch})", "s / epoch, cached, fp32",
                            "s / epoch, cached, bf16", "bf16 speed-up", f"s / epoch, backbone every step ({own})"], rows)
    note = (f"Per step (batch {batch}, best of {steps} interleaved steps after a warm-up): cached fp32 "
            f"{best['fp32']:.2f} s, cached bf16 {best['bf16']:.2f} s, backbone recomputed {best['recomputed']:.2f} s. "
            f"This model trains in {own} (precision={s.precision!r}; bf16 is native here: {native_bf16(feats.device)}). "
            "Epoch times are these x steps per epoch, not timed whole epochs.")
    return table + "\n\n" + note


def metric_speed(pixels: int, repeats: int, oracles: dict | None = None, oracle_name: str = "oracle") -> str:
    """Hand-written pixel AUROC and AUPRO timed on `pixels` float32 scores.

    oracles: {"pixel AUROC": fn(maps, masks), "AUPRO (FPR <= 0.3)": fn(maps, masks)}, other implementations
    timed side by side on the same scores (tests/metric_speed_vs_sklearn.py passes scikit-learn's).
    """
    side = 224
    n = max(2, round(pixels / side**2))
    rng = np.random.default_rng(0)
    masks = np.zeros((n, side, side), dtype=bool)
    for i in range(n // 2, n):  # the second half of the images has one or two defects
        for _ in range(1 + i % 2):
            y, x = rng.integers(0, side - 40, 2)
            h, w = rng.integers(4, 40, 2)
            masks[i, y : y + h, x : x + w] = True
    maps = (rng.random(masks.shape, dtype=np.float32) + 0.7 * masks).astype(np.float32)  # (n, 224, 224)
    ours = {"pixel AUROC": lambda: metrics.auroc(maps, masks), "AUPRO (FPR <= 0.3)": lambda: metrics.aupro(maps, masks)}
    rows = []
    for name, fn in ours.items():
        value, t_ours = fn(), _best_time(fn, repeats)
        row = [name, f"{t_ours:.2f}", f"{value:.6f}"]
        if oracles:
            theirs = lambda: oracles[name](maps, masks)  # noqa: E731
            reference, t_theirs = theirs(), _best_time(theirs, repeats)
            row[2:2] = [f"{t_theirs:.2f}", f"{t_theirs / t_ours:.1f}x"]
            row.append(f"{reference:.6f} (diff {abs(value - reference):.1e})")
        rows.append(row)
    header = ["metric", "hand-written, s", "hand-written value"]
    if oracles:
        header = ["metric", "hand-written, s", f"{oracle_name}, s", "speed-up", "hand-written value", f"{oracle_name} value"]
    note = (f"{masks.size / 1e6:.1f}M float32 scores ({n} maps of {side}x{side}, {int(masks.sum())} anomalous "
            f"pixels in {metrics.connected_components(masks)[1]} regions); best of {repeats} after a warm-up.")
    return markdown_table(header, rows) + "\n\n" + note


# --------------------------------------------------------------------------------------------------


def report(only=("inference", "training", "metrics"), batch: int = 8, repeats: int = 3, pixels: int = 10_000_000,
           device="cpu", **options):
    """Print the chosen tables for a model built from UniAD `options` (default: the default model)."""
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), {os.cpu_count()} CPU(s), "
          f"load average {load:.1f} at the start, device {device}\n")
    start = time.perf_counter()
    torch.manual_seed(0)  # the random inputs
    model = UniAD(**options).to(device)  # default: Lite0 backbone, 2 + 2 layers of width 256
    on = f"batch {batch}, {torch.get_num_threads()} thread(s)"
    if "inference" in only:
        print(f"### Inference, {on}\n")
        print(inference(model, batch, repeats) + "\n", flush=True)
    if "training" in only:
        print(f"### Training, {on}\n")
        print(training(model, batch, repeats) + "\n", flush=True)
    if "metrics" in only:
        print("### Metrics on every pixel\n")
        print(metric_speed(int(pixels), repeats) + "\n", flush=True)
        print("Side by side with scikit-learn (a test oracle, so not imported here): "
              "`python tests/metric_speed_vs_sklearn.py`.\n")
    print(f"total {time.perf_counter() - start:.0f} s")
