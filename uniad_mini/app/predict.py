"""`uniad-mini predict RUN INPUT... --out DIR`: a decision, a score and a defect mask for every image it is given.

INPUT is an image file, a folder (walked recursively, hidden entries skipped, only image extensions taken) or a
glob (`'parts/**/*.png'`, `'data/*/test'`: matching folders are walked too). Images stream through in small
batches (`BATCH` consecutive images of one size; memory stays bounded: the report keeps at most
`report.GALLERY` thumbnails), with a progress bar and the throughput. DIR receives

    predictions.csv        path, class, score, threshold, decision, defect_area_px (also printed on stdout)
    images/NAME_overlay.png  the heat map over the image (colour scale 0 .. 2 x the class's pixel threshold:
                             the threshold is mid-scale; uncalibrated: 0 .. the image's own maximum)
    images/NAME_mask.png     the binary defect mask (255 = defect; empty where the image is decided normal)
    report.html            per-class table, score histograms with the thresholds, a gallery (app/report.py)

The class of an image, which picks its thresholds, is `--class NAME` for every image, else the nearest folder
of its path named like a calibrated class (`.../bottle/...` -> bottle), else none: the global threshold.
`--engine torch` (the default) scores with the PyTorch model; `onnx` and `openvino` with its exported graph
(`export.engine`: the export, parity check included, made in RUN/engines/ on first use and reused while the model
is unchanged, run as the exported predict.py runs it). The engine only turns a batch of images into (scores,
maps): reading, thresholds and every file written are this module's, the same for all.
An unreadable file is listed on stderr (one line), skipped, and makes the exit status 2 at the end, after
everything else is written; Ctrl-C keeps the rows done so far in predictions.csv and writes the report.
"""
from __future__ import annotations

import contextlib
import csv
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .. import calibration as C
from ..data import IMAGE_EXTENSIONS, load_image, load_mask
from ..errors import DataError
from ..pictures import PNG, overlay
from ..progress import Progress
from . import report as R
from . import runs
# the one file walk, CSV layout and class-from-folder rule, shared with the exported predict.py (whose helpers
# import without onnxruntime), so that both commands name, find and decide the same images
from .exported_predict import FIELDS, class_from_path, find_images

MAX_SIDE = 2048  # a larger image, and its map, are shrunk to this side (aspect kept): memory stays bounded
BATCH = 8  # consecutive images of one size are predicted together (the backbone is several times faster so)


def layout_truth(path: Path):
    """(label, mask path or None) for an image in the MVTec layout CLASS/test/DEFECT/NAME, else (None, None)."""
    p = Path(path)
    if len(p.parts) < 4 or p.parent.parent.name != "test":
        return None, None
    if p.parent.name == "good":
        return 0, None
    mask = p.parents[2] / "ground_truth" / p.parent.name / f"{p.stem}_mask.png"
    return 1, (mask if mask.is_file() else None)


def _unique(name: str, used: set) -> str:
    out, k = name, 2
    while out in used:
        out, k = f"{name}_{k}", k + 1
    used.add(out)
    return out


def run(model, inputs: list[str], out, cls: str | None = None, progress: bool = True, title: str = "",
        engine=None) -> int:
    """Predict every image of `inputs` into `out`; returns the count of images done. Raises DataError at the
    start (nothing to do, an unknown --class) or at the end (some inputs skipped, listed on stderr).
    engine: a context manager, entered once the inputs are checked and before `out` is made, that gives
    `score(images (B, 3, H, W)) -> (scores, maps)` (export.engine); default the model's own `score_images`."""
    cal = model.calibration
    if cls is not None:
        if cal is None:
            raise DataError("--class needs per-class thresholds, but this run is not calibrated: run uniad-mini "
                            "calibrate RUN DATA_ROOT first (or drop --class)")
        C.thresholds_for(cal, cls)  # an unknown name: one line naming the calibrated classes
    files, problems = find_images(inputs)
    for item, why in problems:
        print(f"uniad-mini predict: skipped {item}: {why}", file=sys.stderr)
    if not files:
        raise DataError(f"no images to predict in {' '.join(inputs)}; pass image files, folders or globs "
                        f"({', '.join(IMAGE_EXTENSIONS)})")
    with engine or contextlib.nullcontext(model.score_images) as score:
        out = runs.writable_folder(Path(out))  # a file, or a folder that cannot be written: one line, before any work
        return _stream(model, score, files, problems, out, cls, progress, title)


