"""The quality benchmark: the protocol of the paper's Tables 1 and 2, with the seven metrics of later benchmarks.

    uniad-mini bench-quality [DATA_ROOT] [--seeds 5] [--settings unified separate] [--baselines knn]

Two settings (paper Sec. 4.1):
  * unified  -- ONE model trained on the normal images of every class at once, no class labels;
  * separate -- one model per class, trained on that class alone (the classic one-class setting).
Each is trained from seeds S..S+N-1 (`--seed S`, default 0; `--seeds N`), and every model is evaluated
once, after its last epoch: final-epoch numbers, no model selection on the test set (the original code
picks the checkpoint with the best test pixel AUROC, which inflates its numbers). Per class we report

    image AUROC, image AP, image F1-max | pixel AUROC, pixel AP, pixel F1-max, AUPRO   (metrics.py)

as mean +- sample standard deviation over the seeds, in percent; the "mean" row averages the classes
within each seed first (unweighted, as the paper does), then takes mean +- std of that over seeds.

The backbone is frozen and nothing is augmented, so its features are computed ONCE per data set and
reused by every seed and both settings. Which images train which model and which test images each model
scores is `unified.setting_groups` (the separate setting: each class's own training and test images), and
`unified.score_groups` trains and scores them; both settings are then measured by `evaluation.evaluate` on
the whole test cache, each test image scored by the one model of its group.

Baselines on the very same cached features, no training: `knn`, each test token "reconstructed" by its
nearest training token (`baselines.NearestToken` of the core, L2 in the model's standardised units) and
scored exactly like UniAD (`scoring.score`). It asks whether the features alone tell an image apart, so a
miss can be put on the features or on the reconstruction. `cnn`: the paper's 3 x 3 CNN reconstructor, trained
by the one loop with the model's settings from the first seed (`bench/baselines.py`). With any baseline,
"costs" lists each scorer's memory and scoring time against the number of training images (bank, CNN, UniAD).

results.json (`evaluation.write_results`, the project's one layout) holds the per-seed runs under
"results", one list per setting, each run in `evaluation.evaluate`'s layout:

    {"format": 1, "command": "benchmark", "seeds": [...], "classes", "epochs", "config", "counts", "seconds", ...,
     "baselines": {"knn": {class: {metric: fraction}, ...}, "cnn": ...}, "costs": [{"train_images", "knn": ...}],
     "results": {"unified": [{class: {metric: fraction}, ..., "mean": {...}} per seed], "separate": [...]}}
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from ..baselines import NearestToken
from ..checks import open_checked
from ..errors import DataError
from ..evaluation import ALL_METRICS, HEADERS, evaluate, left_out, markdown_table, write_results
from ..scoring import score
from ..features import Cache
from ..config import make_config
from ..model import UniAD
from ..pictures import write_pictures
from ..errors import OptionError
from ..unified import SETTINGS, score_groups, setting_groups, side_by_side
from .baselines import cost_table, trained_baselines

BASELINES = ("knn", "cnn")
BASELINE_TITLES = {"knn": "nearest training token", "cnn": "3 x 3 CNN reconstructor"}
BASELINE_NOTES = {"knn": "no training, the same features", "cnn": "trained by the one loop, first seed, no jitter"}
PROTOCOL_NOTE = "final-epoch numbers, no model selection on the test set"


# --------------------------------------------------------------------------------------------------
# One model, one seed


def train_model(train: Cache, seed: int, epochs: int | None, config: dict, progress: bool = True,
                device="cpu") -> UniAD:
    """A fresh UniAD trained on cached features. Config.seed fixes the initial weights, the batch order
    and the jitter noise."""
    model = UniAD(**{**config, "seed": seed}).to(device)
    return model.fit(train, epochs=epochs, progress=progress)


def seed_run(setting: str, train: Cache, test: Cache, seed: int, epochs: int, config: dict, progress: bool = True,
             device="cpu", pictures=None, test_data=None) -> dict:
    """`evaluate`'s per-class metrics of one setting trained from `seed`; pictures: a folder for the PNGs."""

    def draw(name, model, idx):  # the PNGs of the test images this model scored
        write_pictures(model, test.subset(idx), pictures, data=torch.utils.data.Subset(test_data, idx.tolist()))

    scores, maps = score_groups(setting_groups(setting, train, test), train, test,  # (N,), (N, S, S)
                                lambda cache: train_model(cache, seed, epochs, config, progress, device),
                                draw if pictures is not None else None)
    return evaluate(scores, maps, test)


