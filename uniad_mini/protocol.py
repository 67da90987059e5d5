"""The evaluation protocol of the paper's Tables 1 and 2, with the seven metrics of later benchmarks.

    python -m uniad_mini.protocol DATA_ROOT --seeds 5 --out runs/benchmark

Two settings (paper Sec. 4.1):
  * unified  -- ONE model trained on the normal images of every class at once, no class labels;
  * separate -- one model per class, trained on that class alone (the classic one-class setting).
Each is trained from seeds 0..N-1, and every model is evaluated once, after its last epoch:
final-epoch numbers, no model selection on the test set (the original code picks the checkpoint
with the best test pixel AUROC, which inflates its numbers). Per class we report

    image AUROC, image AP, image F1-max | pixel AUROC, pixel AP, pixel F1-max, AUPRO   (metrics.py)

as mean +- sample standard deviation over the seeds, in percent; the "mean" row averages the classes
within each seed first (unweighted, as the paper does), then takes mean +- std of that over seeds.

The backbone is frozen and nothing is augmented, so its features are computed ONCE per data set and
reused by every seed and both settings: the separate setting trains on `subset(train, class_indices)`
of the same cache.
"""
from __future__ import annotations

import argparse
import ast
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from . import metrics
from .data import DataError, MVTecAD, load_image
from .features import Cache
from .model import RECIPES, UniAD, make_config
from .plots import roc_curve_png
from .visualize import panel

SETTINGS = ("unified", "separate")
METRICS = ("image_auroc", "image_ap", "image_f1_max", "pixel_auroc", "pixel_ap", "pixel_f1_max", "aupro")
HEADERS = ("image AUROC", "image AP", "image F1-max", "pixel AUROC", "pixel AP", "pixel F1-max", "AUPRO")
PROTOCOL_NOTE = "final-epoch numbers, no model selection on the test set"


# --------------------------------------------------------------------------------------------------
# Caches, split by class


def subset(cache: Cache, indices) -> Cache:
    """The samples of `cache` at `indices` (a list or 1-D tensor of positions), in that order."""
    idx = torch.as_tensor(list(indices), dtype=torch.long)
    pick = idx.tolist()
    return Cache(
        cache.features[idx], cache.labels[idx], cache.masks[idx],
        [cache.classes[i] for i in pick], [cache.paths[i] for i in pick] if cache.paths else [],
    )


def class_indices(cache: Cache) -> dict[str, list[int]]:
    """{class: positions of its samples in the cache}, classes sorted by name."""
    out: dict[str, list[int]] = {}
    for i, c in enumerate(cache.classes):
        out.setdefault(c, []).append(i)
    return dict(sorted(out.items()))


def by_class(cache: Cache) -> dict[str, Cache]:
    """The cache split into one Cache per class (the separate setting's training and test sets)."""
    return {c: subset(cache, idx) for c, idx in class_indices(cache).items()}


# --------------------------------------------------------------------------------------------------
# One model: train, score, measure


def train_model(train: Cache, seed: int, epochs: int | None, config: dict, progress: bool = True) -> UniAD:
    """A fresh UniAD trained on cached features. The seed fixes the initial weights (set before the
    model is built) and the batch order and jitter noise (Config.seed, used by `fit`)."""
    torch.manual_seed(seed)
    model = UniAD(**{**config, "seed": seed})
    return model.fit(train, epochs=epochs, progress=progress)


def class_metrics(scores: torch.Tensor, maps: torch.Tensor, cache: Cache) -> dict[str, dict[str, float]]:
    """{class: the seven metrics (fractions)} for scores (N,) and maps (N, S, S) of the cache's samples."""
    out = {}
    for c, idx in class_indices(cache).items():
        idx = torch.tensor(idx)
        out[c] = metrics.anomaly_metrics(scores[idx], cache.labels[idx], maps[idx], cache.masks[idx])
    return out


# --------------------------------------------------------------------------------------------------
# Pictures


def _picture_name(path: str, i: int) -> str:
    if not path:
        return f"{i:04d}.png"
    p = Path(path)
    return f"{p.parent.name}_{p.stem}.png"  # DEFECT_NAME.png