def _stream(model, score, files, problems, out: Path, cls, progress: bool, title: str) -> int:
    """run's work, once everything is checked: stream `files` through `score`, write the CSV, PNGs, report."""
    cal = model.calibration
    (out / "images").mkdir(parents=True, exist_ok=True)
    known = set(cal["classes"]) if cal else set()
    rows, gallery, used, start = [], [], set(), time.perf_counter()
    tmp = out / "predictions.csv.tmp"
    stdout = csv.writer(sys.stdout)
    stdout.writerow(FIELDS)
    try:
        with open(tmp, "w", newline="") as f, Progress(len(files), "predict", enabled=progress) as bar:
            writer = csv.writer(f)
            writer.writerow(FIELDS)
            batch = []  # up to BATCH consecutive images of one size, predicted together

            def flush():
                nonlocal gallery
                if not batch:
                    return
                names = [cls or class_from_path(path, known) for path, _, _ in batch] if cal else None
                pred = C.decide(*score(torch.stack([image for _, _, image in batch])), cal, names)
                for k, (path, name, image) in enumerate(batch):
                    row, item = _one(path, image, pred, k, out, _unique(name, used))
                    writer.writerow(row), stdout.writerow(row), f.flush()
                    rows.append(row)
                    gallery.append(item)
                    if len(gallery) > 2 * R.GALLERY:  # keep memory bounded: only the thumbnails the page shows
                        gallery = R.gallery_order(gallery)[:R.GALLERY]
                    bar.update(1, f"{len(rows) / (time.perf_counter() - start):.1f} images/s")
                batch.clear()

            for path, name in files:
                try:
                    image = load_image(path, size=None, max_side=MAX_SIDE)
                except DataError as e:
                    print(f"\nuniad-mini predict: skipped {path}: {e}", file=sys.stderr)
                    problems.append((str(path), str(e)))
                    bar.update(1)
                    continue
                if batch and (batch[0][2].shape != image.shape or len(batch) == BATCH):
                    flush()
                batch.append((path, name, image))
            flush()
    finally:
        if tmp.exists():
            os.replace(tmp, out / "predictions.csv")
        if rows:
            _report(out, rows, gallery, cal, title, problems)
    seconds = time.perf_counter() - start
    flagged = sum(r[4] == "anomalous" for r in rows)
    where = getattr(score, "where", None) or next(model.transformer.parameters()).device.type
    print(f"{len(rows)} images in {seconds:.1f} s ({len(rows) / seconds:.1f} images/s on {where}), {flagged} decided anomalous; "
          f"wrote {out / 'predictions.csv'}, images/ (overlays and masks) and {out / 'report.html'}", file=sys.stderr)
    if problems:
        raise DataError(f"{len(problems)} input(s) could not be read and were skipped (listed above); the other "
                        f"{len(rows)} image(s) are in {out / 'predictions.csv'}")
    return len(rows)


def _one(path: Path, image, pred, k: int, out: Path, name: str):
    """Image k of a batch's Prediction: write its overlay and mask; (CSV row, gallery item)."""
    score, amap = float(pred.scores[k]), pred.maps[k]
    if pred.decisions is not None:
        used, t, p = pred.classes[k], float(pred.thresholds[k]), float(pred.pixel_thresholds[k])
        decision, mask = bool(pred.decisions[k]), pred.masks[k]
        vmax = 2 * p
        row = [str(path), used, f"{score:.4f}", f"{t:.4f}", "anomalous" if decision else "normal", int(mask.sum())]
    else:
        used, decision, mask, vmax = "", None, None, float(amap.max())
        row = [str(path), "", f"{score:.4f}", "", "", ""]
    target = out / "images" / name
    target.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(overlay(image, amap, 0.0, vmax)).save(f"{target}_overlay.png", **PNG)
    if mask is not None:
        Image.fromarray(mask.numpy().astype(np.uint8) * 255).save(f"{target}_mask.png", **PNG)
    label, mask_path = layout_truth(path)
    truth = None
    if mask_path is not None:
        try:
            truth = load_mask(mask_path, size=None)
        except DataError:
            truth = None
    item = {"title": f"{name} ({used or 'no class'}) score {score:.3g}", "score": score, "label": label,
            "decision": decision, "cls": used, "tiles": R.tiles(image, amap, 0.0, vmax, mask, truth)}
    return row, item


def _report(out: Path, rows, gallery, cal, title, problems):
    """report.html of a predict run: per-class counts, histograms with thresholds, the gallery."""
    by_class: dict[str, list] = {}
    for r in rows:
        by_class.setdefault(r[1] or "(uncalibrated)", []).append(r)
    table = (["class", "images", "decided anomalous", "image threshold", "mean score", "max score"],
             [[c, len(rs), sum(r[4] == "anomalous" for r in rs), rs[0][3] or "-",
               f"{np.mean([float(r[2]) for r in rs]):.4g}", f"{max(float(r[2]) for r in rs):.4g}"]
              for c, rs in sorted(by_class.items())])
    labels = [layout_truth(Path(r[0]))[0] for r in rows]
    charts = R.class_charts([float(r[2]) for r in rows], labels, [r[1] or "(uncalibrated)" for r in rows], cal)
    meta = [f"{len(rows)} images predicted, {time.strftime('%Y-%m-%d %H:%M')}; CSV: predictions.csv; overlays "
            f"and masks: images/."]
    notes = [f"skipped {p}: {why}" for p, why in problems]
    R.write_report(out / "report.html", title or "uniad-mini predict", meta, table, charts, gallery, cal,
                   notes=notes, total=len(rows))
