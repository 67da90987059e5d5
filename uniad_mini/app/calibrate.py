"""Calibration on the command line (the threshold study of docs/results.md is these two commands):

    uniad-mini train DATA_ROOT --out RUN [--holdout 0.2] [--fpr 0.01]   # train less a held-out share, calibrate
    uniad-mini calibrate RUN DATA_ROOT [--fpr F]                        # again; prints what each threshold catches

`train` (by default; `--holdout 0` to train on every image and decide nothing) trains one unified model on the
normal training images less a held-out share per class (`calibration.held_out`, seeded with the model seed) and
sets per-class and global thresholds on the held-out images. A class with a single training image holds none
out: it has no threshold of its own and its images are decided with the global one (`calibration.decide`);
a class with fewer held-out images than the false-alarm rate resolves gets the warning of `calibration.calibrate`; `calibrate` finds the same images again (or takes `--normal FOLDER`) and, where DATA_ROOT has labelled
test images, prints what each threshold catches there (measured after the thresholds are set; the test split
never sets one).
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

from .. import calibration as C
from ..data import MVTecAD
from ..errors import DataError
from ..errors import OptionError
from ..evaluation import markdown_table
from ..model import UniAD

CHECKPOINT = "model.pt"


def _relative(train, i: int) -> str:
    path = Path(train.samples[i].path)  # CLASS/train/good/NAME under an MVTec root
    root = getattr(train, "root", None)
    return path.relative_to(root).as_posix() if root and path.is_relative_to(root) else path.as_posix()


def held_out_images(model: UniAD, data_root, classes=None) -> MVTecAD | torch.utils.data.Subset:
    """The normal images a run held out in training, found again in DATA_ROOT (the same split, checked)."""
    record = model.train_state.get("held_out")
    if not record:
        raise OptionError("this run held no images out of training (train --holdout SHARE); name a folder of "
                         "normal images it did not train on with --normal FOLDER")
    return held_out_split(model, model.open(data_root, "train", classes), where=f" in {data_root}")[1]


def normal_folder(model: UniAD, folder, cls: str | None):
    """Every image under a folder of normal images (recursively), as one class (`cls`, default the folder name)."""
    from .predict import find_images  # the one file walk of predict and calibrate

    files, bad = find_images([str(folder)])
    if bad:
        raise DataError(f"{bad[0][0]}: {bad[0][1]}")
    name = cls or Path(folder).resolve().name
    return _Files([f for f, _ in files], name, model.config.image_size, model.config.resize)  # (path, out name)


class _Files(torch.utils.data.Dataset):
    """Image files as normal items of one class (what calibration and feature caching read)."""

    def __init__(self, files, cls, size, resize):
        from ..data import Sample

        self.samples = [Sample(str(f), None, cls, "good", 0) for f in files]
        self.size, self.resize = size, resize  # the model's square and geometry (geometry.py)

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, i):
        from ..data import load_image

        s = self.samples[i]
        image = load_image(s.path, self.size, resize=self.resize)
        return {"image": image, "mask": torch.zeros(image.shape[1:]), "label": 0, "cls": s.cls, "defect": "good",
                "path": s.path}


def check_and_measure(model: UniAD, data_root, classes=None, progress: bool = False):
    """{"per_class": measure, "global": measure} on DATA_ROOT's test split, or None where it has none."""
    try:
        test = model.open(data_root, "test", classes)
    except DataError:  # no labelled test images there
        return None
    return measured(model, model.cache(test, progress=progress, desc="test"))


def measured(model: UniAD, cache) -> dict:
    """{"per_class": measure or None, "global": measure} of a calibrated model on a labelled feature cache."""
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


# --------------------------------------------------------------------------------------------------
# The CLI: train --holdout, uniad-mini calibrate


def add_options(p, share: bool = True):
    """--fpr and --pixel-fpr (and train's --holdout) on a subcommand's parser."""
    if share:
        p.add_argument("--holdout", dest="hold_out", type=float, default=None, metavar="SHARE",
                       help="hold out this share of each class's normal training images (seeded by --seed) and set "
                       f"the decision thresholds on them after training (default {C.DEFAULT_SHARE}; a resumed run "
                       "keeps its own; 0: train on every image, no thresholds)")
    p.add_argument("--fpr", type=float, default=C.DEFAULT_FPR, help="target false-alarm rate of the image decision on "
                   f"normal images (default {C.DEFAULT_FPR})")
    p.add_argument("--pixel-fpr", type=float, default=C.DEFAULT_PIXEL_FPR,
                   help=f"the same for the pixels of the defect mask (default {C.DEFAULT_PIXEL_FPR})")


