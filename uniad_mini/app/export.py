"""`uniad-mini export RUN --out DIR [--format onnx|openvino]`: a trained run as a folder that scores images without
PyTorch or uniad_mini installed. None of the paper is implemented here: the paper's path is `UniAD.forward`,
and this module writes that path (in eval mode, on a square input) as an ONNX graph.

DIR (a new folder) holds

    model.onnx   the graph: `images` (B, 3, S, S) float32 RGB in [0, 1], already on the model's square (S =
                 config.image_size) -> `scores` (B,), `maps` (B, S, S) and `errors` (B, h, w), the per-token
                 reconstruction error the maps are upsampled from (bilinear, align_corners), so that a map can be
                 brought to any image's own size exactly as `UniAD.forward` does. The batch axis is dynamic; the
                 graph normalises its input for the backbone itself and checks nothing (predict.py checks).
    uniad.json   format, image size, resize mode, the input note, score pool and map sigma, the calibrated
                 class names and thresholds (per class and global, as `calibration.thresholds_for` picks them;
                 null when the run is not calibrated), the run's saved config, and this export's parity check
    predict.py   a standalone script (numpy, Pillow, onnxruntime; the template is app/exported_predict.py):
                 `python DIR/predict.py INPUT... --out OUT [--class NAME]`, the CSV columns of `uniad-mini predict`
    model.xml, model.bin   with --format openvino: the same graph as OpenVINO IR, fp32 weights

The graph is a small wrapper module (`graph.Graph`, in the core: the speed benchmark exports it too) built from
the model's parts: the backbone (BatchNorm folded into the convolutions), `feature_stack`, the standardisation with
the training statistics, the transformer on the plain attention path (backend "torch", fast=False: the neighbor
mask is a constant and attention plain matmuls) and `scoring.scores_and_maps`, traced by
`torch.onnx.export(dynamo=False)`. Smoothed maps (map_sigma > 0) are not
exported yet: such a run is refused in one line.

Parity, checked on every export: the graph runs (onnxruntime, and OpenVINO's CPU plugin in fp32 for openvino) on a
fixed batch of random square images and is compared with the loaded model's own `score_images` (its fast path
included); scores must agree within `SCORE_RTOL` relative and maps within `MAP_RTOL` of the map's largest value,
else the export is refused. The measured differences are stored in uniad.json ("check"). tests/app/test_export.py
checks the same on synthetic images, and predict.py against `uniad-mini predict` (scores, decisions, masks).

Nothing is left half-written: the folder is filled under a temporary sibling name and renamed at the end; an
existing --out is refused before any work.

`engine(model, "onnx" | "openvino")` is what `uniad-mini predict --engine` scores with: this export, parity check
included, into a temporary folder, its graph run by the exported predict.py's own functions (`score_batch`,
`map_to_image`); app/predict.py reads the images and writes the results for every engine alike.
"""
from __future__ import annotations

import contextlib
import importlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from .. import __version__
from ..config import saved
from ..data import IMAGE_EXTENSIONS, MIN_SIDE
from ..errors import OptionError
from ..graph import Graph, write_onnx
from . import exported_predict as P
from .predict import MAX_SIDE

FORMAT = 1  # the version of uniad.json's layout
TEMPLATE = Path(__file__).with_name("exported_predict.py")
# what each --format needs, and the extra of setup.py that installs it
PACKAGES = {"onnx": ("onnx", "onnxruntime"), "openvino": ("onnx", "onnxruntime", "openvino")}
EXTRAS = {"onnx": "export", "openvino": "openvino"}
SCORE_RTOL = 1e-3  # the export's parity check: scores relative,
MAP_RTOL = 1e-4  # maps relative to the largest map value (fp32 rounding over the backbone and transformer)
CHECK_IMAGES = 2  # random images in the parity check


def check_format(fmt: str, option: str = "--format") -> None:
    """An OptionError of one line when --format (or predict's --engine) is unknown or its packages are not installed."""
    if fmt not in PACKAGES:
        raise OptionError(f"unknown {option} {fmt!r}; choose one of {sorted(PACKAGES)}")
    missing = []
    for name in PACKAGES[fmt]:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise OptionError(f"{option} {fmt} needs {', '.join(missing)}, not installed here: "
                          f"pip install -e \".[{EXTRAS[fmt]}]\" (or pip install {' '.join(missing)})")


def check_target(out) -> Path:
    """--out must be a new folder: an OptionError of one line, before any work, if anything is there."""
    out = Path(out)
    if out.exists() or out.is_symlink():
        raise OptionError(f"--out {out} already exists; export writes a new folder: pick another --out "
                          f"(nothing was written)")
    return out


