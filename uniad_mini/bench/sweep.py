"""Recipe sweeps: many unified trainings on one feature cache, side by side (paper Sec. 4.1 training details).

    uniad-mini sweep DATA_ROOT --variants base lr=1e-3 layers=4 --parallel 4 --device cuda --out runs/sweep

Each variant is the default recipe plus the options it names (`KEY=VALUE`, several joined with `,`, e.g.
`lr=1e-4,schedule=step`; `base` is the default itself). The backbone features of DATA_ROOT are cached once
per feature setting (backbone, input range, size: `FEATURE_OPTIONS`); every variant then trains ONE unified model (no class labels) with `UniAD.fit`
on the training split less a held-out share of each class's normal images (`--holdout`, default 0.2), and is
evaluated about ten times along training (image and pixel AUROC per class) on two sets side by side:

    validation  the held-out normal images, as they are and with drawn anomalies (validation.py): it CHOOSES
    test        the data set's test split: reported beside it, never used to choose (`--select test` only
                when asked for, and the table says so)

The curve is there to see, never to pick an epoch: the table reports the last epoch, and marks the variant
with the best mean validation AUROC (image and pixel averaged). `--holdout 0` trains on the whole training
split and reports the test split alone, as before the validation set existed.

Two variant names are baselines, rows beside the variants on the same caches (`run_baseline`): `knn`, the
nearest-token bank of the training part (nothing trained), and `cnn[,KEY=VALUE...]`, the 3 x 3 CNN
reconstructor trained by the one loop with the options' training settings (bench/baselines.py).
`--scoring map_sigma=4 score_pool=32` scores every trained variant and baseline once more under each scoring
setting (`SCORING_OPTIONS`: the map's smoothing, the image score's window), as extra rows "NAME +SETTING" with
nothing retrained. On a GPU, several variants share the device in parallel
processes (a small model does not fill it); times measured that way are upper bounds of a lone run.

Writes OUT/NAME.json per variant (`evaluation.write_results`: the final numbers under "results", as
{"validation": {...}, "test": {...}}, with the options, the curve, the training seconds and "kinds": each class's
validation image AUROC per drawn kind, `validation.kind_aurocs`) and prints two Markdown tables, the numbers and
the kinds (docs/results.md shows the runs that chose the default recipe).
"""
from __future__ import annotations

import ast
import multiprocessing as mp
import time
from dataclasses import replace
from pathlib import Path

import torch

from ..baselines import NearestToken
from ..calibration import DEFAULT_SHARE
from ..checks import open_checked
from ..evaluation import evaluate, markdown_table, write_results
from ..scoring import score
from ..features import Cache
from ..config import make_config
from ..model import UniAD
from ..errors import OptionError
from ..validation import KINDS, Validation, kind_aurocs
from .baselines import cnn_model


FEATURE_OPTIONS = ("backbone", "backbone_checkpoint", "input_norm", "image_size", "resize")  # what a cache holds
SETS = ("validation", "test")  # what a variant is scored on; SELECT says which one chooses
SCORING_OPTIONS = ("score_pool", "map_sigma")  # what `--scoring` may change: scored again, nothing retrained
BASELINES = ("knn", "cnn")  # rows that are not UniAD: the nearest-token bank, the 3 x 3 CNN (bench/baselines.py)


def split_baseline(text: str) -> tuple[str | None, str]:
    """'cnn,epochs=20' -> ("cnn", "epochs=20"); 'knn' -> ("knn", "base"); a UniAD variant -> (None, text)."""
    head, _, rest = text.partition(",")
    return (head, rest or "base") if head in BASELINES else (None, text)


def parse_variant(text: str) -> dict:
    """'lr=1e-4,schedule=step' -> {"lr": 1e-4, "schedule": "step"}; 'base' -> {}."""
    if text == "base":
        return {}
    out = {}
    for item in text.split(","):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise OptionError(f"a variant is KEY=VALUE[,KEY=VALUE...] or 'base', got {text!r}")
        try:
            out[key.strip()] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[key.strip()] = value  # a bare word such as schedule=step
    return out