def write_pictures(model: UniAD, test, out_dir, data=None, progress: bool = False) -> list[Path]:
    """A PNG panel per test image (image | ground truth | anomaly-map overlay) and a ROC plot per class.

    test: a data set (MVTecAD / SyntheticAD) or a Cache of its features; data: the data set the Cache
    came from, to read the images (default: the image files at the Cache's paths).
    Writes OUT/CLASS/DEFECT_NAME.png and OUT/roc_CLASS.png. Within a class every overlay uses the
    same colour scale, from the smallest to the largest pixel score of that class's maps, so that
    panels of one class can be compared with one another. Returns the paths written.
    """
    if not isinstance(test, Cache):
        data = test
        test = model.cache(test, progress=progress, desc="test")
    if data is not None and len(data) != len(test.labels):
        raise ValueError(f"data has {len(data)} items but the cache {len(test.labels)}; pass the data set it came from")
    out_dir = Path(out_dir)
    scores, maps = model.score_features(test.features)  # (N,), (N, S, S)
    S = model.config.image_size
    written = []
    for c, idx in class_indices(test).items():
        (out_dir / c).mkdir(parents=True, exist_ok=True)
        vmin, vmax = float(maps[idx].min()), float(maps[idx].max())
        for i in idx:
            path = test.paths[i] if test.paths else ""
            if data is not None:
                image = data[i]["image"]
            elif path and Path(path).is_file():
                image = load_image(path, S)
            else:
                raise ValueError(f"cannot find the image of test sample {i} ({path!r}); pass data= the data set")
            if image.shape[-2:] != (S, S):
                image = torch.nn.functional.interpolate(image[None], size=(S, S), mode="bilinear")[0]
            state = "anomalous" if int(test.labels[i]) else "normal"
            title = f"{c}/{Path(path).parent.name}/{Path(path).name}  score {float(scores[i]):.3f}  {state}"
            target = out_dir / c / _picture_name(path, i)
            panel(image, maps[i], test.masks[i], vmin, vmax, title).save(target)
            written.append(target)
        labels, masks = test.labels[idx], test.masks[idx]
        curves, legend = {}, []
        if 0 < int(labels.sum()) < len(idx):
            curves["image"] = metrics.roc_curve(scores[idx], labels)[:2]
            legend.append(f"image AUROC {100 * metrics.auroc(scores[idx], labels):.1f}%")
        if 0 < int(masks.sum()) < masks.numel():
            curves["pixel"] = metrics.roc_curve(maps[idx], masks)[:2]
            legend.append(f"pixel AUROC {100 * metrics.auroc(maps[idx], masks):.1f}%")
        target = out_dir / f"roc_{c}.png"
        roc_curve_png(curves, title=f"{c}: ROC", legend=legend).save(target)
        written.append(target)
    return written


# --------------------------------------------------------------------------------------------------
# The runner


def _seed_list(seeds) -> list[int]:
    if isinstance(seeds, int):
        if seeds < 1:
            raise ValueError(f"seeds must be at least 1, got {seeds}")
        return list(range(seeds))
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ValueError("seeds is empty")
    return seeds