def check_exportable(model) -> None:
    cfg = model.config
    if cfg.map_sigma > 0:
        raise OptionError(f"this run smooths its maps (map_sigma={cfg.map_sigma:g}): smoothing is not exported "
                          f"yet; export a run scored with map_sigma=0")


def export(model, out_dir, fmt: str = "onnx") -> dict:
    """Write the exported folder `out_dir` (new) for `model`; returns what uniad.json holds."""
    check_format(fmt)
    out = check_target(out_dir)
    check_exportable(model)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.export-{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
        graph = Graph(model).cpu()
        write_onnx(graph, tmp / "model.onnx")
        check = parity(model, tmp / "model.onnx")
        if fmt == "openvino":
            check["openvino"] = write_openvino(model, tmp / "model.onnx", tmp / "model.xml")
        meta = description(model, fmt, check)
        (tmp / "uniad.json").write_text(json.dumps(meta, indent=2) + "\n")
        shutil.copyfile(TEMPLATE, tmp / "predict.py")
        check_target(out)  # still new: then the rename puts the whole folder there at once
        os.rename(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return meta


def parity_batch(model) -> torch.Tensor:
    """The parity check's batch: CHECK_IMAGES random square images in [0, 1], from a fixed seed."""
    S = model.config.image_size
    return torch.rand(CHECK_IMAGES, 3, S, S, generator=torch.Generator().manual_seed(1234))


def compare(scores, maps, ref_scores, ref_maps, what: str) -> dict:
    """{"max_score_rel_diff", "max_map_abs_diff", "map_scale"} of outputs against the model's; refused if too far."""
    ref_scores, ref_maps = ref_scores.numpy(), ref_maps.numpy()
    score_rel = float(np.max(np.abs(scores - ref_scores) / np.maximum(np.abs(ref_scores), 1e-12)))
    map_abs, scale = float(np.max(np.abs(maps - ref_maps))), float(np.max(np.abs(ref_maps)))
    if not (score_rel <= SCORE_RTOL and map_abs <= MAP_RTOL * max(scale, 1e-12)):
        raise RuntimeError(f"the exported graph ({what}) does not reproduce the model: scores differ by {score_rel:.2g} "
                           f"relative (allowed {SCORE_RTOL:g}), maps by {map_abs:.2g} (allowed {MAP_RTOL:g} x {scale:.3g})")
    return {"max_score_rel_diff": score_rel, "max_map_abs_diff": map_abs, "map_scale": scale}


def parity(model, path: Path) -> dict:
    """Run the ONNX graph with onnxruntime on `parity_batch` and compare with the model's `score_images`."""
    import onnxruntime as ort

    x = parity_batch(model)
    ref_scores, ref_maps = model.score_images(x.to(model.feature_mean.device))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    scores, maps, _ = session.run(None, {"images": x.numpy()})
    return {"images": f"{CHECK_IMAGES} random images (seed 1234)", "runtime": f"onnxruntime {ort.__version__}",
            **compare(scores, maps, ref_scores, ref_maps, "onnxruntime")}


def write_openvino(model, onnx_path: Path, xml_path: Path) -> dict:
    """The ONNX graph as OpenVINO IR (model.xml + model.bin, fp32 weights), checked like the ONNX graph; OpenVINO's
    CPU plugin is asked for fp32 (on CPUs with AMX it would run bf16 by default, 0.3% off in the scores)."""
    import openvino as ov

    ov.save_model(ov.convert_model(str(onnx_path)), str(xml_path), compress_to_fp16=False)
    compiled = compile_openvino(xml_path)
    x = parity_batch(model)
    ref_scores, ref_maps = model.score_images(x.to(model.feature_mean.device))
    result = compiled(x.numpy())
    scores, maps = (result[compiled.output(name)] for name in ("scores", "maps"))
    return {"runtime": f"openvino {ov.__version__}, CPU, INFERENCE_PRECISION_HINT f32",
            **compare(scores, maps, ref_scores, ref_maps, "openvino")}


def compile_openvino(xml_path: Path, threads: int | None = None):
    """OpenVINO IR compiled for the CPU in fp32 (`threads`: its thread count, default OpenVINO's)."""
    import openvino as ov

    config = {"INFERENCE_PRECISION_HINT": "f32", **({"INFERENCE_NUM_THREADS": threads} if threads else {})}
    return ov.Core().compile_model(str(xml_path), "CPU", config)


class _OpenVINO:
    """A compiled OpenVINO model behind onnxruntime's `run(names, {"images": x})`, as `P.score_batch` calls it."""

    def __init__(self, compiled):
        self.compiled = compiled

    def run(self, names, feeds):
        result = self.compiled(feeds["images"])
        return [result[self.compiled.output(name)] for name in names]


def open_graph(folder: Path, meta: dict, fmt: str):
    """The exported graph of `folder`, ready to run on the CPU with torch's thread count (as --threads sets it)."""
    threads = torch.get_num_threads()
    if fmt == "openvino":
        import openvino as ov

        version = ov.__version__.split("-")[0]
        return _OpenVINO(compile_openvino(folder / meta["openvino"], threads)), f"OpenVINO {version} (CPU, fp32)"
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    session = ort.InferenceSession(str(folder / meta["model"]), opts, providers=["CPUExecutionProvider"])
    return session, f"ONNX Runtime {ort.__version__} (CPU)"


class GraphScorer:
    """images (B, 3, H, W) in [0, 1], one size -> (scores (B,), maps (B, H, W)), as `UniAD.score_images` gives
    them, through the exported graph: the exported predict.py's square, graph run and map back."""

    def __init__(self, graph, meta: dict, where: str):
        self.graph, self.size, self.resize, self.where = graph, meta["image_size"], meta["resize"], where

    def __call__(self, images: torch.Tensor):
        images = images.detach().cpu().float().numpy()
        scores, errors = P.score_batch(self.graph, list(images), self.size, self.resize)
        H, W = images.shape[-2:]
        maps = np.stack([P.map_to_image(e, H, W, self.size, self.resize) for e in errors])
        return torch.from_numpy(np.asarray(scores, np.float32)), torch.from_numpy(maps.astype(np.float32))


@contextlib.contextmanager
def engine(model, fmt: str = "onnx"):
    """`uniad-mini predict --engine onnx|openvino`: yields a `GraphScorer` of `model`'s graph, exported (and checked
    against the model) into a temporary folder that is removed at the end. Nothing happens until it is entered."""
    check_format(fmt, "--engine")
    check_exportable(model)
    with tempfile.TemporaryDirectory(prefix="uniad-mini-engine-") as tmp:
        folder = Path(tmp) / "graph"
        meta = export(model, folder, fmt)
        graph, where = open_graph(folder, meta, fmt)
        yield GraphScorer(graph, meta, where)


def description(model, fmt: str, check: dict) -> dict:
    """uniad.json: what predict.py (or any other runtime) needs to put images on the graph and decide."""
    cfg, cal = model.config, model.calibration
    thresholds = None
    if cal is not None:
        pick = ("image", "pixel")
        thresholds = {"fpr": cal["fpr"], "pixel_fpr": cal["pixel_fpr"], "source": cal["source"], "date": cal["date"],
                      "classes": {c: {k: e[k] for k in pick} for c, e in cal["classes"].items()},
                      "global": {k: cal["global"][k] for k in pick}, "warnings": cal.get("warnings", [])}
    S, (h, w) = cfg.image_size, model.grid
    return {
        "format": FORMAT,
        "exported": f"uniad_mini {__version__}, torch {torch.__version__}, {time.strftime('%Y-%m-%d %H:%M:%S')}",
        "model": "model.onnx",
        **({"openvino": "model.xml"} if fmt == "openvino" else {}),
        "inputs": {"images": f"(B, 3, {S}, {S}) float32"},
        "outputs": {"scores": "(B,)", "maps": f"(B, {S}, {S})", "errors": f"(B, {h}, {w})"},
        "image_size": S,
        "grid": [h, w],
        "resize": cfg.resize,
        "resample": "bilinear with antialiasing (torch antialias=True, PIL's BILINEAR filter), then pad or crop",
        "input_norm": "RGB in [0, 1]; the graph applies the backbone's own normalisation "
                      f"({cfg.input_norm}: mean {list(model.backbone.mean)}, std {list(model.backbone.std)})",
        "map_upsampling": "the token errors, bilinear with align_corners=True, to the image's map size",
        "score_pool": cfg.score_pool,
        "map_sigma": cfg.map_sigma,
        "max_side": MAX_SIDE,
        "min_side": MIN_SIDE,
        "image_extensions": list(IMAGE_EXTENSIONS),
        "classes": sorted(cal["classes"]) if cal is not None else [],
        "calibration": thresholds,
        "epochs": model.train_state.get("epoch", 0),
        "config": saved(cfg),
        "check": check,
    }
