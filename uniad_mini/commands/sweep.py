"""Recipe sweeps: many unified trainings on one feature cache, side by side (paper Sec. 4.1 training details).

    uniad-mini sweep DATA_ROOT --variants base lr=1e-3 layers=4 --parallel 4 --device cuda --out runs/sweep

Each variant is the default recipe plus the options it names (`KEY=VALUE`, several joined with `,`, e.g.
`lr=1e-4,schedule=step`; `base` is the default itself). The backbone features of DATA_ROOT are cached once;
every variant then trains ONE unified model (no class labels) with `UniAD.fit`, and is evaluated on the
test split about ten times along training (image and pixel AUROC per class) -- to see a curve, never to pick
an epoch: the table reports the last epoch. On a GPU, several variants share the device in parallel
processes (a small model does not fill it); times measured that way are upper bounds of a lone run.

Writes OUT/NAME.json (options, curve, final numbers, training seconds) per variant and prints one Markdown
table (docs/results.md shows the runs that chose the default recipe).
"""
from __future__ import annotations

import ast
import json
import multiprocessing as mp
import time
from pathlib import Path

import torch

from ..data import MVTecAD
from ..evaluation import markdown_table
from ..features import Cache, FeatureExtractor, cache_features


FEATURE_OPTIONS = {"backbone", "backbone_checkpoint", "input_norm", "image_size"}  # fixed by the shared cache


def parse_variant(text: str) -> dict:
    """'lr=1e-4,schedule=step' -> {"lr": 1e-4, "schedule": "step"}; 'base' -> {}."""
    if text == "base":
        return {}
    out = {}
    for item in text.split(","):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"a variant is KEY=VALUE[,KEY=VALUE...] or 'base', got {text!r}")
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
    from ..model import UniAD

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
    Path(out_dir, f"{name}.json").write_text(json.dumps(record, indent=1))
    return record


def sweep(data_root, variants: list[str], out, device: str = "cpu", parallel: int = 1, progress: bool = True,
          base: dict | None = None) -> list[dict]:
    """Cache DATA_ROOT's features once, then run every variant (`parallel` at a time); records in order.

    base: options every variant starts from (e.g. recipe or seed); a variant's own options win.
    """
    out = Path(out)
    named = {v: {**(base or {}), **parse_variant(v)} for v in variants}
    from ..model import make_config

    for name, options in named.items():
        make_config(**options)  # every option checked before any work
        shared = sorted(set(options) & FEATURE_OPTIONS)
        if shared:
            raise ValueError(f"variant {name!r} changes {shared}: every variant shares one feature cache")
    out.mkdir(parents=True, exist_ok=True)
    extractor = FeatureExtractor().to(device)
    train = cache_features(extractor, MVTecAD(data_root, "train"), progress=progress, desc="train features")
    test = cache_features(extractor, MVTecAD(data_root, "test"), progress=progress, desc="test features")
    cache_file = out / "features.pt"
    torch.save({"train": vars(train), "test": vars(test)}, cache_file)
    jobs = [(name, options, str(cache_file), str(out), str(device)) for name, options in named.items()]
    if parallel <= 1:
        records = [run_variant(*job) for job in jobs]
    else:
        with mp.get_context("spawn").Pool(parallel) as pool:
            records = pool.starmap(run_variant, jobs)
    cache_file.unlink()
    return records


def sweep_table(records: list[dict]) -> str:
    """One row per variant: final image / pixel AUROC per class and the mean, epochs, training seconds."""
    classes = [c for c in records[0]["final"] if c != "mean"] + ["mean"]
    rows = []
    for r in records:
        cells = [f"{r['final'][c][0]:.1f} / {r['final'][c][1]:.1f}" for c in classes]
        rows.append([r["name"], r["curve"][-1]["epoch"], *cells, f"{r['train_seconds']:.0f}"])
    return markdown_table(["variant", "epochs", *classes, "training s"], rows)