def run_protocol(data_root, settings=SETTINGS, seeds=5, epochs: int | None = None, out=None, classes=None,
                 pictures: bool = True, progress: bool = True, **config) -> dict:
    """Train and evaluate the unified and/or separate setting over several seeds on an MVTec-layout folder.

    seeds: a count N (seeds 0..N-1) or a list of seeds; epochs: None for the recipe's default;
    config: UniAD options (recipe="paper", hidden_dim=..., ...); out: a folder for results.json,
    results.md and (pictures=True) the pictures of each setting's first seed.
    Returns {"runs": {setting: [{class: {metric: fraction}} per seed]}, "seeds", "classes", "epochs",
             "config", "counts", "seconds", "data_root", "note"}; `markdown_tables` turns it into tables.
    """
    settings = tuple(settings)
    bad = [s for s in settings if s not in SETTINGS]
    if bad or not settings:
        raise ValueError(f"unknown setting(s) {bad}; choose from {SETTINGS}")
    seeds = _seed_list(seeds)
    cfg = make_config(**config)  # check every option before any work
    epochs = epochs or cfg.epochs
    if epochs < 1:
        raise ValueError(f"epochs must be at least 1, got {epochs}")
    say = (lambda msg: print(msg, file=sys.stderr, flush=True)) if progress else (lambda msg: None)
    start = time.perf_counter()
    train_data = MVTecAD(data_root, "train", classes, image_size=cfg.image_size)
    test_data = MVTecAD(data_root, "test", train_data.classes, image_size=cfg.image_size)
    for c in train_data.classes:
        labels = [s.label for s in test_data.samples if s.cls == c]
        if not labels or all(labels) or not any(labels):
            raise DataError(f"class {c!r} needs both normal (test/good) and defective test images to be evaluated")
    extractor = UniAD(**config)
    train = extractor.cache(train_data, progress=progress, desc="train features")
    test = extractor.cache(test_data, progress=progress, desc="test features")
    del extractor
    train_by_class, test_by_class = by_class(train), by_class(test)
    out = Path(out) if out is not None else None
    results = {
        "data_root": str(data_root), "note": PROTOCOL_NOTE, "seeds": seeds, "epochs": epochs,
        "classes": list(train_by_class), "settings": list(settings), "config": {**config, "epochs": epochs},
        "counts": {c: {"train": len(train_by_class[c].labels), "test": len(test_by_class[c].labels),
                       "test_anomalous": int(test_by_class[c].labels.sum())} for c in train_by_class},
        "seconds": {"features": time.perf_counter() - start},
        "runs": {s: [] for s in settings},
    }
    for setting in settings:
        t0 = time.perf_counter()
        for seed in seeds:
            say(f"[{setting} seed {seed}] training {epochs} epoch(s)")
            first = out is not None and pictures and seed == seeds[0]  # pictures of the first seed only
            pics = out / "pictures" / setting / f"seed{seed}" if first else None
            if setting == "unified":
                model = train_model(train, seed, epochs, config, progress)
                scores, maps = model.score_features(test.features)
                run = class_metrics(scores, maps, test)
                if pics is not None:
                    write_pictures(model, test, pics, data=test_data)
            else:
                run = {}
                for c, cache in train_by_class.items():
                    model = train_model(cache, seed, epochs, config, progress)
                    scores, maps = model.score_features(test_by_class[c].features)
                    run.update(class_metrics(scores, maps, test_by_class[c]))
                    if pics is not None:
                        idx = class_indices(test)[c]
                        write_pictures(model, test_by_class[c], pics, data=torch.utils.data.Subset(test_data, idx))
            results["runs"][setting].append(run)
            mean = {k: float(np.mean([run[c][k] for c in run])) for k in METRICS}
            say(f"[{setting} seed {seed}] mean image AUROC {100 * mean['image_auroc']:.1f}, "
                f"pixel AUROC {100 * mean['pixel_auroc']:.1f}, AUPRO {100 * mean['aupro']:.1f}")
            results["seconds"][setting] = time.perf_counter() - t0
            results["seconds"]["total"] = time.perf_counter() - start
            if out is not None:  # after every seed, so a long run can be read while it goes on
                _write(results, out)
    return results


def _write(results: dict, out: Path):
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=1))
    (out / "results.md").write_text(markdown_tables(results) + "\n")


# --------------------------------------------------------------------------------------------------
# Tables


def _cell(values: list[float]) -> str:
    """Fractions over seeds -> 'mean ± std' in percent (sample std; the mean alone for one seed)."""
    v = 100 * np.asarray(values, dtype=np.float64)
    if v.size == 1:
        return f"{v[0]:.1f}"
    return f"{v.mean():.1f} ± {v.std(ddof=1):.1f}"


def _per_class(runs: list[dict], classes: list[str]) -> dict[str, dict[str, list[float]]]:
    """{class or "mean": {metric: [value per seed]}}; "mean" averages the classes within each seed."""
    rows = {c: {k: [run[c][k] for run in runs] for k in METRICS} for c in classes}
    rows["mean"] = {k: [float(np.mean([run[c][k] for c in classes])) for run in runs] for k in METRICS}
    return rows


