"""The unified-model benchmark on real images: `python -m uniad_mini.bench DATA_ROOT` (paper Sec. 4.1, Table 1).

Trains ONE model on the normal training images of every class under DATA_ROOT (no class labels), then
prints per-class image and pixel AUROC of the final epoch (no model selection on the test set) as a
Markdown table, with the wall time of feature caching and of training on this machine.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import torch

from .cli import results_table
from .data import MVTecAD
from .model import UniAD

DEFAULT_ROOT = os.environ.get("UNIAD_DATA", os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data"))


def run(data_root, epochs=None, recipe="cpu", seed=0, progress=True) -> tuple[dict, dict]:
    """(results, timings in seconds) of one unified model trained on all classes of `data_root`."""
    train, test = MVTecAD(data_root, "train"), MVTecAD(data_root, "test")
    model = UniAD(recipe=recipe, seed=seed, **({"epochs": epochs} if epochs else {}))
    t0 = time.perf_counter()
    train_cache, test_cache = model.cache(train, progress=progress), model.cache(test, progress=progress, desc="test")
    t1 = time.perf_counter()
    model.fit(train_cache, progress=progress)
    t2 = time.perf_counter()
    results = model.evaluate(test_cache)
    timings = {"cache": t1 - t0, "train": t2 - t1, "epochs": model.train_state["epoch"], "images": len(train)}
    return results, timings


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m uniad_mini.bench", description=__doc__.splitlines()[0])
    p.add_argument("data_root", nargs="?", default=DEFAULT_ROOT)
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--recipe", choices=["cpu", "paper"], default="cpu")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    results, t = run(args.data_root, args.epochs, args.recipe, args.seed)
    print(f"\nunified model, recipe {args.recipe!r}, seed {args.seed}, {t['epochs']} epochs on {t['images']} "
          f"training images, torch threads {torch.get_num_threads()}")
    print(f"feature caching {t['cache']:.0f} s, training {t['train']:.0f} s; final-epoch numbers:\n")
    print(results_table(results))
    return results


if __name__ == "__main__":
    from .data import DataError

    try:
        main()
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