def check_rates(args):
    for name in ("fpr", "pixel_fpr"):
        if not 0 <= getattr(args, name) < 1:
            raise OptionError(f"--{name.replace('_', '-')} must be in [0, 1), got {getattr(args, name)}")


def held_out_split(model: UniAD, train, share: float | None = 0.0, where: str = ""):
    """(images to train on, held-out images or None) of `train`: the one split of a run (calibration.split,
    seeded with the model seed), recorded in model.train_state["held_out"] (share, seed, paths) when it is made,
    and made again from that record for a resumed run or for `calibrate` (the same images, checked).
    share None: `C.DEFAULT_SHARE` for a run that has not started, the run's own for a resumed one."""
    record = model.train_state.get("held_out")
    if share is None:
        share = 0.0 if record or model.train_state["epoch"] > 0 else C.DEFAULT_SHARE
    if record and share and share != record["share"]:
        raise OptionError(f"this run holds out {record['share']} of the training images; resume it with "
                         f"--holdout {record['share']} or without --holdout")
    if not record and not share:
        return train, None
    share, seed = (record["share"], record["seed"]) if record else (share, model.config.seed)
    kept, held = C.split(train, share, seed)
    paths = [_relative(train, i) for i in held.indices]
    if record and paths != record["paths"]:
        raise DataError(f"the training images{where} are not those this run held out (files were added, removed or "
                        f"renamed); calibrate on a folder of normal images with --normal FOLDER")
    model.train_state["held_out"] = {"share": share, "seed": seed, "paths": paths}
    kept.problems = list(getattr(train, "problems", []))  # the indexing's problems go with what is read first
    return kept, held


def calibrate_after_training(model: UniAD, held, args, checkpoint) -> None:
    """Set the thresholds on the held-out images, save them in the checkpoint, print the table."""
    share = model.train_state["held_out"]["share"]
    model.calibrate(held, args.fpr, args.pixel_fpr, progress=not args.quiet,
                    source=f"the held-out {100 * share:g}% of each class's normal training images (seed "
                    f"{model.train_state['held_out']['seed']})")
    model.save(checkpoint)
    print(report(model, None)[0])


def cmd_calibrate(args):
    """uniad-mini calibrate RUN [DATA_ROOT] [--normal FOLDER [--class NAME]] [--fpr F] [--pixel-fpr F]."""
    from . import runs

    check_rates(args)
    run = Path(args.run)
    model = UniAD.load(run / CHECKPOINT, args.device, **args.options)
    if args.normal:
        normal = normal_folder(model, args.normal, args.cls)
        source = f"the normal images in {args.normal} (class {normal.samples[0].cls})"
    elif args.data_root is None:
        raise OptionError("name DATA_ROOT (to find the images the run held out) or a folder of normal images with --normal")
    else:
        normal = held_out_images(model, args.data_root)
        record = model.train_state["held_out"]
        source = (f"the held-out {100 * record['share']:g}% of each class's normal training images (seed "
                  f"{record['seed']})")
    runs.writable_folder(run)  # the checkpoint is rewritten there: fail now, not after the work
    model.calibrate(normal, args.fpr, args.pixel_fpr, source, progress=not args.quiet)
    model.save(run / CHECKPOINT)
    print(report(model, args.data_root, progress=not args.quiet)[0])
    print(f"thresholds saved in {run / CHECKPOINT}", file=sys.stderr)


def add_parser(sub, common):
    c = sub.add_parser("calibrate", parents=common, help="set decision thresholds from normal images (--fpr)",
                       description="Set per-class image and pixel thresholds at a target false-alarm rate on normal "
                       "images RUN did not train on: those `train --holdout` held out (found again in DATA_ROOT), or "
                       "a folder of normal images (--normal). Where DATA_ROOT has labelled test images, prints what "
                       "the thresholds catch there (they are never set on them). Saved in RUN/model.pt.")
    c.add_argument("run")
    c.add_argument("data_root", nargs="?", default=None, help="the data the run trained on")
    c.add_argument("--normal", default=None, metavar="FOLDER", help="calibrate on every image under FOLDER instead")
    c.add_argument("--class", dest="cls", default=None, help="the class of the --normal images (default: the folder name)")
    add_options(c, share=False)
    c.set_defaults(func=cmd_calibrate)
