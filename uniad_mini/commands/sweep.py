"""Recipe sweeps: many unified trainings on one feature cache, side by side (paper Sec. 4.1 training details).

    uniad-mini sweep DATA_ROOT --variants base lr=1e-3 layers=4 --parallel 4 --device cuda --out runs/sweep

Each variant is the default recipe plus the options it names (`KEY=VALUE`, several joined with `,`, e.g.
`lr=1e-4,schedule=step`; `base` is the default itself). The backbone features of DATA_ROOT are cached once
per feature setting (backbone, input range, size: `FEATURE_OPTIONS`); every variant then trains ONE unified model (no class labels) with `UniAD.fit`, and is evaluated on the
test split about ten times along training (image and pixel AUROC per class) -- to see a curve, never to pick
an epoch: the table reports the last epoch. On a GPU, several variants share the device in parallel
processes (a small model does not fill it); times measured that way are upper bounds of a lone run.

Writes OUT/NAME.json per variant (`evaluation.write_results`: the final numbers under "results", with the
options, the curve and the training seconds) and prints one Markdown
table (docs/results.md shows the runs that chose the default recipe).
"""
from __future__ import annotations

import ast
import multiprocessing as mp
import time
from pathlib import Path

import torch

from ..checks import open_checked
from ..evaluation import markdown_table, write_results
from ..features import Cache
from ..model import UniAD, make_config
from ..errors import OptionError


FEATURE_OPTIONS = ("backbone", "backbone_checkpoint", "input_norm", "image_size", "resize")  # what a cache holds


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


def run_variant(name: str, options: dict, cache_file: str, out_dir: str, device: str, threads: int = 1) -> dict:
    """Train and evaluate one variant (in its own process); returns and writes its record."""
    torch.set_num_threads(threads)
    caches = torch.load(cache_file, weights_only=False)
    train, test = Cache(**caches["train"]), Cache(**caches["test"])
    model = UniAD(**options).to(device)
    epochs = model.config.epochs
    every = max(1, epochs // 10)
    record = {"name": name, "options": options, "device": device, "curve": []}
    eval_seconds = [0.0]

    def along(m, epoch, loss):
        point = {"epoch": epoch, "loss": loss}
        if epoch % every == 0 or epoch in (1, epochs):
            _sync(device)
            t = time.perf_counter()
            r = m.evaluate(test, progress=False, metrics="auroc")
            point["auroc"] = {c: [round(100 * v["image_auroc"], 1), round(100 * v["pixel_auroc"], 1)] for c, v in r.items()}
            eval_seconds[0] += time.perf_counter() - t
        record["curve"].append(point)

    start = time.perf_counter()
    model.fit(train, progress=False, callback=along)
    _sync(device)
    record["train_seconds"] = time.perf_counter() - start - eval_seconds[0]
    record["final"] = record["curve"][-1]["auroc"]
    write_results(Path(out_dir, f"{name}.json"), record["final"], command="sweep",
                  **{k: v for k, v in record.items() if k != "final"})
    return record


def _feature_key(options: dict) -> tuple:
    """What a variant's features depend on: variants with the same key share one cache."""
    cfg = make_config(**options)
    return tuple(getattr(cfg, name) for name in FEATURE_OPTIONS)


def _cache_file(data_root, options: dict, classes, out: Path, index: int, device: str, progress: bool) -> Path:
    """Run the backbone of `options` once over DATA_ROOT's train and test splits; the caches in one file."""
    extractor = UniAD(**options).to(device)  # the backbone, input range, size and resize of these options
    cfg = extractor.config
    sets, _ = open_checked(data_root, ("train", "test"), classes, cfg.image_size, cfg.resize)  # every problem, now
    train = extractor.cache(sets["train"], progress=progress, desc="train features")
    test = extractor.cache(sets["test"], progress=progress, desc="test features")
    path = out / f"features{index}.pt"
    torch.save({"train": vars(train), "test": vars(test)}, path)
    return path


def sweep(data_root, variants: list[str], out, device: str = "cpu", parallel: int = 1, progress: bool = True,
          base: dict | None = None, classes=None) -> list[dict]:
    """Cache DATA_ROOT's features once per feature setting, then run every variant (`parallel` at a time).

    base: options every variant starts from (recipe, seed, backbone, ...); a variant's own options win.
    Variants that change the features (FEATURE_OPTIONS) get a cache of their own. Returns records in order.
    """
    out = Path(out)
    named = {v: {**(base or {}), **parse_variant(v)} for v in variants}
    keys = {name: _feature_key(options) for name, options in named.items()}  # every option checked before any work
    out.mkdir(parents=True, exist_ok=True)
    files = {}
    for name, options in named.items():
        if keys[name] not in files:
            files[keys[name]] = _cache_file(data_root, options, classes, out, len(files), device, progress)
    jobs = [(name, options, str(files[keys[name]]), str(out), str(device)) for name, options in named.items()]
    try:
        if parallel <= 1:
            records = [run_variant(*job) for job in jobs]
        else:
            with mp.get_context("spawn").Pool(parallel) as pool:
                records = pool.starmap(run_variant, jobs)
    finally:
        for f in files.values():
            f.unlink(missing_ok=True)
    return records


def sweep_table(records: list[dict]) -> str:
    """One row per variant: final image / pixel AUROC per class and the mean, epochs, training seconds."""
    classes = [c for c in records[0]["final"] if c != "mean"] + ["mean"]
    rows = []
    for r in records:
        cells = [f"{r['final'][c][0]:.1f} / {r['final'][c][1]:.1f}" for c in classes]
        rows.append([r["name"], r["curve"][-1]["epoch"], *cells, f"{r['train_seconds']:.0f}"])
    return markdown_table(["variant", "epochs", *classes, "training s"], rows)
