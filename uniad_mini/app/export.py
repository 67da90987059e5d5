"""`uniad-mini export RUN --out DIR [--format onnx|openvino] [--precision fp32|bf16]`: a trained run as a folder
that scores images without PyTorch or uniad_mini installed. None of the paper is implemented here: the paper's
path is `UniAD.forward`, and this module writes that path (in eval mode, on a square input) as an ONNX graph.

DIR (a new folder) holds

    model.onnx   the graph: `images` (B, 3, S, S) float32 RGB in [0, 1], already on the model's square (S =
                 config.image_size) -> `scores` (B,), `maps` (B, S, S) and `errors` (B, h, w), the per-token
                 reconstruction error the maps are upsampled from (bilinear, align_corners), so that a map can be
                 brought to any image's own size exactly as `UniAD.forward` does. The batch axis is dynamic; the
                 graph normalises its input for the backbone itself and checks nothing (uniad_graph.py checks).
    uniad.json   format, image size, resize mode, the input note, score pool and map sigma, the precision, the
                 calibrated class names and thresholds (per class and global, as `calibration.thresholds_for`
                 picks them; null when the run is not calibrated), the run's saved config, and this export's
                 parity check
    predict.py   the command (numpy, Pillow; the template is app/exported_predict.py):
                 `python DIR/predict.py INPUT... --out OUT [--class NAME]`, the CSV columns of `uniad-mini predict`
    uniad_graph.py   the graph as a function of images, which predict.py imports (template app/exported_graph.py):
                 the square, the runtime (onnxruntime, or OpenVINO where DIR holds its IR), the map back
    model.xml, model.bin   with --format openvino: the same graph as OpenVINO IR, fp32 weights; uniad.json's
                 precision (--precision bf16: bfloat16 products where the CPU has them) is how OpenVINO runs it

The graph is a small wrapper module (`graph.Graph`, in the core: the speed benchmark exports it too) built from
the model's parts: the backbone (BatchNorm folded into the convolutions), `feature_stack`, the standardisation with
the training statistics, the transformer on the plain attention path (backend "torch", fast=False: the neighbor
mask is a constant and attention plain matmuls) and `scoring.scores_and_maps` (smoothing included), traced by
`torch.onnx.export(dynamo=False)`.

Parity, checked on every export: the graph runs (onnxruntime, and OpenVINO's CPU plugin at the export's precision
for openvino) on a fixed batch of random square images and is compared with the loaded model's own
`score_images` (its fast path included); scores and maps must agree within `TOLERANCE[precision]`, else the export
is refused. The measured differences are stored in uniad.json ("check"). tests/app/test_export.py checks the same
on synthetic images, and predict.py against `uniad-mini predict` (scores, decisions, masks).

Nothing is left half-written: the folder is filled under a temporary sibling name and renamed at the end; an
existing --out is refused before any work.

`engine(model, "onnx" | "openvino", cache)` is what `uniad-mini predict --engine` scores with: this export (fp32),
parity check included, kept in RUN/engines/FORMAT and reused while the model is the same (`fingerprint`), its
graph run by the exported uniad_graph.py's own functions; app/predict.py reads the images and writes the results
for every engine alike.
"""
from __future__ import annotations

import contextlib
import hashlib
import importlib
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from .. import __version__
from ..config import saved
from ..data import IMAGE_EXTENSIONS, MIN_SIDE
from ..errors import OptionError, UserError
from ..graph import Graph, write_onnx
from . import exported_graph as G
from .predict import MAX_SIDE

FORMAT = 1  # the version of uniad.json's layout
TEMPLATES = {"predict.py": "exported_predict.py", "uniad_graph.py": "exported_graph.py"}  # in DIR: from app/
# what each --format needs, and the extra of setup.py that installs it
PACKAGES = {"onnx": ("onnx", "onnxruntime"), "openvino": ("onnx", "onnxruntime", "openvino")}
EXTRAS = {"onnx": "export", "openvino": "openvino"}
# the export's parity check per --precision: (scores relative, maps relative to the largest map value). fp32: the
# rounding over the backbone and transformer; bf16 (OpenVINO on a CPU with bf16 products, 8-bit mantissas): measured
# 2.8e-3 (scores) and 1.1e-2 (maps) on the check's random images, 1.4e-2 (scores) on the development images, where 2
# of 124 decisions differed from fp32's, both within 1% of their threshold (docs/performance.md)
TOLERANCE = {"fp32": (1e-3, 1e-4), "bf16": (3e-2, 3e-2)}
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