def knn_results(model: UniAD, train: Cache, test: Cache) -> dict:
    """Per-class metrics of the nearest-training-token baseline (`evaluate`'s layout); `model` gives the
    feature standardisation (its statistics set from `train`) and the image size."""
    S = model.config.image_size
    baseline = NearestToken(model.standardize(train.features))
    return evaluate(*score(baseline, model.standardize(test.features), (S, S), **model.scoring()), test)


# --------------------------------------------------------------------------------------------------
# The runner


def seed_list(seeds, start: int = 0) -> list[int]:
    """A count N -> [start, ..., start + N - 1]; a list of seeds -> itself."""
    if isinstance(seeds, int):
        if seeds < 1:
            raise OptionError(f"seeds must be at least 1, got {seeds}")
        return list(range(start, start + seeds))
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise OptionError("seeds is empty")
    return seeds


def _checked(settings, baselines, seeds, epochs, config) -> tuple[tuple, list[int], int]:
    """(settings, seeds, epochs) with every option checked before any work."""
    settings = tuple(settings)
    bad = [s for s in settings if s not in SETTINGS]
    if bad or not settings:
        raise OptionError(f"unknown setting(s) {bad}; choose from {SETTINGS}")
    if set(baselines) - set(BASELINES):
        raise OptionError(f"unknown baseline(s) {sorted(set(baselines) - set(BASELINES))}; choose from {BASELINES}")
    cfg = make_config(**config)
    epochs = cfg.epochs if epochs is None else epochs
    if epochs < 1:
        raise OptionError(f"epochs must be at least 1, got {epochs}")
    return settings, seed_list(seeds), epochs


def _cached(data_root, classes, config: dict, device, progress: bool, baselines=()):
    """(test data set, train Cache, test Cache, {baseline: results}): DATA_ROOT checked whole, its features
    computed once for every seed and setting, and the baselines scored on them."""
    cfg = make_config(**config)
    sets, _ = open_checked(data_root, ("train", "test"), classes, cfg.image_size, cfg.resize)  # every problem, now
    train_data, test_data = sets["train"], sets["test"]
    for c in train_data.classes:
        labels = [s.label for s in test_data.samples if s.cls == c]
        if not labels or all(labels) or not any(labels):
            raise DataError(f"class {c!r} needs both normal (test/good) and defective test images to be evaluated")
    extractor = UniAD(**config).to(device)
    train = extractor.cache(train_data, progress=progress, desc="train features")
    test = extractor.cache(test_data, progress=progress, desc="test features")
    extractor.set_feature_stats(train.features)  # the standardisation UniAD learns from these features
    scored = {"knn": knn_results(extractor, train, test)} if "knn" in baselines else {}
    return test_data, train, test, scored


def run_protocol(data_root, settings=SETTINGS, seeds=5, epochs: int | None = None, out=None, classes=None,
                 pictures: bool = True, progress: bool = True, device="cpu", baselines=(), **config) -> dict:
    """Train and evaluate the unified and/or separate setting over several seeds on DATA_ROOT (any layout).

    seeds: a count N (seeds 0..N-1) or a list of seeds; epochs: None for the recipe's default;
    config: UniAD options (recipe="paper", hidden_dim=..., ...; not seed); out: a folder for results.json,
    results.md and (pictures=True) the pictures of each setting's first seed; baselines: names of BASELINES.
    Returns what results.json holds, less "format" (see the module docstring); `markdown_tables` prints it.
    """
    settings, seeds, epochs = _checked(settings, baselines, seeds, epochs, config)
    say = (lambda msg: print(msg, file=sys.stderr, flush=True)) if progress else (lambda msg: None)
    start = time.perf_counter()
    test_data, train, test, report_baselines = _cached(data_root, classes, config, device, progress, baselines)
    trained, costs = trained_baselines(baselines, train, test, epochs, seeds[0], config, device, progress)
    report_baselines.update(trained)  # the CNN; and every scorer's memory and time against the training set
    train_by_class, test_by_class = train.by_class(), test.by_class()
    out = Path(out) if out is not None else None
    report = {
        "command": "bench-quality", "data_root": str(data_root), "note": PROTOCOL_NOTE, "seeds": seeds,
        "epochs": epochs, "classes": list(train_by_class), "settings": list(settings),
        "config": {**config, "epochs": epochs},
        "counts": {c: {"train": len(train_by_class[c]), "test": len(test_by_class[c]),
                       "test_anomalous": int(test_by_class[c].labels.sum())} for c in train_by_class},
        "seconds": {"features": time.perf_counter() - start},
        **({"left_out": left_out(test)} if left_out(test) else {}),  # defect images with an empty mask
        "baselines": report_baselines,
        **({"costs": costs} if costs else {}),
        "results": {s: [] for s in settings},
    }
    for setting in settings:
        t0 = time.perf_counter()
        for seed in seeds:
            say(f"[{setting} seed {seed}] training {epochs} epoch(s)")
            first = out is not None and pictures and seed == seeds[0]  # pictures of the first seed only
            pics = out / "pictures" / setting / f"seed{seed}" if first else None
            run = seed_run(setting, train, test, seed, epochs, config, progress, device, pics, test_data)
            report["results"][setting].append(run)
            say(f"[{setting} seed {seed}] mean image AUROC {100 * run['mean']['image_auroc']:.1f}, "
                f"pixel AUROC {100 * run['mean']['pixel_auroc']:.1f}, AUPRO {100 * run['mean']['aupro']:.1f}")
            report["seconds"][setting] = time.perf_counter() - t0
            report["seconds"]["total"] = time.perf_counter() - start
            if out is not None:  # after every seed, so a long run can be read while it goes on
                meta = {k: v for k, v in report.items() if k != "results"}
                write_results(out / "results.json", report["results"], **meta)
                (out / "results.md").write_text(markdown_tables(report) + "\n")
    return report


