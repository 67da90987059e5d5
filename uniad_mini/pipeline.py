"""UniAD over data sets: open, check, cache, fit, evaluate, calibrate (none of the paper; the plumbing around it).

`model.py` holds the paper's module; its `fit`, `evaluate`, `calibrate` and `check_data` methods are these
functions. The data path of `fit`, in one direction:

    DATA_ROOT (layouts.open_data) -> every image read once: checked and run through the frozen backbone
    (features.cache_features; distributed.cache_features_sharded under torchrun) -> one DataError with every
    problem of every set, or the feature Cache -> per-channel statistics -> training.train on the tokens

Under torchrun each rank caches its share of a data set and all ranks gather the whole (docs/distributed.md).
"""
from __future__ import annotations

import os
import sys

import torch

from . import calibration as _cal
from . import checks, distributed
from .config import train_settings
from .evaluation import evaluate as evaluate_cache
from .evaluation import left_out_line
from .features import Cache
from .errors import DataError
from .layouts import open_data
from .training import train


def open_split(model, root, split: str = "test", classes=None):
    """One split of DATA_ROOT (an MVTec-layout or VisA folder, a .toml or .csv: layouts.open_data), read at
    the model's image size and geometry."""
    return open_data(root, split, classes, model.config.image_size, model.config.resize)


def check_data(*data, progress: bool = True) -> list[str]:
    """Decode every image and mask of the data sets now; one DataError listing every problem, else the notes
    (printed unless progress=False)."""
    notes = checks.check_data(*data)
    for note in notes if progress else []:
        print(f"note: {note}", file=sys.stderr)
    return notes


def features_of(model, data, progress: bool = True, desc: str = "features", check=()) -> Cache:
    """The feature Cache of a data set (or DATA_ROOT's `desc` split, or a Cache as it is), every image read once;
    the sets in `check` are decoded too, and one DataError lists every problem of them all."""
    if isinstance(data, Cache):
        problems = []
    else:
        try:
            data, problems = distributed.cache_features_sharded(model.extractor, data, progress=progress, desc=desc), []
        except DataError as e:
            problems = e.problems
    try:
        check_data(*check, progress=progress)
    except DataError as e:
        problems += e.problems
    if problems:
        raise DataError.of(list(dict.fromkeys(problems)))
    return data


def fit(model, train_data, epochs=None, progress=True, checkpoint=None, callback=None, check=()):
    """`UniAD.fit`: cache (and so check) the training set, set the feature statistics, train."""
    if isinstance(train_data, (str, os.PathLike)):
        train_data = open_split(model, train_data, "train")
    cache = features_of(model, train_data, progress, "features", check)
    if model.train_state["epoch"] == 0:
        model.set_feature_stats(cache.features)  # the statistics of the images as they are, balanced or not
    feats = cache.balanced().features if model.config.balance else cache.features
    return fit_features(model, feats, epochs, progress, checkpoint, callback)


def fit_features(model, feats, epochs=None, progress=True, checkpoint=None, callback=None):
    """`training.train` on cached features (N, C, h, w), standardised, with the model's recipe."""

    def after_epoch(_, epoch, loss, state):
        if checkpoint is not None:
            model.save(checkpoint)
        if callback is not None:
            callback(model, epoch, loss)

    train(model.reconstructor(), model.standardize(feats), train_settings(model.config, epochs),
          model.train_state, progress, after_epoch)
    return model.eval()


def evaluate(model, test_data, progress: bool = True, metrics: str = "all") -> dict:
    """`UniAD.evaluate`: per-class metrics and their unweighted mean (evaluation.evaluate) of a data set,
    DATA_ROOT's test split or a Cache."""
    if isinstance(test_data, (str, os.PathLike)):
        test_data = open_split(model, test_data, "test")
    cache = features_of(model, test_data, progress, "test")
    scores, maps = model.score_features(cache.features)
    if progress and left_out_line(cache):
        print(left_out_line(cache), file=sys.stderr)
    return evaluate_cache(scores, maps, cache, metrics)


def calibrate(model, normal, fpr: float, pixel_fpr: float, source: str = "", progress: bool = False) -> dict:
    """`UniAD.calibrate`: per-class thresholds on normal images the model did not train on (calibration.py)."""
    cache = features_of(model, normal, progress, "calibration")
    if bool(cache.labels.any()):
        raise DataError("calibration takes normal images only; defective ones would raise the thresholds")
    with torch.no_grad():
        scores, maps = model.score_features(cache.features)
    model.calibration = _cal.calibrate(scores, maps, cache.classes, fpr, pixel_fpr, source)
    return model.calibration
