"""Calibration on the command line: `train --hold-out SHARE`, `uniad-mini calibrate RUN DATA_ROOT`, and the
threshold study of docs/results.md:

    python -m uniad_mini.commands.calibrate DATA_ROOT --out RUN [--hold-out 0.2] [--fpr 0.01] [--epochs N]

trains one unified model on the normal training images less a held-out share per class (`calibration.held_out`,
seeded with the model seed), sets per-class and global thresholds on the held-out images, and prints what
each catches on the test split (measured after the thresholds are set; the test split never sets one).
The run folder then serves `uniad-mini predict` and `uniad-mini calibrate` like any trained run.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from .. import calibration as C
from ..data import DataError, MVTecAD, find_classes
from ..evaluation import markdown_table
from ..model import UniAD

CHECKPOINT = "model.pt"


def hold_out(model: UniAD, train: MVTecAD, share: float):
    """(training part, held-out part) of `train`, recorded in model.train_state["held_out"] (share, seed, paths)."""
    kept, held = C.split(train, share, model.config.seed)
    model.train_state["held_out"] = {"share": share, "seed": model.config.seed,
                                     "paths": [_relative(train, i) for i in held.indices]}
    return kept, held


def _relative(train: MVTecAD, i: int) -> str:
    return Path(train.samples[i].path).relative_to(train.root).as_posix()  # CLASS/train/good/NAME


def held_out_images(model: UniAD, data_root, classes=None) -> MVTecAD | torch.utils.data.Subset:
    """The normal images a run held out in training, found again in DATA_ROOT (the same split, checked)."""
    record = model.train_state.get("held_out")
    if not record:
        raise ValueError("this run held no images out of training (train --hold-out SHARE); name a folder of "
                         "normal images it did not train on with --normal FOLDER")
    train = MVTecAD(data_root, "train", classes=classes, image_size=model.config.image_size)
    _, held = C.split(train, record["share"], record["seed"])
    if [_relative(train, i) for i in held.indices] != record["paths"]:
        raise ValueError(f"the training images in {data_root} are not those this run held out (files were added, "
                         f"removed or renamed); calibrate on a folder of normal images with --normal FOLDER")
    return held


def normal_folder(model: UniAD, folder, cls: str | None):
    """Every image under a folder of normal images (recursively), as one class (`cls`, default the folder name)."""
    from .predict import find_images  # the one file walk of predict and calibrate

    files, bad = find_images([str(folder)])
    if bad:
        raise DataError(f"{bad[0][0]}: {bad[0][1]}")
    name = cls or Path(folder).resolve().name
    return _Files(files, name, model.config.image_size)


class _Files(torch.utils.data.Dataset):
    """Image files as normal items of one class (what calibration and feature caching read)."""

    def __init__(self, files, cls, size):
        from ..data import Sample

        self.samples = [Sample(str(f), None, cls, "good", 0) for f in files]
        self.size = size

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, i):
        from ..data import load_image

        s = self.samples[i]
        image = load_image(s.path, self.size)
        return {"image": image, "mask": torch.zeros(image.shape[1:]), "label": 0, "cls": s.cls, "defect": "good",
                "path": s.path}


def check_and_measure(model: UniAD, data_root, classes=None, progress: bool = False):
    """{"per_class": measure, "global": measure} on DATA_ROOT's test split, or None where it has none."""
    try:
        test = MVTecAD(data_root, "test", classes=classes, image_size=model.config.image_size)
    except DataError:
        return None
    cache = model.cache(test, progress=progress, desc="test")
    scores, maps = model.score_features(cache.features)
    args = (scores, maps, cache.labels, cache.masks, cache.classes)
    known = set(model.calibration["classes"])
    per_class = C.measure(model.calibration, *args) if set(cache.classes) <= known else None
    return {"per_class": per_class, "global": C.measure(model.calibration, *args, use_global=True)}


def pct(x: float) -> str:
    return "-" if x != x else f"{100 * x:.1f}"


def table(cal: dict, checked: dict | None) -> str:
    """Per class: the thresholds, the count they rest on and, where labelled test images exist, what they catch."""
    header = ["class", "held-out normals", "image threshold", "false alarms there (95% bound)", "pixel threshold"]
    if checked:
        header += ["test: false alarms / normals", "FPR", "recall", "global thr.: FPR", "global thr.: recall",
                   "pixel FPR", "pixel recall"]
    rows = []
    for c, e in [*cal["classes"].items(), (C.GLOBAL, cal["global"])]:
        row = [c, e["images"], f"{e['image']:.4g}", f"{e['false_alarms']} ({100 * e['fpr_upper']:.0f}%)", f"{e['pixel']:.4g}"]
        if checked:
            key = "all" if c == C.GLOBAL else c
            m, g = (checked["per_class"] or {}).get(key), checked["global"].get(key)
            if c == C.GLOBAL:
                m = None
            src = m or g
            row += [f"{src['false_alarms']} / {src['normal']}" if m else "-", pct(m["fpr"]) if m else "-",
                    pct(m["recall"]) if m else "-", pct(g["fpr"]) if g else "-", pct(g["recall"]) if g else "-",
                    pct(src["pixel_fpr"]) if src else "-", pct(src["pixel_recall"]) if src else "-"]
        rows.append(row)
    return markdown_table(header, rows)


def report(model: UniAD, data_root, classes=None, progress: bool = False) -> tuple[str, dict | None]:
    """The printed table (and warnings) of a calibrated model, checked on DATA_ROOT's test split."""
    checked = check_and_measure(model, data_root, classes, progress) if data_root is not None else None
    cal = model.calibration
    lines = [f"thresholds at {100 * cal['fpr']:g}% false alarms (pixels {100 * cal['pixel_fpr']:g}%) on "
             f"{cal['source']}:", "", table(cal, checked)]
    if checked:
        lines += ["", "test columns: measured on the labelled test split after the thresholds were set (never used "
                  "to set them)"]
    lines += [f"warning: {w}" for w in cal["warnings"]]
    return "\n".join(lines), checked


def main(argv=None) -> int:
    """The threshold study: train with a held-out share, calibrate, measure (docs/results.md)."""
    p = argparse.ArgumentParser(prog="python -m uniad_mini.commands.calibrate", description=__doc__.split("\n\n")[1])
    p.add_argument("data_root")
    p.add_argument("--out", required=True)
    p.add_argument("--hold-out", type=float, default=C.DEFAULT_SHARE)
    p.add_argument("--fpr", type=float, default=C.DEFAULT_FPR)
    p.add_argument("--pixel-fpr", type=float, default=C.DEFAULT_PIXEL_FPR)
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    find_classes(args.data_root)
    model = UniAD(seed=args.seed)
    train = MVTecAD(args.data_root, "train", image_size=model.config.image_size)
    kept, held = hold_out(model, train, args.hold_out)
    start = time.perf_counter()
    model.fit(kept, epochs=args.epochs, checkpoint=out / CHECKPOINT)
    seconds = time.perf_counter() - start
    model.calibrate(held, args.fpr, args.pixel_fpr, source=f"the held-out {100 * args.hold_out:g}% of each class's "
                    f"train/good (seed {args.seed})")
    model.save(out / CHECKPOINT)
    text, checked = report(model, args.data_root)
    print(f"trained {model.train_state['epoch']} epochs on {len(kept)} images ({len(held)} held out) in "
          f"{seconds:.0f} s, torch threads {torch.get_num_threads()}\n")
    print(text)
    (out / "thresholds.json").write_text(json.dumps({"calibration": model.calibration, "test": checked,
                                                     "train_seconds": seconds}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
