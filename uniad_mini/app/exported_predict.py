"""Score images with an exported uniad_mini model, without PyTorch: numpy, Pillow and a graph runtime only.

This is the template of the `predict.py` that `uniad-mini export RUN --out DIR` copies into DIR, beside
`uniad_graph.py` (the graph as a function of images: the square, the runtime, the map back; the template is
app/exported_graph.py), `model.onnx` (the graph: images on the model's square -> scores, maps, token errors;
with --format openvino also model.xml/.bin) and `uniad.json` (image size, resize mode, thresholds). It
implements none of the paper: it finds and reads files, and turns the graph's outputs into decisions exactly
as `uniad-mini predict` does (uniad_mini/app/predict.py, which imports this file's `find_images`,
`class_from_path` and `FIELDS`: both commands find, name and class the same images).

    pip install numpy pillow onnxruntime      # or openvino, for a folder exported with --format openvino
    python DIR/predict.py INPUT... --out OUT [--class NAME] [--runtime auto|onnxruntime|openvino]

INPUT: image files, folders (walked recursively, hidden entries skipped) or quoted globs ('parts/**/*.png').
OUT receives `predictions.csv` (path, class, score, threshold, decision, defect_area_px, the columns of
`uniad-mini predict`, also printed on stdout) and, for a calibrated model, `images/NAME_mask.png` per image
(255 = defect; empty where the image is decided normal). An image's class, which picks its thresholds, is
`--class NAME`, else the nearest folder of its path named like a calibrated class, else none: the global
threshold. A file that cannot be read is one line on stderr and is skipped; the others are scored, and the
exit status is 2 at the end. Anything the user can fix is one line `predict.py: error: ...`, exit 2. The
graph runs in OpenVINO where DIR holds its IR and openvino is installed, else in onnxruntime (`--runtime`).

How a file is read, as the package reads it (uniad_mini/images.py): upright (EXIF), RGB in [0, 1] (16-bit files
divided by 65535, transparency over black), shrunk to `max_side` if larger; uniad_graph.py takes it from there.
Against `uniad-mini predict` on the same files (tests/app/test_export.py): scores within 1e-3 relative
(measured 1e-6), the same decisions and masks.
"""
from __future__ import annotations

import argparse
import csv
import glob
import json
import os
import sys
import time
from pathlib import Path

# Run as the command, numpy's small products (the resizes) stay on one thread, so that the graph's runtime has the
# cores: idle OpenBLAS threads spin, and with them the whole command ran 20% slower on 2 cores.
if __name__ == "__main__":
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    os.environ.setdefault("MKL_NUM_THREADS", "1")
import numpy as np  # noqa: E402 (after the thread counts)
from PIL import Image, ImageOps  # noqa: E402

HERE = Path(__file__).resolve().parent  # uniad_graph.py, the graph and uniad.json lie beside this file
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
FIELDS = ["path", "class", "score", "threshold", "decision", "defect_area_px"]
GLOBAL = "(global)"  # the class column of an image decided with the pooled threshold
BATCH = 8  # images per run of the graph

try:  # in the package: uniad_mini/app/exported_graph.py
    from .exported_graph import UserError, map_to_image, open_graph, score_batch
except ImportError:  # in an exported folder, where it is uniad_graph.py beside this file
    sys.path.insert(0, str(HERE))
    try:
        from uniad_graph import UserError, map_to_image, open_graph, score_batch
    except ImportError:
        print(f"predict.py: error: no uniad_graph.py beside {HERE / 'predict.py'}: copy the whole folder that "
              f"uniad-mini export wrote", file=sys.stderr)
        sys.exit(2)


class Unreadable(Exception):
    """An input file that cannot be scored: one line on stderr, skipped."""


# ---- 1. finding the images: files, folders (recursive), globs -------------------------------------


def is_image(p: Path) -> bool:
    return p.suffix.lower() in IMAGE_EXTENSIONS