def check_precision(fmt: str, precision: str) -> None:
    """bf16 is an OpenVINO setting (ONNX Runtime has no bf16 CPU kernels for this graph): one line otherwise."""
    if precision not in TOLERANCE:
        raise OptionError(f"unknown --precision {precision!r}; choose one of {sorted(TOLERANCE)}")
    if precision == "bf16" and fmt != "openvino":
        raise OptionError("--precision bf16 runs in OpenVINO: export with --format openvino --precision bf16")


def export(model, out_dir, fmt: str = "onnx", precision: str = "fp32", fingerprint: str | None = None) -> dict:
    """Write the exported folder `out_dir` (new) for `model`; returns what uniad.json holds (fingerprint: the
    model's, stored for `engine`'s cache)."""
    check_format(fmt)
    check_precision(fmt, precision)
    out = check_target(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.export-{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
        graph = Graph(model).cpu()
        write_onnx(graph, tmp / "model.onnx")
        ref = reference(model)
        check = parity(tmp / "model.onnx", ref)
        if fmt == "openvino":
            check["openvino"] = write_openvino(tmp / "model.onnx", tmp / "model.xml", ref, precision)
        meta = description(model, fmt, precision, check, fingerprint)
        (tmp / "uniad.json").write_text(json.dumps(meta, indent=2) + "\n")
        for name, template in TEMPLATES.items():
            shutil.copyfile(Path(__file__).with_name(template), tmp / name)
        check_target(out)  # still new: then the rename puts the whole folder there at once
        os.rename(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return meta


def reference(model) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The parity check's batch, CHECK_IMAGES random square images in [0, 1] from a fixed seed, and the model's own
    `score_images` of it: (images (B, 3, S, S), scores (B,), maps (B, S, S)), as numpy arrays."""
    S = model.config.image_size
    x = torch.rand(CHECK_IMAGES, 3, S, S, generator=torch.Generator().manual_seed(1234))
    scores, maps = model.score_images(x.to(model.feature_mean.device))
    return x.numpy(), scores.numpy(), maps.numpy()


def compare(scores, maps, ref, what: str, precision: str = "fp32") -> dict:
    """{"max_score_rel_diff", "max_map_abs_diff", "map_scale", "tolerance"} of outputs against the model's (`ref`,
    from `reference`); refused if further apart than `TOLERANCE[precision]`."""
    _, ref_scores, ref_maps = ref
    score_rtol, map_rtol = TOLERANCE[precision]
    score_rel = float(np.max(np.abs(scores - ref_scores) / np.maximum(np.abs(ref_scores), 1e-12)))
    map_abs, scale = float(np.max(np.abs(maps - ref_maps))), float(np.max(np.abs(ref_maps)))
    if not (score_rel <= score_rtol and map_abs <= map_rtol * max(scale, 1e-12)):
        fix = "export in fp32 (the default)" if precision == "bf16" else "try the onnxruntime / openvino versions of " \
              "setup.py's extras"
        raise UserError(f"the exported graph ({what}, {precision}) does not reproduce the model: scores differ by "
                        f"{score_rel:.2g} relative (allowed {score_rtol:g}), maps by {map_abs:.2g} (allowed {map_rtol:g}"
                        f" x {scale:.3g}); nothing was written: {fix}")
    return {"max_score_rel_diff": score_rel, "max_map_abs_diff": map_abs, "map_scale": scale,
            "tolerance": {"scores": score_rtol, "maps": map_rtol}}


def parity(path: Path, ref) -> dict:
    """Run the ONNX graph with onnxruntime on the `reference` batch and compare with the model's scores and maps."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    scores, maps, _ = session.run(None, {"images": ref[0]})
    return {"images": f"{CHECK_IMAGES} random images (seed 1234)", "runtime": f"onnxruntime {ort.__version__}",
            **compare(scores, maps, ref, "onnxruntime")}


def write_openvino(onnx_path: Path, xml_path: Path, ref, precision: str = "fp32") -> dict:
    """The ONNX graph as OpenVINO IR (model.xml + model.bin, fp32 weights), checked like the ONNX graph in the
    CPU plugin at `precision` (asked for explicitly: on CPUs with AMX OpenVINO would run bf16 by default)."""
    import openvino as ov

    ov.save_model(ov.convert_model(str(onnx_path)), str(xml_path), compress_to_fp16=False)
    graph = G.OpenVINOGraph(xml_path, precision)
    scores, maps = graph.run(["scores", "maps"], {"images": ref[0]})
    return {"runtime": graph.name, **compare(scores, maps, ref, "openvino", precision)}


class GraphScorer:
    """images (B, 3, H, W) in [0, 1], one size -> (scores (B,), maps (B, H, W)), as `UniAD.score_images` gives
    them, through the exported graph: the exported uniad_graph.py's square, graph run and map back."""

    def __init__(self, graph, meta: dict):
        self.graph, self.meta, self.where = graph, meta, graph.name

    def __call__(self, images: torch.Tensor):
        images, m = images.detach().cpu().float().numpy(), self.meta
        scores, errors = G.score_batch(self.graph, list(images), m["image_size"], m["resize"])
        H, W = images.shape[-2:]
        maps = np.stack([G.map_to_image(e, H, W, m["image_size"], m["resize"], m["map_sigma"]) for e in errors])
        return torch.from_numpy(np.asarray(scores, np.float32)), torch.from_numpy(maps.astype(np.float32))


def fingerprint(model, fmt: str) -> str:
    """What an exported graph of `model` depends on, hashed: weights, statistics, config, calibration, format and
    the versions that wrote it. `engine` reuses a cached export only while this is unchanged."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    h.update(json.dumps([saved(model.config), model.calibration, fmt, FORMAT, __version__, torch.__version__],
                        sort_keys=True, default=str).encode())
    return h.hexdigest()


def cached(model, fmt: str, cache: Path | None, scratch: Path) -> tuple[Path, dict, str]:
    """(folder, its uniad.json, what happened) of `model`'s export for `engine`: cache/FORMAT when it holds this
    model's export (same `fingerprint`), else a new export there (replacing a stale one), else, where cache is
    None or cannot be written, in `scratch`."""
    key = fingerprint(model, fmt)
    if cache is not None:
        folder = Path(cache) / fmt
        try:
            meta = json.loads((folder / "uniad.json").read_text())
            if meta.get("fingerprint") == key:
                return folder, meta, f"the cached graph in {folder}"
        except (OSError, ValueError):
            pass
        try:
            folder.parent.mkdir(parents=True, exist_ok=True)
            stale = folder.with_name(f".{fmt}.stale-{os.getpid()}")
            if folder.exists():
                os.rename(folder, stale)  # out of the way at once; removed below
            shutil.rmtree(stale, ignore_errors=True)
            return folder, export(model, folder, fmt, fingerprint=key), f"exported, checked and cached in {folder}"
        except OSError as e:
            note = f" ({cache} cannot be written: {e.strerror})"
    else:
        note = ""
    folder = scratch / fmt
    return folder, export(model, folder, fmt, fingerprint=key), f"exported and checked in a temporary folder{note}"


@contextlib.contextmanager
def engine(model, fmt: str = "onnx", cache: Path | None = None):
    """`uniad-mini predict --engine onnx|openvino`: yields a `GraphScorer` of `model`'s graph, exported (and checked
    against the model) into `cache` (RUN/engines: reused while the model is unchanged) or, without one, into a
    temporary folder removed at the end. Nothing happens until it is entered; one line on stderr says which."""
    check_format(fmt, "--engine")
    with tempfile.TemporaryDirectory(prefix="uniad-mini-engine-") as tmp:
        folder, meta, what = cached(model, fmt, cache, Path(tmp))
        graph = G.open_graph(folder, meta, "openvino" if fmt == "openvino" else "onnxruntime", torch.get_num_threads())
        print(f"uniad-mini predict: scoring with {graph.name}, {what}", file=sys.stderr)
        yield GraphScorer(graph, meta)


def description(model, fmt: str, precision: str, check: dict, fingerprint: str | None = None) -> dict:
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
        "precision": precision,
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
        **({"fingerprint": fingerprint} if fingerprint else {}),
    }
