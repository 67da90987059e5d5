"""Score images with an exported uniad_mini model, without PyTorch: numpy, Pillow and onnxruntime only.

This is the template of the `predict.py` that `uniad-mini export RUN --out DIR` copies into DIR, beside
`model.onnx` (the graph: images on the model's square -> scores, maps, token errors) and `uniad.json` (image
size, resize mode, thresholds). It implements none of the paper: it puts files on the graph's input and turns
its outputs into decisions, exactly as `uniad-mini predict` does (uniad_mini/app/predict.py, which imports this
file's `find_images`, `class_from_path` and `FIELDS`: both commands find, name and class the same images; its
`--engine onnx|openvino` scores with this file's `score_batch` and `map_to_image`).

    pip install numpy pillow onnxruntime
    python DIR/predict.py INPUT... --out OUT [--class NAME]

INPUT: image files, folders (walked recursively, hidden entries skipped) or quoted globs ('parts/**/*.png').
OUT receives `predictions.csv` (path, class, score, threshold, decision, defect_area_px, the columns of
`uniad-mini predict`, also printed on stdout) and, for a calibrated model, `images/NAME_mask.png` per image
(255 = defect; empty where the image is decided normal). An image's class, which picks its thresholds, is
`--class NAME`, else the nearest folder of its path named like a calibrated class, else none: the global
threshold. A file that cannot be read is one line on stderr and is skipped; the others are scored, and the
exit status is 2 at the end. Anything the user can fix is one line `predict.py: error: ...`, exit 2.

How an image reaches the graph, step by step as the package does it (uniad_mini/images.py, geometry.py):
read upright (EXIF), RGB in [0, 1] (16-bit files divided by 65535, transparency over black), shrunk to
`max_side` if larger, resized with the antialiased bilinear filter of `torch.nn.functional.interpolate(...,
antialias=True)` (PIL's bilinear filter, written out below as two weight matrices) onto the square by the
model's resize mode (squash, crop or pad), and the anomaly map brought back to the image's own pixels from
the token errors (bilinear, align_corners). Against the package on the same files (tests/app/test_export.py):
the square input within 1e-6 (measured 2e-7, float32 rounding: the filter's weights are computed as torch
computes them), scores within 1e-3 relative (measured 1e-6), the same decisions and masks.
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

import numpy as np
from PIL import Image, ImageOps

HERE = Path(__file__).resolve().parent  # model.onnx and uniad.json lie beside this file
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
FIELDS = ["path", "class", "score", "threshold", "decision", "defect_area_px"]
GLOBAL = "(global)"  # the class column of an image decided with the pooled threshold
BATCH = 8  # images per run of the graph


class UserError(Exception):
    """A mistake the user can fix: printed as one line, exit status 2."""


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


# ---- 3. onto the model's square, and the map back (the package's geometry.py) ---------------------


def placement(w: int, h: int, size: int, resize: str):
    """(scaled width, scaled height, x, y): the image is resized to that size, its corner put at (x, y)."""
    if resize == "squash":
        return size, size, 0, 0
    k = size / (min(w, h) if resize == "crop" else max(w, h))
    sw, sh = max(1, round(w * k)), max(1, round(h * k))
    return sw, sh, (size - sw) // 2, (size - sh) // 2


def antialiased_weights(n_in: int, n_out: int, first: int, stop: int) -> np.ndarray:
    """Rows first..stop-1 of the (n_out, n_in) weights of a bilinear resize with antialiasing (torch's
    antialias=True, PIL's BILINEAR): a triangle filter widened by the scale when shrinking, each row normalised
    to sum 1. Computed in float32 step by step as torch computes them (its rounding of the filter's centre
    shows at 1e-5 on long sides otherwise)."""
    f32 = np.float32
    scale = f32(n_in) / f32(n_out)
    support = scale if scale >= 1 else f32(1)  # the triangle's half-width, in input pixels
    inv = f32(1 / float(scale)) if scale >= 1 else f32(1)
    w = np.zeros((stop - first, n_in), np.float32)
    for i in range(first, stop):
        center = f32(float(scale) * (i + 0.5))
        lo = max(int(float(center - support) + 0.5), 0)
        hi = min(int(float(center + support) + 0.5), n_in)
        x = ((np.arange(lo, hi, dtype=np.float32) - center).astype(np.float64) + 0.5) * float(inv)
        x = np.abs(x.astype(np.float32)).astype(np.float64)
        taps = np.where(x < 1, 1 - x, 0).astype(np.float32)
        total = f32(0)
        for t in taps:  # summed in order, in float32
            total += t
        w[i - first, lo:hi] = taps / total
    return w


def align_corners_weights(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) weights of a bilinear resize with align_corners=True (the map's upsampling), float32."""
    f32 = np.float32
    ratio = f32(n_in - 1) / f32(n_out - 1) if n_out > 1 else f32(0)
    w = np.zeros((n_out, n_in), np.float32)
    for i in range(n_out):
        src = ratio * f32(i)
        i0 = min(int(np.floor(src)), n_in - 1)
        lam = min(max(src - f32(i0), f32(0)), f32(1))
        w[i, i0] += f32(1) - lam
        w[i, i0 + (1 if i0 < n_in - 1 else 0)] += lam
    return w


def pad(a: np.ndarray, left: int, right: int, top: int, bottom: int) -> np.ndarray:
    """Zero-pad the last two axes; a negative amount crops (as torch.nn.functional.pad)."""
    h, w = a.shape[-2:]
    a = a[..., max(-top, 0):h - max(-bottom, 0), max(-left, 0):w - max(-right, 0)]
    widths = [(0, 0)] * (a.ndim - 2) + [(max(top, 0), max(bottom, 0)), (max(left, 0), max(right, 0))]
    return np.pad(a, widths)


def to_square(image: np.ndarray, size: int, resize: str) -> np.ndarray:
    """(3, H, W) -> (3, size, size): the antialiased bilinear resize by `placement` (columns, then rows, as
    torch does), then pad or crop. Only the rows and columns that land on the square are computed."""
    H, W = image.shape[-2:]
    sw, sh, x, y = placement(W, H, size, resize)
    left, right, top, bottom = max(-x, 0), min(sw, size - x), max(-y, 0), min(sh, size - y)  # the part kept
    if (H, W) != (sh, sw):
        image = antialiased_weights(H, sh, top, bottom) @ (image @ antialiased_weights(W, sw, left, right).T)
    else:
        image = image[:, top:bottom, left:right]
    return pad(image, max(x, 0), max(size - sw - x, 0), max(y, 0), max(size - sh - y, 0))


def upsample(errors: np.ndarray, h: int, w: int) -> np.ndarray:
    """Token errors (gh, gw) -> an h x w map, bilinear with align_corners (scoring.anomaly_map)."""
    gh, gw = errors.shape
    return align_corners_weights(gh, h) @ (errors.astype(np.float32) @ align_corners_weights(gw, w).T)


def map_to_image(errors: np.ndarray, h: int, w: int, size: int, resize: str) -> np.ndarray:
    """Token errors -> the anomaly map over the image's own h x w pixels (geometry.map_to_image): for squash
    the errors upsampled to h x w; for crop and pad upsampled to the square's side in image pixels, then the
    part over the image kept (crop: the ends the model never saw are 0)."""
    if resize == "squash":
        return upsample(errors, h, w)
    sw, sh, x, y = placement(w, h, size, resize)
    k = sw / w  # square pixels per image pixel
    side, left, top = round(size / k), round(-x / k), round(-y / k)
    return pad(upsample(errors, side, side), left, w - left - side, top, h - top - side)


def check_batch(batch: np.ndarray, size: int) -> None:
    """The graph checks nothing: a float32 (B, 3, size, size) batch in [0, 1], or a ValueError."""
    if batch.dtype != np.float32 or batch.ndim != 4 or batch.shape[1:] != (3, size, size):
        raise ValueError(f"the graph takes float32 (B, 3, {size}, {size}), got {batch.dtype} {batch.shape}")
    if not np.isfinite(batch).all() or batch.min() < -1e-3 or batch.max() > 1 + 1e-3:
        raise ValueError("the graph takes RGB values in [0, 1]")


def score_batch(graph, images, size: int, resize: str):
    """(scores (B,), token errors (B, h, w)) of images [(3, H, W)], each put on the square, through the graph
    (anything with onnxruntime's `run(output names, {"images": batch})`; `uniad-mini predict --engine` too)."""
    squares = np.stack([to_square(image, size, resize) for image in images])
    check_batch(squares, size)
    return graph.run(["scores", "errors"], {"images": squares})


# ---- 4. thresholds: as uniad-mini predict picks them ----------------------------------------------


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


# ---- 5. the command ------------------------------------------------------------------------------


def session(model_path: Path):
    """An onnxruntime session of the graph (imported here: the helpers above need no onnxruntime)."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise UserError("onnxruntime is not installed: pip install onnxruntime numpy pillow") from None
    if not model_path.is_file():
        raise UserError(f"no graph at {model_path}: run this script from the folder uniad-mini export wrote")
    return ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])


def predict(inputs, out, cls=None, folder: Path = HERE) -> int:
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
    graph = session(folder / meta["model"])
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
    print(f"{count} images in {seconds:.1f} s ({count / seconds:.1f} images/s); wrote {out / 'predictions.csv'}"
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
    amap = map_to_image(errors, H, W, meta["image_size"], meta["resize"])
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
    args = p.parse_args(argv)
    try:
        predict(args.images, args.out, args.cls)
    except UserError as e:
        print(f"predict.py: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\npredict.py: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