def find_images(inputs):
    """([(image path, output name)], [(input, why it gives no image)]) from files, folders and globs."""
    found, problems, seen = [], [], set()

    def add(path, name):
        key = os.path.realpath(path)
        if key not in seen:
            seen.add(key)
            found.append((path, name))

    def walk(p, item, prefix):
        files = []
        for folder, dirs, names in os.walk(p):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            files += [Path(folder) / n for n in sorted(names) if not n.startswith(".") and is_image(Path(n))]
        if not files:
            problems.append((item, f"the folder holds no images ({', '.join(IMAGE_EXTENSIONS)}, searched recursively)"))
        for f in files:  # output names mirror the folder: PREFIX/sub/path/stem
            add(f, (prefix / f.relative_to(p).with_suffix("")).as_posix())

    for item in inputs:
        p = Path(item)
        if p.is_dir():
            walk(p, item, Path(p.resolve().name))
        elif p.exists() or p.is_symlink():
            if is_image(p):
                add(p, p.stem)
            else:
                problems.append((item, f"not an image (allowed extensions: {', '.join(IMAGE_EXTENSIONS)})"))
        elif glob.has_magic(item):
            matches = [Path(m) for m in sorted(glob.glob(item, recursive=True))]
            matches = [m for m in matches if m.is_dir() or is_image(m)]
            if not matches:
                problems.append((item, "no image file or folder matches this pattern"))
            fixed = [part for part in Path(item).parts[:-1]]
            fixed = fixed[:next((i for i, part in enumerate(fixed) if glob.has_magic(part)), len(fixed))]
            base = Path(*fixed) if fixed else Path(".")  # the pattern's leading folders without wildcards
            for m in matches:
                name = m.relative_to(base) if m.is_relative_to(base) else Path(m.name)
                walk(m, str(m), name) if m.is_dir() else add(m, name.with_suffix("").as_posix())
        else:
            problems.append((item, "no such file or folder"))
    return found, problems


def class_from_path(path, known):
    """The nearest folder of `path` named like a calibrated class, or None."""
    for part in reversed(Path(path).resolve().parent.parts):
        if part in known:
            return part
    return None


# ---- 2. reading one image: float RGB (3, H, W) in [0, 1] ------------------------------------------


def read_image(path, max_side: int, min_side: int) -> np.ndarray:
    """An image file as float32 (3, H, W) RGB in [0, 1], upright, shrunk to max_side (aspect kept) if larger."""
    try:
        im = Image.open(path)
        im.draft(None, (max_side, max_side))  # a JPEG is decoded at the smallest scale that covers max_side
        im.load()
        im = ImageOps.exif_transpose(im)
    except FileNotFoundError:
        raise Unreadable(f"image file not found: {path}") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise Unreadable(f"cannot read image {path} ({type(e).__name__}: {e}); it is not a readable "
                         f"{'/'.join(x[1:] for x in IMAGE_EXTENSIONS)} file -- re-export it or remove it") from None
    if min(im.size) < min_side:
        raise Unreadable(f"image {path} is {im.size[0]}x{im.size[1]} pixels; images need at least {min_side} a side")
    if max(im.size) > max_side:
        im.thumbnail((max_side, max_side), Image.BILINEAR)
    if im.mode in ("I", "F") or im.mode.startswith("I;16"):  # 16/32-bit or float gray: scaled, repeated x3
        a = np.asarray(im, dtype=np.float32)
        top = float(a.max(initial=0.0))
        scale = 65535.0 if im.mode.startswith("I;16") or top > 255 else 1.0 if im.mode == "F" and top <= 1 else 255.0
        return np.repeat(np.clip(a / scale, 0.0, 1.0)[None], 3, axis=0)
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")  # transparency composited over black
        im = Image.alpha_composite(Image.new("RGBA", rgba.size, (0, 0, 0, 255)), rgba)
    a = np.asarray(im.convert("RGB"), dtype=np.float32).transpose(2, 0, 1) / np.float32(255)
    return np.ascontiguousarray(a)


# ---- 3. thresholds: as uniad-mini predict picks them ----------------------------------------------


def thresholds_for(calibration, cls):
    """(the class name used, {"image": t, "pixel": p}): a calibrated class, or the global entry for None."""
    if cls is None:
        return GLOBAL, calibration["global"]
    if cls not in calibration["classes"]:
        raise UserError(f"unknown class {cls!r}: this model was calibrated for {sorted(calibration['classes'])}; "
                        f"pass one of them, or no class for the global threshold")
    return cls, calibration["classes"][cls]


def unique(name: str, used: set) -> str:
    out, k = name, 2
    while out in used:
        out, k = f"{name}_{k}", k + 1
    used.add(out)
    return out


# ---- 4. the command ------------------------------------------------------------------------------


