"""The unified-model benchmark on real images: `python -m uniad_mini.bench DATA_ROOT` (paper Sec. 4.1, Table 1).

Trains ONE model on the normal training images of every class under DATA_ROOT (no class labels), then
prints per-class image and pixel AUROC of the final epoch (no model selection on the test set) as a
Markdown table, with the wall time of feature caching and of training on this machine.

`--knn` also prints a diagnostic baseline on the very same features: each test token is "reconstructed" by
its nearest training token (L2 in the model's standardised units), then scored exactly like UniAD
(per-token L2 map, bilinear up, max of a 16 x 16 average pool). It asks whether the features can tell an
image apart at all, so a miss can be put on the features or on the reconstruction.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import torch

from .cli import results_table
from .data import MVTecAD
from .evaluation import anomaly_map, evaluate, image_score
from .features import Cache
from .model import RECIPES, UniAD, make_config
from .protocol import parse_overrides

DEFAULT_ROOT = os.environ.get("UNIAD_DATA", os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data"))


@torch.no_grad()
def knn_scores(model: UniAD, train_feats: torch.Tensor, test_feats: torch.Tensor):
    """(image scores (B,), maps (B, S, S)): every test token "reconstructed" by its nearest training token."""
    S = model.config.image_size
    bank = model.tokens(train_feats).flatten(0, 1)  # (N_train * h*w, C): every normal token, standardised
    to_grid = lambda t: t.transpose(1, 2).reshape(t.shape[0], -1, *model.grid)  # noqa: E731
    scores, maps = [], []
    for f in test_feats.split(1):  # one image at a time: its (h*w, N_train * h*w) distances fit in memory
        target = model.tokens(f)  # (b, h*w, C)
        nearest = bank[torch.cdist(target, bank[None]).argmin(-1)]  # (b, h*w, C)
        m = anomaly_map(to_grid(nearest), to_grid(target), (S, S))  # (b, S, S): the distance, upsampled
        scores.append(image_score(m))
        maps.append(m)
    return torch.cat(scores), torch.cat(maps)


def knn_results(model: UniAD, train: Cache, test: Cache) -> dict:
    """Per-class image and pixel AUROC of the nearest-training-token baseline (same format as `evaluate`)."""
    return evaluate(*knn_scores(model, train.features, test.features), test, metrics="auroc")


def run(data_root, progress=True, knn=False, **options):
    """(results, timings in seconds, knn results or None) of one unified model on all classes of `data_root`.

    options: `UniAD` options (recipe, seed, epochs, input_norm, ...); knn: also score the baseline.
    """
    train, test = MVTecAD(data_root, "train"), MVTecAD(data_root, "test")
    model = UniAD(**options)
    t0 = time.perf_counter()
    train_cache, test_cache = model.cache(train, progress=progress), model.cache(test, progress=progress, desc="test")
    t1 = time.perf_counter()
    model.fit(train_cache, progress=progress)
    t2 = time.perf_counter()
    results = model.evaluate(test_cache)
    baseline = knn_results(model, train_cache, test_cache) if knn else None
    timings = {"cache": t1 - t0, "train": t2 - t1, "epochs": model.train_state["epoch"], "images": len(train)}
    return results, timings, baseline


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m uniad_mini.bench", description=__doc__.splitlines()[0])
    p.add_argument("data_root", nargs="?", default=DEFAULT_ROOT)
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--recipe", choices=sorted(RECIPES), default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="any other UniAD option")
    p.add_argument("--knn", action="store_true", help="also print the nearest-training-token baseline")
    args = p.parse_args(argv)
    extra = parse_overrides(args.set)
    options = {"recipe": args.recipe, "seed": args.seed, **({"epochs": args.epochs} if args.epochs else {}), **extra}
    try:
        cfg = make_config(**options)  # fail before the slow part, with the known options listed
    except TypeError as e:
        raise ValueError(str(e)) from None
    results, t, baseline = run(args.data_root, knn=args.knn, **options)
    shown = "".join(f", {k}={v}" for k, v in extra.items() if k not in ("recipe", "seed"))
    print(f"\nunified model, recipe {cfg.recipe!r}, seed {cfg.seed}{shown}, {t['epochs']} epochs on {t['images']} "
          f"training images, torch threads {torch.get_num_threads()}")
    print(f"feature caching {t['cache']:.0f} s, training {t['train']:.0f} s; final-epoch numbers:\n")
    print(results_table(results))
    if baseline is not None:
        print("\nnearest-training-token baseline on the same standardised features (no training):\n")
        print(results_table(baseline))
    return results


if __name__ == "__main__":
    try:
        main()
    except ValueError as e:  # a missing data folder (DataError), an unknown or bad --set option
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
