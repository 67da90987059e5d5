"""`uniad-mini predict` and `calibrate` on a tiny calibrated run, and report.html in a real headless browser:
the CSV against the model's own Prediction, the PNGs against the CSV, files / folders / globs, classes, and
every bad input of docs/reliability.md's predict section (unreadable files skipped, exit 2 at the end)."""
import csv
import os
import re
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from browser import dump_dom, find_chromium, screenshot
from uniad_mini import UniAD
from uniad_mini import calibration as C
from uniad_mini.app import report as R
from uniad_mini.app.cli import main
from uniad_mini.app.predict import MAX_SIDE, find_images
from uniad_mini.data import MVTecAD, load_image
from uniad_mini.synthetic import write_mvtec

TINY = dict(hidden_dim=32, heads=2, layers=1, ffn_dim=64)
ROWS = ["predict_on_an_empty_folder", "predict_on_unreadable_files", "predict_on_a_huge_image",  # docs/reliability.md
        "predict_with_an_unknown_class_name", "predict_interrupted_with_ctrl_c",
        "calibrate_when_the_training_folder_changed", "too_few_normal_images_for_the_rate",
        "a_model_saved_with_the_triton_backend_predicts_on_this_cpu", "predict_refuses_to_change_what_the_model_is"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny model trained on 2 classes less a held-out share, calibrated on it, saved as RUN/model.pt."""
    base = tmp_path_factory.mktemp("predict")
    root = write_mvtec(base / "data", classes=["cap", "carpet"], n_train=5, n_test_good=1, n_test_bad=1)
    model = UniAD(**TINY)
    kept, held = C.split(MVTecAD(root, "train"), 0.4, seed=0)
    model.fit(kept, epochs=1, progress=False)
    model.calibrate(held, fpr=0.01, pixel_fpr=0.01, source="the held-out 40%")
    (base / "run").mkdir()
    model.save(base / "run" / "model.pt")
    return root, base / "run", model


def rows(out):
    with open(out / "predictions.csv", newline="") as f:
        return list(csv.DictReader(f))


def one_line_error(capsys, command="predict") -> str:
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(f"uniad-mini {command}: error: ") and "Traceback" not in err
    return err


def test_folder_gives_csv_masks_overlays_and_report_matching_the_model(setup, tmp_path, capsys):
    root, run, model = setup
    out = tmp_path / "pred"
    assert main(["predict", str(run), str(root / "cap" / "test"), "--out", str(out), "--quiet"]) == 0
    got = rows(out)
    files = sorted((root / "cap" / "test").rglob("*.png"))
    assert [r["path"] for r in got] == [str(f) for f in files]  # recursive, every image, in path order
    assert list(got[0]) == ["path", "class", "score", "threshold", "decision", "defect_area_px"]
    printed = capsys.readouterr().out
    for r, f in zip(got, files):
        pred = model.predict(load_image(f, size=None)[None], "cap")
        assert r["class"] == "cap"  # from the folder name
        assert float(r["score"]) == pytest.approx(float(pred.scores[0]), abs=1e-4)
        assert float(r["threshold"]) == pytest.approx(model.calibration["classes"]["cap"]["image"], abs=1e-4)
        assert r["decision"] == ("anomalous" if bool(pred.decisions[0]) else "normal")
        name = out / "images" / "test" / f.relative_to(root / "cap" / "test").with_suffix("")
        mask = np.asarray(Image.open(f"{name}_mask.png"))
        assert mask.shape == tuple(pred.maps.shape[-2:]) and int((mask > 0).sum()) == int(r["defect_area_px"])
        assert int(pred.areas[0]) == int(r["defect_area_px"])
        assert Image.open(f"{name}_overlay.png").size == Image.open(f).size
        assert f"{f},cap," in printed
    page = (out / "report.html").read_text()
    assert 'id="metrics"' in page and 'id="gallery"' in page and page.count('class="item') == len(files)


def test_files_globs_and_duplicates(setup, tmp_path):
    root, run, _ = setup
    one = root / "carpet" / "test" / "good" / "000.png"
    pattern = str(root / "carpet" / "test" / "*" / "*.png")
    assert main(["predict", str(run), str(one), pattern, "--out", str(tmp_path / "p"), "--quiet"]) == 0
    paths = [r["path"] for r in rows(tmp_path / "p")]
    assert paths[0] == str(one) and len(paths) == len(set(paths)) == len(list(root.glob("carpet/test/*/*.png")))


def test_class_option_overrides_the_folder_and_no_class_means_the_global_threshold(setup, tmp_path):
    root, run, model = setup
    lone = tmp_path / "elsewhere" / "x.png"
    lone.parent.mkdir()
    shutil.copy(root / "cap" / "test" / "good" / "000.png", lone)
    assert main(["predict", str(run), str(lone), "--out", str(tmp_path / "a"), "--quiet"]) == 0
    r = rows(tmp_path / "a")[0]
    assert r["class"] == C.GLOBAL and float(r["threshold"]) == pytest.approx(model.calibration["global"]["image"], abs=1e-4)
    assert main(["predict", str(run), str(lone), "--class", "carpet", "--out", str(tmp_path / "b"), "--quiet"]) == 0
    assert rows(tmp_path / "b")[0]["class"] == "carpet"


def test_predict_with_an_unknown_class_name(setup, tmp_path, capsys):
    root, run, _ = setup
    out = tmp_path / "p"
    assert main(["predict", str(run), str(root / "cap" / "test"), "--class", "bottle", "--out", str(out)]) == 2
    assert "unknown class 'bottle': this model was calibrated for ['cap', 'carpet']" in one_line_error(capsys)
    assert not out.exists()


def test_a_model_saved_with_the_triton_backend_predicts_on_this_cpu(setup, tmp_path):
    root, run, model = setup
    gpu_run = tmp_path / "gpu_run"
    gpu_run.mkdir()
    on_gpu = UniAD(**TINY, backend="triton", compile=True)  # as a GPU run would be built
    on_gpu.load_state_dict(model.state_dict(), strict=False)
    on_gpu.train_state, on_gpu.calibration = model.train_state, model.calibration
    on_gpu.save(gpu_run / "model.pt")
    out = tmp_path / "pred"
    assert main(["predict", str(gpu_run), str(root / "cap" / "test"), "--out", str(out), "--quiet"]) == 0
    plain = tmp_path / "plain"  # the run-time choices on the command line: the plain path, the same scores
    assert main(["predict", str(run), str(root / "cap" / "test"), "--out", str(plain), "--quiet",
                 "--set", "backend=torch", "--set", "fast=False"]) == 0
    for a, b in zip(rows(out), rows(plain)):
        assert a["path"] == b["path"] and a["decision"] == b["decision"]
        assert float(a["score"]) == pytest.approx(float(b["score"]), rel=1e-4)


def test_predict_refuses_to_change_what_the_model_is(setup, tmp_path, capsys):
    root, run, _ = setup
    out = tmp_path / "p"
    assert main(["predict", str(run), str(root / "cap" / "test"), "--out", str(out), "--set", "layers=4"]) == 2
    err = one_line_error(capsys)
    assert "--set layers" in err and "run-time choices backend, fast, compile" in err
    assert not out.exists()


def test_predict_on_an_empty_folder(setup, tmp_path, capsys):
    _, run, _ = setup
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "notes.txt").write_text("x")
    assert main(["predict", str(run), str(tmp_path / "empty"), "--out", str(tmp_path / "p")]) == 2
    assert "no images to predict" in one_line_error(capsys)
    assert not (tmp_path / "p").exists()


def _bad_folder(root, tmp_path):
    folder = tmp_path / "mixed"
    folder.mkdir()
    shutil.copy(root / "cap" / "test" / "good" / "000.png", folder / "a_good.png")
    (folder / "b_notes.png").write_text("not an image")  # a non-image with an image name
    data = (root / "cap" / "test" / "good" / "000.png").read_bytes()
    (folder / "c_truncated.png").write_bytes(data[: len(data) // 2])
    shutil.copy(root / "carpet" / "test" / "good" / "000.png", folder / "d_good.png")
    return folder


def test_predict_on_unreadable_files(setup, tmp_path, capsys):
    root, run, _ = setup
    folder, out = _bad_folder(root, tmp_path), tmp_path / "p"
    assert main(["predict", str(run), str(folder), str(tmp_path / "notes.txt"), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    skipped = [line for line in err.splitlines() if line.startswith("uniad-mini predict: skipped")]
    assert len(skipped) == 3 and any("b_notes.png" in s for s in skipped) and any("c_truncated.png" in s for s in skipped)
    assert any("notes.txt: no such file" in s for s in skipped)
    assert err.strip().splitlines()[-1].startswith("uniad-mini predict: error: 3 input(s) could not be read")
    assert [os.path.basename(r["path"]) for r in rows(out)] == ["a_good.png", "d_good.png"]  # the others kept
    assert (out / "report.html").exists() and "b_notes.png" in (out / "report.html").read_text()


def test_predict_on_a_huge_image(setup, tmp_path, monkeypatch):
    root, run, _ = setup
    folder = tmp_path / "big"
    folder.mkdir()
    Image.open(root / "cap" / "test" / "good" / "000.png").convert("RGB").resize((MAX_SIDE + 300, 64)).save(folder / "wide.png")
    assert main(["predict", str(run), str(folder), "--out", str(tmp_path / "p"), "--quiet"]) == 0
    mask = Image.open(tmp_path / "p" / "images" / "big" / "wide_mask.png")
    assert mask.size[0] == MAX_SIDE  # the map and mask of a shrunk image: aspect kept, longest side MAX_SIDE
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000)  # a decompression-bomb limit it exceeds 2x
    assert main(["predict", str(run), str(folder), "--out", str(tmp_path / "q"), "--quiet"]) == 2
    assert not rows(tmp_path / "q")


def test_find_images_walks_folders_skips_hidden_and_follows_no_folder_link(tmp_path):
    (tmp_path / "a" / ".hidden").mkdir(parents=True)
    (tmp_path / "a" / "b").mkdir()
    for p in ("a/1.png", "a/b/2.JPG", "a/.hidden/3.png", "a/.4.png", "a/b/readme.md"):
        (tmp_path / p).write_bytes(b"")
    (tmp_path / "a" / "b" / "loop").symlink_to(tmp_path / "a")
    files, problems = find_images([str(tmp_path / "a")])
    assert [f.name for f, _ in files] == ["1.png", "2.JPG"] and not problems


def test_calibrate_when_the_training_folder_changed(tmp_path, capsys):
    root = write_mvtec(tmp_path / "data", classes=["cap"], n_train=5, n_test_good=1, n_test_bad=1)
    run = tmp_path / "run"
    small = [f"--set={k}={v}" for k, v in TINY.items()]
    assert main(["train", str(root), "--out", str(run), "--epochs", "1", "--holdout", "0.4", "--quiet", *small]) == 0
    cal = torch.load(run / "model.pt", weights_only=True)["calibration"]
    assert cal["classes"]["cap"]["images"] == 2 and "held-out" in cal["source"] and cal["warnings"]
    assert main(["calibrate", str(run), str(root), "--fpr", "0.5", "--quiet"]) == 0
    again = torch.load(run / "model.pt", weights_only=True)["calibration"]
    assert again["fpr"] == 0.5 and again["classes"]["cap"]["images"] == 2
    assert "| cap | 2 |" in capsys.readouterr().out
    before = (run / "model.pt").read_bytes()
    (root / "cap" / "train" / "good" / "000.png").unlink()  # the training folder changed since training
    assert main(["calibrate", str(run), str(root)]) == 2
    assert "not those this run held out" in one_line_error(capsys, "calibrate")
    assert (run / "model.pt").read_bytes() == before


def test_too_few_normal_images_for_the_rate():
    cal = C.calibrate(torch.arange(5.0), torch.zeros(5, 2, 2), ["cap"] * 5, fpr=0.01)
    assert cal["classes"]["cap"]["image"] == 4.0  # the highest normal score: no false alarm allowed
    assert cal["warnings"] == ["class 'cap': the 1% false-alarm threshold rests on 5 normal image(s); 100 are needed "
                               "to resolve that rate, so it is their highest score and the real rate may be up to 45% "
                               "(95% bound) -- hold out more, or calibrate on a folder of normal images"]
    assert not C.calibrate(torch.rand(100), torch.zeros(100, 2, 2), ["cap"] * 100, fpr=0.01)["warnings"]


def test_predict_interrupted_with_ctrl_c(setup, tmp_path, monkeypatch, capsys):
    root, run, _ = setup
    import uniad_mini.app.predict as P

    real, calls = P._one, []

    def one(*args):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(P, "_one", one)
    out = tmp_path / "p"
    assert main(["predict", str(run), str(root / "cap" / "test"), "--out", str(out), "--quiet"]) == 130
    assert capsys.readouterr().err.strip().splitlines()[-1] == "uniad-mini predict: interrupted"
    assert len(rows(out)) == 1 and (out / "report.html").exists() and not (out / "predictions.csv.tmp").exists()


# ---- report.html --------------------------------------------------------------------------------


def test_report_is_self_contained_and_puts_misses_and_false_alarms_first(tmp_path):
    items = [{"title": t, "score": s, "label": lab, "decision": d, "tiles": []}
             for t, s, lab, d in [("ok", 5, 1, True), ("miss", 1, 1, False), ("alarm", 4, 0, True),
                                  ("worse miss", 0.5, 1, False), ("fine", 0.1, 0, False)]]
    assert [i["title"] for i in R.gallery_order(items)] == ["worse miss", "miss", "alarm", "ok", "fine"]
    tiles = R.tiles(torch.rand(3, 40, 50), torch.rand(40, 50), 0, 1, torch.rand(40, 50) > 0.5, torch.zeros(40, 50))
    assert [c for c, _ in tiles] == ["image", "heat map", "predicted mask", "ground truth"]
    page = R.write_report(tmp_path / "r.html", "t", [], (["class"], [["a"]]),
                          [R.histogram_svg([1, 2, 3], [0, 0, 1], 2.5, "h")],
                          [{**items[0], "tiles": tiles}]).read_text()
    assert not re.search(r"(src|href)=\"(https?:)?//", page) and "<link" not in page and "<script src" not in page
    assert "threshold 2.5" in page and page.count("data:image/png;base64,") == 4


@pytest.fixture(scope="module")
def browser():
    path, why = find_chromium()
    if path is None:
        pytest.skip(f"no headless browser: {why}")
    return path


@pytest.mark.slow  # an evaluate, a predict and three browser runs
def test_report_opens_in_a_headless_browser_without_console_errors(setup, browser, tmp_path):
    root, run, _ = setup
    out = tmp_path / "pred"
    assert main(["evaluate", str(run), str(root), "--quiet", "--no-pictures"]) == 0
    assert main(["predict", str(run), str(root), "--out", str(out), "--quiet"]) == 0
    for page in (run / "report.html", out / "report.html"):
        dom, console = dump_dom(browser, page)
        assert console == []  # no console message at all: no script error, nothing logged
        assert re.search(r'<span id="page-check" data-images="\d+">ok</span>', dom), dom[:2000]
        assert '<table id="metrics">' in dom and dom.count('<div class="item') > 0 and "<svg" in dom
    shot = tmp_path / "shot.png"
    assert screenshot(browser, out / "report.html", shot) == []
    assert Image.open(shot).size == (1280, 1400)
