"""`uniad-mini export`, the exported folder's predict.py and `uniad-mini predict --engine onnx|openvino`, against
the PyTorch model and `uniad-mini predict`.

Oracles, none of them the code under test: the ONNX graph against the model's own `score_images`; predict.py,
run as a subprocess in which torch and uniad_mini cannot be imported, against `uniad-mini predict` on the same
files (calibrated, uncalibrated, and non-square images through squash, crop and pad); the NumPy resize against
`geometry.to_square` and the map back against `geometry.map_to_image`; the file reader against
`images.load_image`. Tolerances, each far above what was measured (2026-12-07, 2-core CPU, torch 2.13 CPU,
onnxruntime 1.32):

    graph scores        1e-3 relative         measured ~1e-7
    graph maps          1e-4 x the map's max  measured ~1e-6 x
    square input        1e-6 absolute         measured 1.8e-7 (float32 rounding: the resize is torch's, step by step)
    map back            1e-5 x the map's max  measured ~2e-7 x
    predict.py scores   1e-3 relative (and 1e-4 absolute: the CSV has 4 decimals)
    decisions           equal; defect areas within 0.1% of the image's pixels
    predict --engine    as predict.py, against predict --engine torch (the default)
"""
import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from uniad_mini import UniAD
from uniad_mini import calibration as C
from uniad_mini.app import export as X
from uniad_mini.app import exported_graph as G
from uniad_mini.app import exported_predict as P
from uniad_mini.app.cli import main
from uniad_mini.data import IMAGE_EXTENSIONS, MIN_SIDE, MVTecAD, load_image
from uniad_mini.geometry import map_to_image, square_map_size, to_square
from uniad_mini.scoring import anomaly_map, smooth
from uniad_mini.synthetic import write_mvtec

TINY = dict(hidden_dim=32, heads=2, layers=1, ffn_dim=64, precision="fp32")
ROWS = ["export_of_an_unknown_run", "export_to_an_existing_folder", "export_without_its_packages",  # reliability.md
        "export_in_bf16_without_openvino", "exported_predict_on_unreadable_files",
        "exported_predict_with_a_bad_class", "exported_predict_on_an_empty_folder",
        "exported_predict_with_a_runtime_it_cannot_use", "predict_with_an_engine_whose_extra_is_missing",
        "predict_with_an_unknown_engine"]