# --------------------------------------------------------------------------------------------------
# Tables


def _cell(values: list[float]) -> str:
    """Fractions over seeds -> 'mean ± std' in percent (sample std; the mean alone for one seed)."""
    v = 100 * np.asarray(values, dtype=np.float64)
    if v.size == 1:
        return f"{v[0]:.1f}"
    return f"{v.mean():.1f} ± {v.std(ddof=1):.1f}"


def _label(name: str) -> str:
    return "**mean**" if name == "mean" else name


def _over_seeds(runs: list[dict]) -> dict[str, dict[str, list[float]]]:
    """{class or "mean": {metric: [value per seed]}} from per-seed runs in `evaluate`'s layout."""
    return {name: {k: [run[name][k] for run in runs] for k in ALL_METRICS} for name in runs[0]}


def markdown_tables(report: dict) -> str:
    """Markdown: one table per setting (classes x seven metrics, mean ± std over seeds, percent), then
    unified and separate side by side for image and pixel AUROC (the layout of the paper's Tables 1, 2)."""
    done = {s: r for s, r in report["results"].items() if r}
    n_seeds = {s: len(r) for s, r in done.items()}
    spread = "mean ± sample std over seeds" if max(n_seeds.values(), default=1) > 1 else "one seed, no spread"
    seconds = report.get("seconds", {})
    lines = [
        f"Numbers are {PROTOCOL_NOTE}: every model is evaluated once, after epoch {report['epochs']}.",
        f"Percent, {spread}; the mean row averages the classes within each seed, then over seeds.",
        f"Seeds {', '.join(map(str, report['seeds']))}; epochs {report['epochs']}; options "
        f"{json.dumps({k: v for k, v in report['config'].items() if k != 'epochs'})} "
        "(the rest: Config defaults).",
        "Images (train / test / test anomalous): "
        + "; ".join(f"{c} {n['train']} / {n['test']} / {n['test_anomalous']}" for c, n in report["counts"].items())
        + ".",
    ]
    if "total" in seconds:
        parts = ", ".join(f"{k} {v / 60:.1f} min" for k, v in seconds.items() if k != "total")
        lines.append(f"Wall time {seconds['total'] / 60:.1f} min ({parts}).")
    titles = {"unified": "Unified: one model for all classes", "separate": "Separate: one model per class"}
    table = {s: _over_seeds(r) for s, r in done.items()}
    for setting, rows in table.items():
        lines += ["", f"**{titles[setting]}** ({n_seeds[setting]} seed(s))", "",
                  markdown_table(["class"] + [HEADERS[k] for k in ALL_METRICS],
                                 [[_label(name)] + [_cell(row[k]) for k in ALL_METRICS] for name, row in rows.items()])]
    for name, run in report.get("baselines", {}).items():
        lines += ["", f"**Baseline: {BASELINE_TITLES[name]}** ({BASELINE_NOTES[name]})", "",
                  markdown_table(["class"] + [HEADERS[k] for k in ALL_METRICS],
                                 [[_label(c)] + [_cell(row[k]) for k in ALL_METRICS] for c, row in _over_seeds([run]).items()])]
    if report.get("costs"):
        lines += ["", "**Memory and scoring time against the training set** (the scorer alone: the shared backbone "
                  "is left out; wall clock, one run)", "", cost_table(report["costs"])]
    if len(done) == 2:
        lines += ["", "**Unified vs separate** (image AUROC: detection, paper Table 1; "
                  "pixel AUROC: localisation, Table 2)", "",
                  side_by_side(table["unified"], table["separate"], cell=_cell)]
    return "\n".join(lines)