def markdown_tables(results: dict) -> str:
    """Markdown: one table per setting (classes x seven metrics, mean ± std over seeds, percent), then
    unified and separate side by side for image and pixel AUROC (the layout of the paper's Tables 1, 2)."""
    runs, classes = results["runs"], results["classes"]
    done = {s: r for s, r in runs.items() if r}
    n_seeds = {s: len(r) for s, r in done.items()}
    spread = "mean ± sample std over seeds" if max(n_seeds.values(), default=1) > 1 else "one seed, no spread"
    seconds = results.get("seconds", {})
    lines = [
        f"Numbers are {PROTOCOL_NOTE}: every model is evaluated once, after epoch {results['epochs']}.",
        f"Percent, {spread}; the mean row averages the classes within each seed, then over seeds.",
        f"Seeds {', '.join(map(str, results['seeds']))}; epochs {results['epochs']}; options "
        f"{json.dumps({k: v for k, v in results['config'].items() if k != 'epochs'})} "
        "(the rest: Config defaults).",
        "Images (train / test / test anomalous): "
        + "; ".join(f"{c} {n['train']} / {n['test']} / {n['test_anomalous']}" for c, n in results["counts"].items())
        + ".",
    ]
    if "total" in seconds:
        parts = ", ".join(f"{k} {v / 60:.1f} min" for k, v in seconds.items() if k != "total")
        lines.append(f"Wall time {seconds['total'] / 60:.1f} min ({parts}).")
    titles = {"unified": "Unified: one model for all classes", "separate": "Separate: one model per class"}
    for setting, setting_runs in done.items():
        rows = _per_class(setting_runs, classes)
        lines += ["", f"**{titles[setting]}** ({n_seeds[setting]} seed(s))", "",
                  "| class | " + " | ".join(HEADERS) + " |", "|---" * (len(HEADERS) + 1) + "|"]
        for name, row in rows.items():
            label = "**mean**" if name == "mean" else name
            lines.append(f"| {label} | " + " | ".join(_cell(row[k]) for k in METRICS) + " |")
    if len(done) == 2:
        u, s = _per_class(done["unified"], classes), _per_class(done["separate"], classes)
        lines += ["", "**Unified vs separate** (image AUROC: detection, paper Table 1; "
                  "pixel AUROC: localisation, Table 2)", "",
                  "| class | image AUROC unified | image AUROC separate | pixel AUROC unified | pixel AUROC separate |",
                  "|---|---|---|---|---|"]
        for name in u:
            label = "**mean**" if name == "mean" else name
            cells = [_cell(u[name]["image_auroc"]), _cell(s[name]["image_auroc"]),
                     _cell(u[name]["pixel_auroc"]), _cell(s[name]["pixel_auroc"])]
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# Command line


def parse_overrides(items: list[str]) -> dict:
    """["hidden_dim=128", "backend=torch"] -> {"hidden_dim": 128, "backend": "torch"}."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set takes KEY=VALUE, got {item!r}")
        try:
            out[key.strip()] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[key.strip()] = value  # a bare word: a string option such as backend=torch
    return out


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog or "python -m uniad_mini.protocol",
        description="Train and evaluate UniAD in the unified and the separate setting over several seeds; "
        f"print the per-class tables (seven metrics, mean ± std) in Markdown ({PROTOCOL_NOTE}).",
    )
    p.add_argument("data_root", help="a folder in the MVTec AD layout (ROOT/CLASS/train/good, ROOT/CLASS/test/...)")
    p.add_argument("--seeds", type=int, default=5, help="train from seeds 0..N-1 (default 5)")
    p.add_argument("--epochs", type=int, default=None, help="epochs per model (default: the recipe's)")
    p.add_argument("--settings", nargs="+", choices=SETTINGS, default=list(SETTINGS))
    p.add_argument("--classes", nargs="+", default=None, help="only these classes (default: every class folder)")
    p.add_argument("--recipe", choices=sorted(RECIPES), default="cpu")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="any other UniAD option, e.g. --set hidden_dim=128 --set backend=torch")
    p.add_argument("--out", default=None,
                   help="run folder for results.json/.md and pictures (default runs/benchmark-TIME)")
    p.add_argument("--no-pictures", action="store_true", help="do not write the PNG panels and ROC plots")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--quiet", action="store_true", help="no progress output on stderr")
    return p


def main(argv=None, prog: str | None = None) -> int:
    """The command line; returns the exit code (0 done, 2 bad input, with a one-line message on stderr)."""
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    try:
        config = {"recipe": args.recipe, **parse_overrides(args.set)}
        try:
            make_config(**config)
        except TypeError as e:  # an unknown option; caught here only, so a TypeError bug still shows
            raise ValueError(str(e)) from None
        if args.threads is not None:
            if args.threads < 1:
                raise ValueError(f"--threads must be at least 1, got {args.threads}")
            torch.set_num_threads(args.threads)
        out = args.out or f"runs/benchmark-{time.strftime('%Y%m%d-%H%M%S')}"
        results = run_protocol(args.data_root, args.settings, args.seeds, args.epochs, out, args.classes,
                               pictures=not args.no_pictures, progress=not args.quiet, **config)
    except ValueError as e:  # DataError is a ValueError too: a missing folder, a bad option, ...
        print(f"{parser.prog}: error: {e}", file=sys.stderr)
        return 2
    print(markdown_tables(results))
    print(f"\nwritten to {out}/ (results.json, results.md{'' if args.no_pictures else ', pictures/'})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