def _sync(device: str):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def run_variant(name: str, options: dict, cache_file: str, out_dir: str, device: str, threads: int = 1,
                points: int = 10, scorings: tuple = ()) -> list[dict]:
    """Train and evaluate one variant (in its own process); returns and writes its record, then one record per
    scoring setting of `scorings` (the trained model scored again, nothing retrained).

    points: evaluations along training (about; the first and last epoch always); 0: the last epoch only."""
    torch.set_num_threads(threads)
    train, scored = _load_caches(cache_file)  # scored: validation (unless --holdout 0), test
    model = UniAD(**options).to(device)
    epochs = model.config.epochs
    every = max(1, epochs // points) if points > 0 else epochs
    record = {"name": name, "options": options, "device": device, "curve": []}
    eval_seconds = [0.0]

    def along(m, epoch, loss):
        point = {"epoch": epoch, "loss": loss}
        if epoch % every == 0 or epoch == epochs or (epoch == 1 and points > 0):
            _sync(device)
            t = time.perf_counter()
            for k, cache in scored.items():
                r = m.evaluate(cache, progress=False, metrics="auroc")
                point[k] = _aurocs(r)
            eval_seconds[0] += time.perf_counter() - t
        record["curve"].append(point)

    start = time.perf_counter()
    model.fit(train, progress=False, callback=along)
    _sync(device)
    record["train_seconds"] = time.perf_counter() - start - eval_seconds[0]
    record.update({k: record["curve"][-1][k] for k in scored})
    if "validation" in scored:
        record["kinds"] = _kinds(model.score_features(scored["validation"].features)[0], scored["validation"])
    record["images"] = {"train": len(train), **{k: len(c) for k, c in scored.items()}}
    rescored = [_rescored(record, text, lambda: {k: _aurocs(model.evaluate(c, progress=False, metrics="auroc"))
                                                  for k, c in scored.items()}, model) for text in scorings]
    return [_written(r, out_dir) for r in [record, *rescored]]


def _aurocs(results: dict) -> dict:
    """{class: [image AUROC %, pixel AUROC %]} of `evaluate`'s layout, rounded to 0.1."""
    return {c: [round(100 * v["image_auroc"], 1), round(100 * v["pixel_auroc"], 1)] for c, v in results.items()}


def _kinds(scores: torch.Tensor, validation: Cache) -> dict:
    """{class: {kind: image AUROC %}} of the validation set's drawn kinds (validation.kind_aurocs), rounded to 0.1."""
    return {c: {k: round(100 * v, 1) for k, v in per.items()} for c, per in kind_aurocs(scores, validation).items()}


def _rescored(record: dict, text: str, evaluate_now, model: UniAD) -> dict:
    """The record of the same trained scorer, scored once more with the scoring options of `text`
    ("map_sigma=4,score_pool=32"); its name is the variant's plus " +" text; its training time is the variant's."""
    scoring = parse_variant(text)
    old = model.config
    model.config = replace(old, **scoring)
    try:
        sets = evaluate_now()
    finally:
        model.config = old
    point = {"epoch": record["curve"][-1]["epoch"], **sets}
    kept = {k: v for k, v in record.items() if k != "kinds"}  # the per-kind numbers are the first scoring's
    return {**kept, "name": f"{record['name']} +{text}", "options": {**record["options"], **scoring},
            "curve": [point], **sets}


def _written(record: dict, out_dir: str) -> dict:
    name = record["name"].replace(" +", "+")
    write_results(Path(out_dir, f"{name}.json"), {k: record[k] for k in SETS if k in record}, command="sweep",
                  **{k: v for k, v in record.items() if k not in SETS})
    return record


def run_baseline(name: str, kind: str, options: dict, cache_file: str, out_dir: str, device: str,
                 threads: int = 1, scorings: tuple = ()) -> list[dict]:
    """The bank ("knn", nothing trained) or the 3 x 3 CNN ("cnn", trained by the one loop with the options'
    training settings) on the same caches, standardisation and scoring as the variants; a variant's records."""
    torch.set_num_threads(threads)
    train, scored = _load_caches(cache_file)
    ref = UniAD(**options).to(device)
    ref.set_feature_stats(train.features)
    cfg, start = ref.config, time.perf_counter()
    model = (NearestToken(ref.standardize(train.features)) if kind == "knn"
             else cnn_model(ref, train, cfg.epochs, cfg.seed))
    seconds = time.perf_counter() - start

    def scores(c: Cache):
        return score(model, ref.standardize(c.features), (ref.config.image_size,) * 2, **ref.scoring())

    def evaluate_now():
        return {k: _aurocs(evaluate(*scores(c), c, metrics="auroc")) for k, c in scored.items()}

    sets = evaluate_now()
    record = {"name": name, "baseline": kind, "options": options, "device": device,
              "curve": [{"epoch": 0 if kind == "knn" else cfg.epochs, **sets}], "train_seconds": seconds, **sets,
              "images": {"train": len(train), **{k: len(c) for k, c in scored.items()}}}
    if "validation" in scored:
        record["kinds"] = _kinds(scores(scored["validation"])[0], scored["validation"])
    rescored = [_rescored(record, text, evaluate_now, ref) for text in scorings]
    return [_written(r, out_dir) for r in [record, *rescored]]


def _run(kind, name, options, cache_file, out_dir, device, threads, points, scorings):
    if kind is None:
        return run_variant(name, options, cache_file, out_dir, device, threads, points, scorings)
    return run_baseline(name, kind, options, cache_file, out_dir, device, threads, scorings)


def _feature_key(options: dict) -> tuple:
    """What a variant's features depend on: variants with the same key share one cache."""
    cfg = make_config(**options)
    return tuple(getattr(cfg, name) for name in FEATURE_OPTIONS)


def _cache_file(data_root, options: dict, classes, out: Path, index: int, device: str, progress: bool,
                holdout: float = DEFAULT_SHARE, holdout_seed: int = 0) -> Path:
    """Run the backbone of `options` once over DATA_ROOT's training part, validation set (holdout > 0) and test
    split; the caches in one file."""
    extractor = UniAD(**options).to(device)  # the backbone, input range, size and resize of these options
    cfg = extractor.config
    sets, _ = open_checked(data_root, ("train", "test"), classes, cfg.image_size, cfg.resize)  # every problem, now
    val = Validation(sets["train"], holdout, holdout_seed) if holdout > 0 else None
    train = extractor.cache(val.train if val else sets["train"], progress=progress, desc="train features")
    validation = extractor.cache(val, progress=progress, desc="validation features") if val else None
    test = extractor.cache(sets["test"], progress=progress, desc="test features")
    path = out / f"features{index}.pt"
    torch.save({"train": _plain(train), "validation": _plain(validation) if val else None, "test": _plain(test)}, path)
    return path


def _plain(cache: Cache) -> dict:
    """A Cache as tensors and lists of strings only, what `torch.load(weights_only=True)` reads back."""
    return {"features": cache.features, "labels": cache.labels, "masks": cache.masks,
            "classes": [str(c) for c in cache.classes], "paths": [str(p) for p in cache.paths]}


def _load_caches(cache_file: str) -> tuple[Cache, dict[str, Cache]]:
    """(training cache, {set: cache} of SETS present) from `_cache_file`'s file, loaded with weights_only=True."""
    caches = torch.load(cache_file, weights_only=True)
    return Cache(**caches["train"]), {k: Cache(**caches[k]) for k in SETS if caches.get(k) is not None}


def sweep(data_root, variants: list[str], out, device: str = "cpu", parallel: int = 1, progress: bool = True,
          base: dict | None = None, classes=None, holdout: float = DEFAULT_SHARE, holdout_seed: int = 0,
          points: int = 10, scorings: list[str] | None = None) -> list[dict]:
    """Cache DATA_ROOT's features once per feature setting, then run every variant (`parallel` at a time).

    base: options every variant starts from (recipe, seed, backbone, ...); a variant's own options win.
    Variants that change the features (FEATURE_OPTIONS) get a cache of their own. Returns records in order.
    holdout, holdout_seed: the share of each class's normal training images held out for the validation set
    (and its seed: which images, which anomalies); 0 trains on the whole training split, no validation.
    points: evaluations along training per variant (0: the last epoch only, the cheapest).
    scorings: scoring settings ("map_sigma=4", "score_pool=32,map_sigma=2": SCORING_OPTIONS only) under which every
    trained variant and baseline is scored once more, as extra rows "NAME +SETTING": nothing is retrained.
    A variant "knn" or "cnn[,KEY=VALUE...]" is a baseline row (`run_baseline`) on the same caches.
    """
    if not 0 <= holdout < 1:
        raise OptionError(f"--holdout is a share in [0, 1), got {holdout}")
    out = Path(out)
    kinds = {v: split_baseline(v)[0] for v in variants}
    named = {v: {**(base or {}), **parse_variant(split_baseline(v)[1])} for v in variants}
    keys = {name: _feature_key(options) for name, options in named.items()}  # every option checked before any work
    scorings = tuple(scorings or ())
    for text in scorings:
        other = set(parse_variant(text)) - set(SCORING_OPTIONS)
        if other:
            raise OptionError(f"--scoring takes only {', '.join(SCORING_OPTIONS)}, got {sorted(other)} in {text!r}")
        for options in named.values():
            make_config(**{**options, **parse_variant(text)})  # a bad value stops here, before any work
    threads = max(1, torch.get_num_threads() // parallel)  # the cores shared among the parallel variants
    out.mkdir(parents=True, exist_ok=True)
    files = {}
    for name, options in named.items():
        if keys[name] not in files:
            files[keys[name]] = _cache_file(data_root, options, classes, out, len(files), device, progress,
                                            holdout, holdout_seed)
    jobs = [(kinds[name], name, options, str(files[keys[name]]), str(out), str(device), threads, points, scorings)
            for name, options in named.items()]
    try:
        if parallel <= 1:
            runs = [_run(*job) for job in jobs]
        else:
            with mp.get_context("spawn").Pool(parallel) as pool:
                runs = pool.starmap(_run, jobs)
    finally:
        for f in files.values():
            f.unlink(missing_ok=True)
    return [record for run in runs for record in run]


def _rank(cells: dict) -> float:
    """The selection score of one set's final numbers: mean image and pixel AUROC of the "mean" row, averaged."""
    return (cells["mean"][0] + cells["mean"][1]) / 2


def chosen(records: list[dict], select: str = "validation") -> str | None:
    """The name of the UniAD variant with the best mean `select` AUROC (image and pixel averaged); None without
    one. Baseline rows are the bar to clear, never chosen."""
    if select not in SETS:
        raise OptionError(f"--select is one of {SETS}, got {select!r}")
    have = [r for r in records if r.get(select) and not r.get("baseline")]
    return max(have, key=lambda r: _rank(r[select]))["name"] if have else None


def sweep_table(records: list[dict], select: str = "validation") -> str:
    """One row per variant: final image / pixel AUROC per class and the mean, on the validation set and the
    test split side by side, epochs, training seconds; the variant `select` chooses is in bold."""
    sets = [k for k in SETS if records[0].get(k)]
    classes = [c for c in records[0][sets[-1]] if c != "mean"] + ["mean"]
    best = chosen(records, select) if select in sets else None
    rows = []
    for r in records:
        cells = [f"{r[k][c][0]:.1f} / {r[k][c][1]:.1f}" for c in classes for k in sets]
        name = f"**{r['name']}**" if r["name"] == best else r["name"]
        rows.append([name, r["curve"][-1]["epoch"], *cells, f"{r['train_seconds']:.0f}"])
    word = {"validation": "val", "test": "test"}
    header = ["variant", "epochs", *[f"{c} {word[k]}" for c in classes for k in sets], "training s"]
    note = (f"image / pixel AUROC, final epoch; bold: the best mean {select} AUROC (chosen by {select}"
            + ("; the test split never chooses)" if select == "validation" else ", as asked: not a held-out choice)")
            if best else "image / pixel AUROC, final epoch; test split only (--holdout 0): nothing chosen")
    return markdown_table(header, rows) + "\n\n" + note


def kinds_table(records: list[dict]) -> str | None:
    """One row per variant and baseline: each class's validation image AUROC per drawn kind (None without them)."""
    have = [r for r in records if r.get("kinds")]
    if not have:
        return None
    classes = list(have[0]["kinds"])
    rows = [[r["name"], *[" / ".join(f"{r['kinds'][c].get(k, float('nan')):.1f}" for k in KINDS) for c in classes]]
            for r in have]
    return (markdown_table(["variant", *classes], rows) + "\n\nvalidation image AUROC per drawn kind: "
            + " / ".join(KINDS) + " (each against the class's held-out normal images)")
