"""`bench-quality`'s baselines beyond the nearest-token bank, and what each costs against the training set.

No part of the paper's method: the bars UniAD has to clear, on the very same cached, standardised features.

    knn  every test token replaced by its nearest training token (`baselines.NearestToken`, in the core;
         scored in `quality.knn_results`). No training; its memory and its scoring time grow with the
         training set: the bank holds every training token.
    cnn  the 3 x 3 CNN reconstructor of the paper's Fig. 5a (`baselines.cnn3x3`, in the core:
         C -> 256 -> 256 -> C, 3 x 3 convolutions, ReLU), trained by the project's one loop
         (`training.train`) with the model's own training settings (`model.train_settings`: optimiser,
         schedule, epochs, precision) from the first seed, with no feature jitter; scored like UniAD.

`costs` measures, for the bank, the CNN and UniAD's transformer, the memory a scorer holds (the bank's
bytes; the parameters' bytes) and the scoring time per test image (`scoring.score`, wall clock, after
one warm-up batch) against the number of training images: the bank is rebuilt from the first n training
images (a seeded permutation), the two models are the same size whatever n is. The frozen backbone, shared
by all three, is left out of both columns.
"""
from __future__ import annotations

import time
from dataclasses import replace

import torch

from .. import training
from ..baselines import NearestToken, cnn3x3
from ..evaluation import evaluate, markdown_table
from ..scoring import score
from ..features import Cache
from ..config import train_settings
from ..model import UniAD

TIMED_IMAGES = 32  # test images scored per timing (after one warm-up batch)


def cnn_model(extractor: UniAD, train: Cache, epochs: int, seed: int, progress: bool = False):
    """The 3 x 3 CNN reconstructor trained on `extractor`'s standardised training features (seeded)."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        cnn = cnn3x3(extractor.channels)
    cnn = cnn.to(extractor.feature_mean.device)
    settings = train_settings(replace(extractor.config, seed=seed), epochs)
    training.train(cnn, extractor.standardize(train.features), settings, progress=progress)
    return cnn.eval()


def cnn_results(extractor: UniAD, train: Cache, test: Cache, epochs: int, seed: int, progress: bool = False):
    """(per-class metrics in `evaluate`'s layout, the trained CNN)."""
    S = extractor.config.image_size
    cnn = cnn_model(extractor, train, epochs, seed, progress)
    return evaluate(*score(cnn, extractor.standardize(test.features), (S, S), **extractor.scoring()), test), cnn


def nbytes(module: torch.nn.Module) -> int:
    """Bytes of a scorer's parameters and buffers (a bank is a buffer)."""
    return sum(t.numel() * t.element_size() for t in [*module.parameters(), *module.buffers()])


def ms_per_image(module: torch.nn.Module, feats: torch.Tensor, size: int) -> float:
    """Wall-clock milliseconds per image of `scoring.score` over `feats` (one warm-up batch first)."""
    score(module, feats[:2], (size, size))
    start = time.perf_counter()
    score(module, feats, (size, size))
    return 1000 * (time.perf_counter() - start) / len(feats)


def training_sizes(n: int) -> list[int]:
    """n / 8, n / 4, n / 2, n (distinct, at least 1)."""
    return sorted({max(1, n // k) for k in (8, 4, 2, 1)})


def costs(extractor: UniAD, train: Cache, test: Cache, cnn=None, seed: int = 0, config: dict | None = None) -> list[dict]:
    """One row per training-set size n: {"train_images", scorer: {"bytes", "ms_per_image"}} for the bank,
    the CNN (when given) and UniAD's transformer (an untrained one of `config`: the same size and speed)."""
    S = extractor.config.image_size
    feats = extractor.standardize(test.features[:TIMED_IMAGES])
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))
    uniad = UniAD(**{**(config or {}), "seed": seed}).to(extractor.feature_mean.device).reconstructor()
    models = {"uniad": uniad, **({"cnn": cnn} if cnn is not None else {})}
    rows = []
    for n in training_sizes(len(train)):
        bank = NearestToken(extractor.standardize(train.features[order[:n]]))
        row = {"train_images": n, "knn": {"bytes": nbytes(bank), "ms_per_image": ms_per_image(bank, feats, S)}}
        for name, m in models.items():
            row[name] = {"bytes": nbytes(m), "ms_per_image": ms_per_image(m, feats, S)}
        rows.append(row)
    return rows


COST_TITLES = {"knn": "bank", "cnn": "CNN 3 x 3", "uniad": "UniAD"}


def cost_table(rows: list[dict]) -> str:
    """Markdown: training images x (MB, ms per image) of each scorer."""
    names = [k for k in COST_TITLES if k in rows[0]]
    header = ["training images"] + [f"{COST_TITLES[k]} {what}" for k in names for what in ("MB", "ms / image")]
    body = [[r["train_images"]] + [v for k in names for v in (f"{r[k]['bytes'] / 2**20:.1f}",
                                                             f"{r[k]['ms_per_image']:.1f}")] for r in rows]
    return markdown_table(header, body)



def trained_baselines(names, train: Cache, test: Cache, epochs: int, seed: int, config: dict, device="cpu",
                      progress: bool = False) -> tuple[dict, list[dict]]:
    """({"cnn": per-class metrics} when asked, the cost rows) for `bench-quality` with any baseline asked."""
    if not names:
        return {}, []
    extractor = UniAD(**{**config, "seed": seed}).to(device)
    extractor.set_feature_stats(train.features)  # the standardisation UniAD learns from these features
    results, cnn = {}, None
    if "cnn" in names:
        results["cnn"], cnn = cnn_results(extractor, train, test, epochs, seed, progress)
    return results, costs(extractor, train, test, cnn, seed, config)
