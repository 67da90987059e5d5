"""The unified-model benchmark on real images: `uniad-mini bench DATA_ROOT` (paper Sec. 4.1, Table 1).

Trains ONE model on the normal training images of every class under DATA_ROOT (no class labels), then
prints per-class metrics of the final epoch (no model selection on the test set) as a Markdown table,
with the wall time of feature caching and of training on this machine.

`--knn` also prints a diagnostic baseline on the very same features: each test token is "reconstructed" by
its nearest training token (`reconstructors.NearestToken`, L2 in the model's standardised units), then
scored exactly like UniAD (`evaluation.score`: per-token L2 map, bilinear up, max of a 16 x 16 average
pool). It asks whether the features can tell an image apart at all, so a miss can be put on the features or
on the reconstruction.
"""
from __future__ import annotations

import time

from ..data import MVTecAD
from ..evaluation import evaluate, score
from ..features import Cache
from ..model import UniAD
from ..shortcut.reconstructors import NearestToken


def knn_results(model: UniAD, train: Cache, test: Cache) -> dict:
    """Per-class image and pixel AUROC of the nearest-training-token baseline (`evaluate`'s layout)."""
    S = model.config.image_size
    baseline = NearestToken(model.standardize(train.features))
    return evaluate(*score(baseline, model.standardize(test.features), (S, S)), test, metrics="auroc")


def run(data_root, progress=True, knn=False, device="cpu", **options):
    """(results, timings in seconds, knn results or None) of one unified model on all classes of `data_root`.

    options: `UniAD` options (recipe, seed, epochs, input_norm, ...); knn: also score the baseline.
    """
    train, test = MVTecAD(data_root, "train"), MVTecAD(data_root, "test")
    model = UniAD(**options).to(device)
    t0 = time.perf_counter()
    train_cache, test_cache = model.cache(train, progress=progress), model.cache(test, progress=progress, desc="test")
    t1 = time.perf_counter()
    model.fit(train_cache, progress=progress)
    t2 = time.perf_counter()
    results = model.evaluate(test_cache)
    baseline = knn_results(model, train_cache, test_cache) if knn else None
    timings = {"cache": t1 - t0, "train": t2 - t1, "epochs": model.train_state["epoch"], "images": len(train)}
    return results, timings, baseline