NO_TORCH = "import runpy, sys; sys.modules['torch'] = None; sys.modules['uniad_mini'] = None; sys.argv = sys.argv[1:]; " \
           "runpy.run_path(sys.argv[0], run_name='__main__')"  # torch / uniad_mini: an ImportError if imported


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Two synthetic classes, and odd/: non-square files of every kind the reader handles (48 x 80, 80 x 48, a
    16-bit gray PNG, an RGBA PNG, a JPEG), in class folders so that their thresholds are found by name."""
    base = tmp_path_factory.mktemp("export")
    root = write_mvtec(base / "data", classes=["cap", "carpet"], n_train=5, n_test_good=1, n_test_bad=1)
    odd = base / "odd"
    for cls in ("cap", "carpet"):
        (odd / cls).mkdir(parents=True)
        im = Image.open(next((root / cls / "test").glob("[!g]*/000.png"))).convert("RGB")
        im.resize((80, 48), Image.BILINEAR).save(odd / cls / "wide.png")
        im.resize((48, 80), Image.BILINEAR).save(odd / cls / "tall.png")
        im.resize((96, 64), Image.BILINEAR).save(odd / cls / "photo.jpg", quality=90)
        rgba = np.dstack([np.asarray(im.resize((48, 80))), np.full((80, 48), 255, np.uint8)])
        rgba[:10, :, 3] = 0  # a transparent band
        Image.fromarray(rgba).save(odd / cls / "alpha.png")
        gray = np.asarray(im.convert("L").resize((80, 48)), np.uint16) * 257
        Image.fromarray(gray).save(odd / cls / "deep.png")  # I;16
    return root, odd


def train(root, out: Path, calibrated=True, **options) -> UniAD:
    """A tiny model trained 1 epoch on the classes less a held-out share, calibrated on it, saved as out/model.pt."""
    model = UniAD(**TINY, **options)
    kept, held = C.split(MVTecAD(root, "train"), 0.4, seed=0)
    model.fit(kept, epochs=1, progress=False)
    if calibrated:
        model.calibrate(held, fpr=0.01, pixel_fpr=0.01, source="the held-out 40%")
    out.mkdir(parents=True)
    model.save(out / "model.pt")
    return model


@pytest.fixture(scope="module")
def squash(data, tmp_path_factory):
    """(run, model, exported folder) of a calibrated run with the default resize."""
    base = tmp_path_factory.mktemp("squash")
    model = train(data[0], base / "run")
    assert main(["export", str(base / "run"), "--out", str(base / "exported"), "--quiet"]) == 0
    return base / "run", model, base / "exported"


def rows(path: Path) -> list[dict]:
    with open(path / "predictions.csv", newline="") as f:
        return list(csv.DictReader(f))


def exported_predict(folder: Path, *args, cwd=None):
    """predict.py of an exported folder, in a fresh interpreter where torch and uniad_mini cannot be imported."""
    return subprocess.run([sys.executable, "-c", NO_TORCH, str(folder / "predict.py"), *map(str, args)],
                          capture_output=True, text=True, cwd=cwd, timeout=120)


def one_line(stderr: str, prog: str) -> str:
    line = stderr.strip().splitlines()[-1]
    assert line.startswith(f"{prog}: error: ") and "Traceback" not in stderr
    return line


# ---- the graph ---------------------------------------------------------------------------------------


def test_the_graph_gives_the_models_scores_and_maps_for_any_batch(squash, data):
    ort = pytest.importorskip("onnxruntime")
    _, model, folder = squash
    files = sorted(data[0].glob("*/test/*/*.png"))
    x = torch.stack([load_image(f, size=224) for f in files])  # (4, 3, 224, 224) on the square
    session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    ref_scores, ref_maps = model.score_images(x)
    for batch in ([0], [0, 1, 2], [0, 1, 2, 3]):  # the batch axis is dynamic
        scores, maps, errors = session.run(None, {"images": x[batch].numpy()})
        assert scores.shape == (len(batch),) and maps.shape == (len(batch), 224, 224) and errors.shape[1:] == (14, 14)
        np.testing.assert_allclose(scores, ref_scores[batch].numpy(), rtol=1e-3)
        assert np.abs(maps - ref_maps[batch].numpy()).max() <= 1e-4 * ref_maps.max().item()
        up = anomaly_map(torch.from_numpy(errors)[:, None], torch.zeros(len(batch), 1, 14, 14), (224, 224))
        assert (up - torch.from_numpy(maps)).abs().max() <= 1e-5 * ref_maps.max().item()  # maps come from errors
    import onnx

    ops = {n.op_type for n in onnx.load(str(folder / "model.onnx")).graph.node}
    assert not ops & {"If", "Loop", "Split"}  # no data-dependent checks, no branches


def test_uniad_json_holds_the_geometry_and_the_thresholds_as_thresholds_for_picks_them(squash):
    _, model, folder = squash
    meta = json.loads((folder / "uniad.json").read_text())
    assert sorted(os.listdir(folder)) == ["model.onnx", "predict.py", "uniad.json", "uniad_graph.py"]
    assert (meta["format"], meta["image_size"], meta["resize"], meta["score_pool"], meta["map_sigma"],
            meta["precision"]) == (X.FORMAT, 224, "squash", 16, 0.0, "fp32")
    assert meta["classes"] == ["cap", "carpet"] and meta["min_side"] == MIN_SIDE
    assert tuple(meta["image_extensions"]) == IMAGE_EXTENSIONS == P.IMAGE_EXTENSIONS  # the template's copy
    for cls in ["cap", "carpet", None]:
        name, entry = C.thresholds_for(model.calibration, cls)
        assert P.thresholds_for(meta["calibration"], cls) == (name, {"image": entry["image"], "pixel": entry["pixel"]})
    assert meta["check"]["max_score_rel_diff"] < 1e-4
    for name, template in X.TEMPLATES.items():
        assert (folder / name).read_text() == (Path(X.__file__).parent / template).read_text()


# ---- predict.py, piece by piece against the package -------------------------------------------------


@pytest.mark.parametrize("resize", ["squash", "crop", "pad"])
@pytest.mark.parametrize("sigma", [0.0, 4.0])
def test_the_square_and_the_map_back_match_the_package(resize, sigma):
    g = torch.Generator().manual_seed(0)
    for H, W in [(48, 80), (80, 48), (224, 224), (300, 500), (17, 700), (500, 223), (16, 16)]:
        x = torch.rand(1, 3, H, W, generator=g)
        assert np.abs(G.to_square(x[0].numpy(), 224, resize) - to_square(x, 224, resize)[0].numpy()).max() <= 1e-6
        e = torch.rand(1, 1, 14, 14, generator=g) * 10
        size = square_map_size(H, W, 224, resize)  # as UniAD.forward: the map at this size, smoothed there
        ref = map_to_image(smooth(anomaly_map(e, torch.zeros_like(e), size), sigma * size[0] / 224), H, W, 224, resize)
        got = G.map_to_image(e[0, 0].numpy(), H, W, 224, resize, sigma)
        assert got.shape == (H, W) and np.abs(got - ref[0].numpy()).max() <= 1e-5 * 10


@settings(deadline=None)
@given(h=st.integers(2, 40), w=st.integers(2, 40), sigma=st.floats(0.05, 30.0), seed=st.integers(0, 2**16))
def test_the_maps_smoothing_is_the_packages(h, w, sigma, seed):
    """uniad_graph.smooth against scoring.smooth: any map size, kernels cut short of small maps included."""
    amap = torch.rand(1, h, w, generator=torch.Generator().manual_seed(seed)) * 10
    got = G.smooth(amap[0].numpy(), sigma)
    assert got.shape == (h, w) and np.abs(got - smooth(amap, sigma)[0].numpy()).max() <= 1e-5 * 10


def test_files_are_read_as_the_package_reads_them(data, tmp_path):
    _, odd = data
    big = tmp_path / "big.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 2100, 3), dtype=np.uint8)).save(big)
    files = sorted(odd.rglob("*.*")) + [big]
    for f in files:
        np.testing.assert_array_equal(P.read_image(f, 2048, MIN_SIDE), load_image(f, size=None, max_side=2048).numpy())
    assert P.read_image(big, 2048, MIN_SIDE).shape[-1] == 2048  # shrunk to 2048 on its long side


# ---- predict.py against uniad-mini predict ------------------------------------------------------------


def compare(torch_out: Path, onnx_out: Path, calibrated: bool):
    a, b = rows(torch_out), rows(onnx_out)
    assert [r["path"] for r in a] == [r["path"] for r in b] and list(a[0]) == list(b[0]) == P.FIELDS
    for r, s in zip(a, b):
        assert (r["class"], r["threshold"], r["decision"]) == (s["class"], s["threshold"], s["decision"]), r["path"]
        assert float(s["score"]) == pytest.approx(float(r["score"]), rel=1e-3, abs=1e-4)
        if not calibrated:
            assert r["decision"] == s["decision"] == "" and not list(onnx_out.rglob("*_mask.png"))
            continue
        pixels = Image.open(r["path"]).size[0] * Image.open(r["path"]).size[1]
        assert abs(int(r["defect_area_px"]) - int(s["defect_area_px"])) <= 1e-3 * pixels
    if calibrated:  # one mask PNG per image, at the image's size, named as uniad-mini predict names it
        masks = sorted(p.relative_to(onnx_out) for p in onnx_out.rglob("*_mask.png"))
        assert masks == sorted(p.relative_to(torch_out) for p in torch_out.rglob("*_mask.png")) and len(masks) == len(a)
        for m in masks:
            assert np.mean(np.asarray(Image.open(onnx_out / m)) != np.asarray(Image.open(torch_out / m))) <= 1e-3


@pytest.mark.parametrize("case", ["calibrated", "uncalibrated", "crop", "pad", "smoothed"])
def test_exported_predict_without_torch_decides_as_uniad_mini_predict(case, squash, data, tmp_path):
    root, odd = data
    if case == "calibrated":
        run, folder = squash[0], squash[2]
    else:
        run, folder = tmp_path / "run", tmp_path / "exported"
        options = {"crop": {"resize": "crop"}, "pad": {"resize": "pad"}, "smoothed": {"map_sigma": 4.0}}.get(case, {})
        train(root, run, calibrated=case != "uncalibrated", **options)
        assert main(["export", str(run), "--out", str(folder), "--quiet"]) == 0
    inputs = [root / "cap" / "test", f"{root}/carpet/test/*/*.png", odd]
    assert main(["predict", str(run), *map(str, inputs), "--out", str(tmp_path / "torch"), "--quiet"]) == 0
    done = exported_predict(folder, *inputs, "--out", tmp_path / "onnx")
    assert done.returncode == 0, done.stderr
    compare(tmp_path / "torch", tmp_path / "onnx", calibrated=case != "uncalibrated")
    if case == "calibrated":  # --class overrides the folders, as in uniad-mini predict
        assert main(["predict", str(run), str(odd), "--class", "carpet", "--out", str(tmp_path / "t2"), "--quiet"]) == 0
        assert exported_predict(folder, odd, "--class", "carpet", "--out", tmp_path / "o2").returncode == 0
        compare(tmp_path / "t2", tmp_path / "o2", calibrated=True)


def test_exported_predict_on_unreadable_files(squash, data, tmp_path):
    _, _, folder = squash
    bad = tmp_path / "in"
    bad.mkdir()
    (bad / "b_notes.png").write_text("not an image")
    good = Image.open(next((data[0] / "cap" / "test" / "good").glob("*.png")))
    good.save(bad / "a.png"), good.save(bad / "c.png")
    (bad / "d_cut.png").write_bytes((bad / "a.png").read_bytes()[:300])
    (tmp_path / "notes.txt").write_text("hello")
    done = exported_predict(folder, bad, tmp_path / "notes.txt", tmp_path / "gone.png", "--out", tmp_path / "out")
    assert done.returncode == 2
    assert "4 input(s) could not be read and were skipped" in one_line(done.stderr, "predict.py")
    for fragment in ("b_notes.png (UnidentifiedImageError", "cannot read image " + str(bad / "d_cut.png"),
                     "notes.txt: not an image", "gone.png: no such file or folder"):
        assert fragment in done.stderr
    assert [Path(r["path"]).name for r in rows(tmp_path / "out")] == ["a.png", "c.png"]


def test_exported_predict_with_a_bad_class(squash, data, tmp_path):
    run, model, folder = squash
    done = exported_predict(folder, data[1], "--class", "bottle", "--out", tmp_path / "out")
    assert done.returncode == 2 and "unknown class 'bottle': this model was calibrated for ['cap', 'carpet']" in \
        one_line(done.stderr, "predict.py")
    bare = tmp_path / "bare"  # an uncalibrated export: no per-class thresholds at all
    meta = json.loads((folder / "uniad.json").read_text())
    bare.mkdir()
    for name in ("model.onnx", "predict.py", "uniad_graph.py"):
        (bare / name).write_bytes((folder / name).read_bytes())
    (bare / "uniad.json").write_text(json.dumps({**meta, "calibration": None, "classes": []}))
    done = exported_predict(bare, data[1], "--class", "cap", "--out", tmp_path / "out")
    assert done.returncode == 2 and "not calibrated" in one_line(done.stderr, "predict.py")
    assert not (tmp_path / "out").exists()


def test_exported_predict_on_an_empty_folder(squash, tmp_path):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    done = exported_predict(squash[2], tmp_path / "empty", "--out", tmp_path / "out")
    assert done.returncode == 2 and "no images to predict" in one_line(done.stderr, "predict.py")
    assert "the folder holds no images" in done.stderr and not (tmp_path / "out").exists()


# ---- export's refusals: one line, exit 2, nothing written ----------------------------------------------


def refused(capsys, tmp_path, *args) -> str:
    before = sorted(tmp_path.rglob("*"))
    assert main(["export", *map(str, args), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("uniad-mini export: error: ") and "\n" not in err
    assert sorted(tmp_path.rglob("*")) == before  # nothing written, no temporary folder left
    return err


def test_export_of_an_unknown_run(tmp_path, capsys):
    assert "no checkpoint at" in refused(capsys, tmp_path, tmp_path / "nope", "--out", tmp_path / "x")


def test_export_to_an_existing_folder(squash, tmp_path, capsys):
    (tmp_path / "there").mkdir()
    (tmp_path / "there" / "keep.txt").write_text("mine")
    assert "--out" in refused(capsys, tmp_path, squash[0], "--out", tmp_path / "there") and \
        (tmp_path / "there" / "keep.txt").read_text() == "mine"


def test_export_without_its_packages(squash, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime -> ImportError
    err = refused(capsys, tmp_path, squash[0], "--out", tmp_path / "x")
    assert "--format onnx needs onnxruntime" in err and 'pip install -e ".[export]"' in err
    monkeypatch.setitem(sys.modules, "openvino", None)
    err = refused(capsys, tmp_path, squash[0], "--out", tmp_path / "x", "--format", "openvino")
    assert "--format openvino needs onnxruntime, openvino" in err and '".[openvino]"' in err


def test_export_in_bf16_without_openvino(squash, tmp_path, capsys):
    err = refused(capsys, tmp_path, squash[0], "--out", tmp_path / "x", "--precision", "bf16")
    assert "--precision bf16 runs in OpenVINO: export with --format openvino --precision bf16" in err


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_exported_predict_runs_openvino_where_the_folder_holds_its_ir(precision, squash, data, tmp_path):
    """predict.py takes OpenVINO for a folder exported with --format openvino, at the export's precision; bf16
    (bfloat16 products where the CPU has them, fp32 elsewhere) is checked on export at its own tolerance, 3e-2, and
    decides as fp32 does wherever the score is further than that from the threshold."""
    pytest.importorskip("openvino")
    run, _, onnx_folder = squash
    folder = tmp_path / "ov"
    assert main(["export", str(run), "--out", str(folder), "--format", "openvino", "--precision", precision,
                 "--quiet"]) == 0
    meta = json.loads((folder / "uniad.json").read_text())
    assert (folder / "model.xml").is_file() and (folder / "model.bin").is_file() and meta["precision"] == precision
    assert meta["check"]["openvino"]["max_score_rel_diff"] <= {"fp32": 1e-4, "bf16": X.TOLERANCE["bf16"][0]}[precision]
    inputs = [data[0] / "cap" / "test", data[1]]
    ov, ort_ = exported_predict(folder, *inputs, "--out", tmp_path / "ov-out"), \
        exported_predict(onnx_folder, *inputs, "--out", tmp_path / "ort-out")
    assert ov.returncode == ort_.returncode == 0, ov.stderr
    import openvino

    native = "BF16" in openvino.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")  # else OpenVINO runs f32
    runs = precision if precision == "fp32" or native else "fp32"
    assert "OpenVINO" in ov.stderr and f"CPU, {runs})" in ov.stderr and "ONNX Runtime" in ort_.stderr
    a, b = rows(tmp_path / "ort-out"), rows(tmp_path / "ov-out")
    assert [r["path"] for r in a] == [r["path"] for r in b]
    for r, s in zip(a, b):
        assert float(s["score"]) == pytest.approx(float(r["score"]), rel=X.TOLERANCE[precision][0], abs=1e-4)
        if precision == "fp32" or abs(float(r["score"]) / float(r["threshold"]) - 1) > X.TOLERANCE[precision][0]:
            assert r["decision"] == s["decision"], r["path"]


def test_exported_predict_with_a_runtime_it_cannot_use(squash, data, tmp_path):
    folder = squash[2]
    done = exported_predict(folder, data[1], "--runtime", "openvino", "--out", tmp_path / "out")
    assert done.returncode == 2 and "--runtime openvino needs the OpenVINO IR: export with --format openvino" in \
        one_line(done.stderr, "predict.py")
    part = tmp_path / "part"  # the folder copied without uniad_graph.py
    part.mkdir()
    for name in ("model.onnx", "predict.py", "uniad.json"):
        (part / name).write_bytes((folder / name).read_bytes())
    done = exported_predict(part, data[1], "--out", tmp_path / "out")
    assert done.returncode == 2 and "no uniad_graph.py beside" in one_line(done.stderr, "predict.py")
    assert not (tmp_path / "out").exists()


# ---- uniad-mini predict --engine onnx | openvino: the graph scores, predict writes -----------------------


@pytest.mark.parametrize("engine", ["onnx", "openvino"])
def test_predict_engine_decides_as_the_torch_engine(engine, squash, data, tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    if engine == "openvino":
        pytest.importorskip("openvino")
    root, odd = data
    run = squash[0]
    inputs = [root / "cap" / "test", f"{root}/carpet/test/*/*.png", odd]  # square and non-square, files and globs
    assert main(["predict", str(run), *map(str, inputs), "--out", str(tmp_path / "torch"), "--quiet"]) == 0
    capsys.readouterr()
    assert main(["predict", str(run), *map(str, inputs), "--out", str(tmp_path / engine), "--engine", engine,
                 "--quiet"]) == 0
    assert "images/s on " + {"onnx": "ONNX Runtime", "openvino": "OpenVINO"}[engine] in capsys.readouterr().err
    compare(tmp_path / "torch", tmp_path / engine, calibrated=True)  # the same CSV columns, decisions, masks
    for out in (tmp_path / "torch", tmp_path / engine):  # everything predict writes, for each engine alike
        assert sorted(p.relative_to(out) for p in out.rglob("*_overlay.png")) == \
            sorted(p.relative_to(tmp_path / "torch") for p in (tmp_path / "torch").rglob("*_overlay.png"))
        assert (out / "report.html").is_file() and not (out / "predictions.csv.tmp").exists()
    assert f"--engine {engine}" in (tmp_path / engine / "report.html").read_text()


def test_predict_engine_without_a_calibration_and_with_a_class(squash, data, tmp_path):
    """--class picks the thresholds for every engine alike; an uncalibrated run gives scores and no decisions."""
    pytest.importorskip("onnxruntime")
    run, model, _ = squash
    for engine in ("torch", "onnx"):
        assert main(["predict", str(run), str(data[1]), "--class", "carpet", "--engine", engine,
                     "--out", str(tmp_path / f"c-{engine}"), "--quiet"]) == 0
    compare(tmp_path / "c-torch", tmp_path / "c-onnx", calibrated=True)
    bare = tmp_path / "bare"
    bare.mkdir()
    ckpt = torch.load(run / "model.pt", weights_only=True)
    ckpt["calibration"] = None
    torch.save(ckpt, bare / "model.pt")
    for engine in ("torch", "onnx"):
        assert main(["predict", str(bare), str(data[1]), "--engine", engine, "--out", str(tmp_path / f"u-{engine}"),
                     "--quiet"]) == 0
    compare(tmp_path / "u-torch", tmp_path / "u-onnx", calibrated=False)


def test_predict_with_an_engine_whose_extra_is_missing(squash, data, tmp_path, capsys, monkeypatch):
    run, out = squash[0], tmp_path / "p"
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime -> ImportError
    before = sorted(tmp_path.rglob("*"))
    assert main(["predict", str(run), str(data[1]), "--out", str(out), "--engine", "onnx", "--quiet"]) == 2
    err = one_line(capsys.readouterr().err, "uniad-mini predict")
    assert "--engine onnx needs onnxruntime, not installed here" in err and 'pip install -e ".[export]"' in err
    monkeypatch.setitem(sys.modules, "openvino", None)
    assert main(["predict", str(run), str(data[1]), "--out", str(out), "--engine", "openvino", "--quiet"]) == 2
    err = one_line(capsys.readouterr().err, "uniad-mini predict")
    assert "--engine openvino needs onnxruntime, openvino" in err and 'pip install -e ".[openvino]"' in err
    assert sorted(tmp_path.rglob("*")) == before and not out.exists()  # nothing written, no graph folder left


def test_predict_with_an_unknown_engine(squash, data, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["predict", str(squash[0]), str(data[1]), "--out", str(tmp_path / "p"), "--engine", "tensorrt"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "argument --engine: invalid choice: 'tensorrt'" in err and "Traceback" not in err
    assert not (tmp_path / "p").exists()


def test_predict_engine_caches_its_graph_while_the_model_is_unchanged(squash, data, tmp_path, capsys):
    """The first --engine onnx exports into RUN/engines/onnx, later calls reuse it, a changed model (here its
    map smoothing) is exported again; a smoothed run scores as the torch engine scores it; where RUN/engines
    cannot be made, the export goes to a temporary folder."""
    pytest.importorskip("onnxruntime")
    run = tmp_path / "run"
    run.mkdir()
    (run / "model.pt").write_bytes((squash[0] / "model.pt").read_bytes())

    def predict(out, engine="onnx"):
        assert main(["predict", str(run), str(data[1]), "--out", str(tmp_path / out), "--engine", engine,
                     "--quiet"]) == 0
        return capsys.readouterr().err

    assert "exported, checked and cached in" in predict("a")
    first = json.loads((run / "engines" / "onnx" / "uniad.json").read_text())["fingerprint"]
    assert "the cached graph in" in predict("b") and rows(tmp_path / "a") == rows(tmp_path / "b")
    ckpt = torch.load(run / "model.pt", weights_only=True)
    ckpt["config"]["map_sigma"] = 4.0
    torch.save(ckpt, run / "model.pt")
    assert "exported, checked and cached in" in predict("c")
    assert json.loads((run / "engines" / "onnx" / "uniad.json").read_text())["fingerprint"] != first
    assert sorted(os.listdir(run / "engines")) == ["onnx"]  # the stale export removed
    predict("t", "torch")
    compare(tmp_path / "t", tmp_path / "c", calibrated=True)
    shutil.rmtree(run / "engines")
    (run / "engines").write_text("not a folder")  # RUN/engines cannot be made: a temporary export, nothing touched
    assert "exported and checked in a temporary folder (" in predict("d")
    assert (run / "engines").read_text() == "not a folder" and rows(tmp_path / "d") == rows(tmp_path / "c")