def predict(inputs, out, cls=None, folder: Path = HERE, runtime: str = "auto") -> int:
    """Score every image of `inputs` into `out`; returns the count of images scored. Raises UserError at the
    start (nothing to do, a bad --class) or at the end (some inputs skipped, listed on stderr)."""
    if not (folder / "uniad.json").is_file():
        raise UserError(f"no uniad.json in {folder}: run the predict.py of a folder uniad-mini export wrote")
    meta = json.loads((folder / "uniad.json").read_text())
    cal, S, resize = meta["calibration"], meta["image_size"], meta["resize"]
    if cls is not None:
        if cal is None:
            raise UserError("--class needs per-class thresholds, but this model is not calibrated (drop --class)")
        thresholds_for(cal, cls)
    files, problems = find_images(inputs)
    for item, why in problems:
        print(f"predict.py: skipped {item}: {why}", file=sys.stderr)
    if not files:
        raise UserError(f"no images to predict in {' '.join(inputs)}; pass image files, folders or globs "
                        f"({', '.join(IMAGE_EXTENSIONS)})")
    graph = open_graph(folder, meta, runtime)
    out = Path(out)
    try:
        (out / "images").mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"--out {out} is not writable ({e.strerror}); pick a folder you can write to") from None
    known = set(cal["classes"]) if cal else set()
    used, start, count = set(), time.perf_counter(), 0
    stdout = csv.writer(sys.stdout)
    stdout.writerow(FIELDS)
    tmp = out / "predictions.csv.tmp"
    try:
        with open(tmp, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(FIELDS)
            batch = []  # (path, output name, image (3, H, W))

            def flush():
                if not batch:
                    return
                scores, errors = score_batch(graph, [image for _, _, image in batch], S, resize)
                for k, (path, name, image) in enumerate(batch):
                    row = decide(path, unique(name, used), image, scores[k], errors[k], cal, cls, known, meta, out)
                    writer.writerow(row), stdout.writerow(row), f.flush()
                batch.clear()

            for path, name in files:
                try:
                    batch.append((path, name, read_image(path, meta["max_side"], meta["min_side"])))
                except Unreadable as e:
                    print(f"predict.py: skipped {path}: {e}", file=sys.stderr)
                    problems.append((str(path), str(e)))
                    continue
                count += 1
                if len(batch) == BATCH:
                    flush()
            flush()
    finally:
        if tmp.exists():
            os.replace(tmp, out / "predictions.csv")
    seconds = time.perf_counter() - start
    print(f"{count} images in {seconds:.1f} s ({count / seconds:.1f} images/s, {graph.name}); "
          f"wrote {out / 'predictions.csv'}"
          + (" and images/ (masks)" if cal else ""), file=sys.stderr)
    if problems:
        raise UserError(f"{len(problems)} input(s) could not be read and were skipped (listed above); the other "
                        f"{count} image(s) are in {out / 'predictions.csv'}")
    return count


def decide(path, name, image, score, errors, cal, cls, known, meta, out):
    """One image's CSV row; writes its defect mask PNG when the model is calibrated."""
    score = float(score)
    if cal is None:
        return [str(path), "", f"{score:.4f}", "", "", ""]
    used, entry = thresholds_for(cal, cls or class_from_path(path, known))
    t, p = np.float32(entry["image"]), np.float32(entry["pixel"])
    anomalous = bool(np.float32(score) > t)
    H, W = image.shape[-2:]
    amap = map_to_image(errors, H, W, meta["image_size"], meta["resize"], meta["map_sigma"])
    mask = (amap > p) & anomalous
    target = out / "images" / f"{name}_mask.png"
    target.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(mask.astype(np.uint8) * 255).save(target)
    return [str(path), used, f"{score:.4f}", f"{float(t):.4f}", "anomalous" if anomalous else "normal", int(mask.sum())]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="predict.py", description="Score images with the exported uniad_mini model "
                                "beside this file: predictions.csv and a defect mask PNG per image in --out.")
    p.add_argument("images", nargs="+", metavar="INPUT", help="an image file, a folder or a quoted glob")
    p.add_argument("--out", required=True, help="the folder for predictions.csv and images/")
    p.add_argument("--class", dest="cls", default=None, help="the class of every image, for its thresholds "
                   "(default: the nearest folder named like a calibrated class, else the global threshold)")
    p.add_argument("--runtime", choices=("auto", "onnxruntime", "openvino"), default="auto", help="what runs the "
                   "graph (default: OpenVINO where this folder holds its IR and openvino is installed, else onnxruntime)")
    args = p.parse_args(argv)
    try:
        predict(args.images, args.out, args.cls, runtime=args.runtime)
    except UserError as e:
        print(f"predict.py: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\npredict.py: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
