"""The exported uniad_mini model as a function of images, without PyTorch: numpy, Pillow's caller and a runtime.

This is the template of the `uniad_graph.py` that `uniad-mini export RUN --out DIR` copies into DIR beside
`predict.py` (the command, which imports it) and the graph. It implements none of the paper: it puts images on
the graph's input, runs the graph and brings its token errors back to each image's own pixels, as the package
does (uniad_mini/geometry.py, scoring.py); `uniad-mini predict --engine` runs exported graphs through it too.
A program of its own on the inspection line can use it directly:

    import sys; sys.path.insert(0, "DIR")
    import json, uniad_graph as G
    meta = json.load(open("DIR/uniad.json"))
    graph = G.open_graph(Path("DIR"), meta)                  # OpenVINO where DIR has its IR, else onnxruntime
    scores, errors = G.score_batch(graph, images, meta["image_size"], meta["resize"])   # images: [(3, H, W)]
    amap = G.map_to_image(errors[0], H, W, meta["image_size"], meta["resize"], meta["map_sigma"])

How an image reaches the graph: resized with the antialiased bilinear filter of `torch.nn.functional.interpolate(
..., antialias=True)` (PIL's bilinear filter, written out below as two weight matrices) onto the square by the
model's resize mode (squash, crop or pad); the anomaly map comes back from the token errors (bilinear,
align_corners), smoothed as the model smooths it (map_sigma, 0 by default). Against the package on the same
images (tests/app/test_export.py): the square input within 1e-6 (float32 rounding: the filter's weights are
computed as torch computes them), maps within 1e-4 of their largest value.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np


class UserError(Exception):
    """A mistake the user can fix: printed as one line, exit status 2."""


# ---- onto the model's square, and the map back (the package's geometry.py and scoring.py) ----------


def placement(w: int, h: int, size: int, resize: str):
    """(scaled width, scaled height, x, y): the image is resized to that size, its corner put at (x, y)."""
    if resize == "squash":
        return size, size, 0, 0
    k = size / (min(w, h) if resize == "crop" else max(w, h))
    sw, sh = max(1, round(w * k)), max(1, round(h * k))
    return sw, sh, (size - sw) // 2, (size - sh) // 2


@lru_cache(maxsize=64)  # images of one size share them: computed once, read-only
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
    w.setflags(write=False)
    return w


@lru_cache(maxsize=64)
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
    w.setflags(write=False)
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


def map_to_image(errors: np.ndarray, h: int, w: int, size: int, resize: str, sigma: float = 0.0) -> np.ndarray:
    """Token errors -> the anomaly map over the image's own h x w pixels (geometry.map_to_image): for squash
    the errors upsampled to h x w; for crop and pad upsampled to the square's side in image pixels, then the
    part over the image kept (crop: the ends the model never saw are 0). sigma: the model's map_sigma, in pixels
    of the square, scaled to the map's height (scoring.scores_and_maps)."""
    if resize == "squash":
        return smooth(upsample(errors, h, w), sigma * h / size)
    sw, sh, x, y = placement(w, h, size, resize)
    k = sw / w  # square pixels per image pixel
    side, left, top = round(size / k), round(-x / k), round(-y / k)
    amap = smooth(upsample(errors, side, side), sigma * side / size)
    return pad(amap, left, w - left - side, top, h - top - side)


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

def smooth(amap: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian smoothing of a map (H, W), sigma in pixels (scoring.smooth): the kernel cut at 4 sigma (and short
    of the map's side), the border reflected; rows, then columns."""
    if sigma <= 0:
        return amap
    r = min(int(4 * sigma + 0.5), min(amap.shape) - 1)
    x = np.arange(-r, r + 1, dtype=np.float32)
    g = np.exp(np.float32(-0.5) * (x / np.float32(sigma)) ** 2)
    g = (g / g.sum()).astype(np.float32)  # (2r + 1,)
    m = np.pad(amap.astype(np.float32), r, mode="reflect")  # (H + 2r, W + 2r)
    m = np.lib.stride_tricks.sliding_window_view(m, 2 * r + 1, axis=1) @ g  # along the rows: (H + 2r, W)
    return np.lib.stride_tricks.sliding_window_view(m, 2 * r + 1, axis=0) @ g  # along the columns: (H, W)


# ---- the runtimes: onnxruntime, or OpenVINO ---------------------------------------------------------


class OpenVINOGraph:
    """A compiled OpenVINO model behind onnxruntime's `run(output names, {"images": batch})`."""

    def __init__(self, path: Path, precision: str = "fp32", threads: int | None = None):
        import openvino as ov

        config = {"INFERENCE_PRECISION_HINT": {"fp32": "f32", "bf16": "bf16"}[precision],
                  **({"INFERENCE_NUM_THREADS": threads} if threads else {})}
        self.compiled = ov.Core().compile_model(str(path), "CPU", config)
        runs = self.compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()  # bf16 only where the CPU
        runs = {"f32": "fp32"}.get(runs, runs)  # has bf16 products: elsewhere OpenVINO runs f32, and says so here
        self.name = f"OpenVINO {ov.__version__.split('-')[0]} (CPU, {runs})"

    def run(self, names, feeds):
        result = self.compiled(feeds["images"])
        return [result[self.compiled.output(name)] for name in names]


def open_graph(folder: Path, meta: dict, runtime: str = "auto", threads: int | None = None):
    """The graph ready to run, with its runtime's name: OpenVINO where the folder holds its IR (export --format
    openvino) and openvino is installed (runtime "auto"), else onnxruntime. Imported here: the helpers above
    need neither."""
    has_ir, precision = "openvino" in meta, meta.get("precision", "fp32")
    if runtime == "auto":
        runtime = "openvino" if has_ir and importable("openvino") else "onnxruntime"
    if runtime == "openvino" and not has_ir:
        raise UserError("--runtime openvino needs the OpenVINO IR: export with --format openvino")
    package, path = {"openvino": ("openvino", folder / meta.get("openvino", "")),
                     "onnxruntime": ("onnxruntime", folder / meta["model"])}[runtime]
    if not importable(package):
        raise UserError(f"{package} is not installed: pip install {package} numpy pillow"
                        + (" (or --runtime onnxruntime)" if package == "openvino" else ""))
    if not path.is_file():
        raise UserError(f"no graph at {path}: run this script from the folder uniad-mini export wrote, whole")
    if runtime == "openvino":
        return OpenVINOGraph(path, precision, threads)
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    graph = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    graph.name = f"ONNX Runtime {ort.__version__} (CPU, fp32)"
    return graph


def importable(name: str) -> bool:
    try:
        __import__(name)
    except ImportError:
        return False
    return True
