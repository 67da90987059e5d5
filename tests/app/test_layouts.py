"""Other layouts read as they are: the folder layout described in TOML, VisA's split table, and non-square images
(layouts.py, geometry.py). The oracle for the readers: the same images written in the MVTec AD layout give
the same items, pixel for pixel. Each layout then trains and evaluates through the command line."""
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from reliability_helpers import FAST, SETS, TINY, noise, save
from uniad_mini import UniAD
from uniad_mini.app.cli import main
from uniad_mini.data import MVTecAD
from uniad_mini.errors import DataError
from uniad_mini.geometry import map_to_image, placement, square_in_image, square_map_size, to_square
from uniad_mini.layouts import FOLDER_KEYS, FolderAD, VisA, open_data, read_toml
from uniad_mini.synthetic import write_mvtec

# docs/reliability.md rows whose test lives here (tests/app/test_reliability.py matches the table to the cases)
ROWS = ["toml_folder_layout_masks_by_stem_png_and_bmp", "visa_layout", "non_square_800_x_1600_images"]


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_thread):
    yield


@pytest.fixture(scope="module")
def mvtec(tmp_path_factory):
    """Two synthetic classes in the MVTec AD layout: 2 training, 1 normal and 2 defective test images each."""
    return write_mvtec(tmp_path_factory.mktemp("mvtec"), classes=["cap", "carpet"], n_train=2, n_test_good=1,
                       n_test_bad=2)


def copy(src: Path, dst: Path) -> Path:
    dst.parent.mkdir(parents=True, exist_ok=True)
    return Path(shutil.copy(src, dst))


def as_folders(mvtec: Path, root: Path) -> Path:
    """The same images in the folder layout, described by root/data.toml. cap: one folder per defect kind,
    masks NAME_mask.png in kind folders, paths relative to the file. carpet: the defect images themselves,
    flat masks NAME.* in other formats (BMP, BMP data behind a .png name, 16-bit grayscale PNG), absolute paths."""
    for cls in ("cap", "carpet"):
        for p in (mvtec / cls / "train" / "good").iterdir():
            copy(p, root / cls / "normal" / p.name)
        for p in (mvtec / cls / "test" / "good").iterdir():
            copy(p, root / cls / "normal_test" / p.name)
    for kind in (mvtec / "cap" / "test").iterdir():
        if kind.name != "good":
            for p in kind.iterdir():
                copy(p, root / "cap" / "defects" / kind.name / p.name)
                copy(mvtec / "cap" / "ground_truth" / kind.name / f"{p.stem}_mask.png",
                     root / "cap" / "masks" / kind.name / f"{p.stem}_mask.png")
    writers = [lambda m, d, s: m.save(d / f"{s}.bmp"),  # a BMP
               lambda m, d, s: m.save(d / f"{s}.png", format="BMP"),  # BMP data behind a .png name
               lambda m, d, s: Image.fromarray((np.asarray(m) > 0).astype(np.uint16) * 40000).save(d / f"{s}_mask.png")]
    k = 0
    for kind in sorted((mvtec / "carpet" / "test").iterdir()):
        if kind.name == "good":
            continue
        for p in sorted(kind.iterdir()):
            name = f"{kind.name}_{p.stem}"  # the defect kinds share one flat folder
            copy(p, root / "carpet" / "defects" / f"{name}.png")
            (root / "carpet" / "masks").mkdir(parents=True, exist_ok=True)
            with Image.open(mvtec / "carpet" / "ground_truth" / kind.name / f"{p.stem}_mask.png") as m:
                writers[k % 3](m, root / "carpet" / "masks", name)
            k += 1
    text = "\n".join(['[cap]', 'normal_dir = "cap/normal"', 'normal_test_dir = "cap/normal_test"',
                      'abnormal_dir = "cap/defects"', 'mask_dir = "cap/masks"', '',
                      '[carpet]'] + [f'{key} = "{(root / "carpet" / d).as_posix()}"' for key, d in
                                     [("normal_dir", "normal"), ("normal_test_dir", "normal_test"),
                                      ("abnormal_dir", "defects"), ("mask_dir", "masks")]])
    (root / "data.toml").write_text(text + "\n")
    return root / "data.toml"


def same_items(a, b):
    """Two data sets hold the same images and masks, pixel for pixel, with the same labels, in some order."""
    key = lambda d: sorted(range(len(d)), key=lambda i: (d.samples[i].cls, d.samples[i].label, Path(d.samples[i].path).stem))
    assert len(a) == len(b) and a.classes == b.classes
    for i, j in zip(key(a), key(b)):
        x, y = a[i], b[j]
        assert x["label"] == y["label"] and x["cls"] == y["cls"]
        assert torch.equal(x["image"], y["image"]) and torch.equal(x["mask"], y["mask"]), (x["path"], y["path"])


def train_and_evaluate(data, tmp_path, *extra, classes=()) -> dict:
    out, only = tmp_path / "run", ["--classes", *classes] if classes else []
    assert main(["train", str(data), "--out", str(out), "--epochs", "1", *FAST, *SETS, *extra, *only]) == 0
    assert main(["evaluate", str(out), str(data), *FAST, "--no-pictures", *only]) == 0
    return json.loads((out / "results.json").read_text())


# --------------------------------------------------------------------------------------------------
# The folder layout in TOML


def test_toml_folder_layout_masks_by_stem_png_and_bmp(mvtec, tmp_path):
    toml = as_folders(mvtec, tmp_path / "folders")
    masks = sorted(p.name for p in (tmp_path / "folders" / "carpet" / "masks").iterdir())
    assert any(m.endswith(".bmp") for m in masks) and any(not m.endswith("_mask.png") for m in masks)
    for split in ("train", "test"):
        same_items(open_data(toml, split), MVTecAD(mvtec, split))
    results = train_and_evaluate(toml, tmp_path)
    assert set(results["results"]) == {"cap", "carpet", "mean"}
    assert 0 <= results["results"]["mean"]["pixel_auroc"] <= 1 and "left_out" not in results


def test_bench_quality_takes_the_toml_and_records_what_it_left_out(mvtec, tmp_path):
    toml = as_folders(mvtec, tmp_path / "folders")
    toml.write_text(toml.read_text().replace('mask_dir = "cap/masks"\n', ""))
    out = tmp_path / "bench"
    assert main(["bench-quality", str(toml), "--epochs", "1", "--out", str(out), *FAST, *SETS]) == 0
    saved = json.loads((out / "results.json").read_text())
    assert set(saved["results"]["unified"][0]) == {"cap", "carpet", "mean"} and len(saved["left_out"]["aupro"]) == 2


def test_a_toml_class_without_masks_counts_for_the_image_metrics_only(mvtec, tmp_path):
    toml = as_folders(mvtec, tmp_path / "folders")
    text = toml.read_text().replace('mask_dir = "cap/masks"\n', "")
    toml.write_text(text)
    test = open_data(toml, "test")
    assert all(s.mask_path is None for s in test.samples if s.cls == "cap" and s.label == 1)
    results = train_and_evaluate(toml, tmp_path)
    cap = results["results"]["cap"]
    assert cap["image_auroc"] is not None and cap["pixel_auroc"] is None and cap["aupro"] is None  # NaN: null
    assert len(results["left_out"]["aupro"]) == 2 and "image_auroc" not in results["left_out"]


def test_folder_layout_problems_are_listed_together(tmp_path):
    save(tmp_path / "normal" / "a.png", noise(0))
    save(tmp_path / "good_test" / "a.png", noise(1))
    save(tmp_path / "bad" / "b.png", noise(2))
    save(tmp_path / "bad" / "c.png", noise(3))
    save(tmp_path / "masks" / "b_mask.png", noise(4, channels=1))
    save(tmp_path / "masks" / "d_mask.png", noise(5, channels=1))  # no image d
    spec = {"x": {"normal_dir": tmp_path / "normal", "normal_test_dir": tmp_path / "good_test",
                  "abnormal_dir": tmp_path / "bad", "mask_dir": tmp_path / "masks", "mask_folder": "typo"}}
    with pytest.raises(DataError) as e:
        FolderAD(spec, "test")
    assert len(e.value.problems) == 3, e.value.problems
    assert "unknown key 'mask_folder'" in str(e.value) and "c.png" in str(e.value) and "d_mask.png has no image" in str(e.value)


def test_the_readme_toml_block_reads_with_every_key(tmp_path):
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    block = re.search(r"```toml\n(.*?)```", readme, re.S).group(1)
    assert len(block.strip().splitlines()) == 5
    (tmp_path / "d.toml").write_text(block)
    spec = read_toml(tmp_path / "d.toml")
    assert list(spec) == ["juice_bottle"] and set(spec["juice_bottle"]) == set(FOLDER_KEYS)
    assert spec["juice_bottle"]["normal_dir"] == tmp_path / "juice_bottle" / "train"  # relative to the file


def test_a_toml_reads_without_pythons_tomllib_as_on_python_3_10(tmp_path, monkeypatch):
    """Python 3.10 has no tomllib; setup.py installs tomli there, the same parser under its own name."""
    import sys

    (tmp_path / "d.toml").write_text('[widget]\nnormal_dir = "widget/train"\n')
    with_tomllib = read_toml(tmp_path / "d.toml")
    monkeypatch.setitem(sys.modules, "tomllib", None)  # `import tomllib` now fails, as it does on 3.10
    assert read_toml(tmp_path / "d.toml") == with_tomllib == {"widget": {"normal_dir": tmp_path / "widget" / "train"}}


def test_fit_and_evaluate_take_a_data_root_of_any_layout(mvtec, tmp_path):
    toml = as_folders(mvtec, tmp_path / "folders")
    model = UniAD(**TINY, epochs=1).fit(str(toml), progress=False)
    assert set(model.evaluate(toml, progress=False)) == {"cap", "carpet", "mean"}
    with pytest.raises(ValueError, match="unknown resize 'stretch'"):
        UniAD(**TINY, resize="stretch")


@pytest.mark.parametrize("text,fragment", [("[x\nnormal_dir = 1", "is not valid TOML"),
                                           ('normal_dir = "a"', "one [CLASS] table per class")])
def test_a_bad_toml_file_is_one_line(tmp_path, capsys, text, fragment):
    (tmp_path / "d.toml").write_text(text)
    assert main(["train", str(tmp_path / "d.toml"), "--out", str(tmp_path / "run"), *FAST]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("uniad-mini train: error: ") and fragment in err and "\n" not in err


# --------------------------------------------------------------------------------------------------
# VisA


def as_visa(mvtec: Path, root: Path) -> Path:
    """The same images in the VisA layout: OBJECT/Data/Images/{Normal,Anomaly}, OBJECT/Data/Masks/Anomaly and
    split_csv/1cls.csv with object,split,label,image,mask (masks of 0 / 1 values, as VisA's are)."""
    rows = ["object,split,label,image,mask"]
    for cls in ("cap", "carpet"):
        for split in ("train", "test"):
            for kind in sorted((mvtec / cls / split).iterdir()):
                for p in sorted(kind.iterdir()):
                    name = f"{split}_{kind.name}_{p.stem}.png"
                    if kind.name == "good":
                        image = copy(p, root / cls / "Data" / "Images" / "Normal" / name)
                        rows.append(f"{cls},{split},normal,{image.relative_to(root).as_posix()},")
                        continue
                    image = copy(p, root / cls / "Data" / "Images" / "Anomaly" / name)
                    mask = root / cls / "Data" / "Masks" / "Anomaly" / name
                    mask.parent.mkdir(parents=True, exist_ok=True)
                    with Image.open(mvtec / cls / "ground_truth" / kind.name / f"{p.stem}_mask.png") as m:
                        Image.fromarray((np.asarray(m) > 0).astype(np.uint8)).save(mask)
                    rows.append(f"{cls},{split},anomaly,{image.relative_to(root).as_posix()},"
                                f"{mask.relative_to(root).as_posix()}")
    (root / "split_csv").mkdir(parents=True)
    (root / "split_csv" / "1cls.csv").write_text("\n".join(rows) + "\n")
    return root


def test_visa_layout(mvtec, tmp_path):
    root = as_visa(mvtec, tmp_path / "visa")
    for split in ("train", "test"):
        data = open_data(root, split)
        assert isinstance(data, VisA)
        same_items(data, MVTecAD(mvtec, split))
        same_items(open_data(root / "split_csv" / "1cls.csv", split), data)  # the CSV given directly
    results = train_and_evaluate(root, tmp_path, classes=["carpet"])
    assert set(results["results"]) == {"carpet", "mean"}


def test_a_visa_table_without_its_columns_or_a_visa_folder_without_its_table_is_refused(tmp_path):
    (tmp_path / "t.csv").write_text("object,split,image\n")
    with pytest.raises(DataError, match="lacks the column.s. label, mask"):
        open_data(tmp_path / "t.csv")
    (tmp_path / "visa" / "candle" / "Data" / "Images").mkdir(parents=True)
    with pytest.raises(DataError, match="looks like the VisA layout .* but has no split_csv/1cls.csv"):
        open_data(tmp_path / "visa")


def test_an_unknown_resize_is_one_line_before_any_work(tmp_path, capsys):
    assert main(["train", str(tmp_path / "none"), "--out", str(tmp_path / "run"), "--set", "resize=stretch", *FAST]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("uniad-mini train: error: unknown resize 'stretch'") and "\n" not in err


def test_visa_row_problems_are_listed_together(tmp_path):
    save(tmp_path / "a.png", noise(0))
    save(tmp_path / "b.png", noise(1))
    rows = ["object,split,label,image,mask", "x,test,normal,a.png,", "x,test,anomaly,b.png,",
            "x,test,anomaly,gone.png,m.png", "x,test,broken,a.png,"]
    (tmp_path / "t.csv").write_text("\n".join(rows) + "\n")
    with pytest.raises(DataError) as e:
        open_data(tmp_path / "t.csv", "test")
    assert [p.split(":")[0] for p in e.value.problems[:3]] == [f"{tmp_path / 't.csv'} row {n}" for n in (3, 4, 5)]
    assert "has no mask" in e.value.problems[0] and "image file not found" in e.value.problems[1]
    assert "neither normal nor anomaly" in e.value.problems[2] and "all normal" in e.value.problems[3]


# --------------------------------------------------------------------------------------------------
# Non-square images


@pytest.mark.parametrize("resize", ["squash", "crop", "pad"])
def test_placement_and_map_to_image_are_inverse(resize):
    h, w, S = 30, 70, 16
    x = torch.rand(2, h, w)
    L, P, Q = square_in_image(h, w, S, resize)
    assert square_map_size(h, w, S, resize) == ((h, w) if resize == "squash" else (L, L))
    if resize == "squash":
        assert torch.equal(map_to_image(x, h, w, S, resize), x)
        return
    square = torch.nn.functional.pad(x, (-P, L - w + P, -Q, L - h + Q))  # the image on the L x L square
    back = map_to_image(square, h, w, S, resize)
    assert back.shape == (2, h, w)
    if resize == "pad":
        assert torch.equal(back, x)
    else:  # crop: the centre L x L comes back, the ends the model never saw are 0
        assert torch.equal(back[..., P:P + L], x[..., P:P + L]) and back[..., :P].abs().sum() == 0


@pytest.mark.parametrize("resize", ["squash", "crop", "pad"])
def test_masks_follow_their_images_geometry(tmp_path, resize):
    # a white box on black and its mask: after loading, the box and the mask cover the same pixels
    image = np.zeros((80, 160, 3), np.uint8)
    image[30:50, 60:140] = 255
    root = tmp_path / "d"
    save(root / "w" / "test" / "good" / "0.png", np.zeros((80, 160, 3), np.uint8))
    save(root / "w" / "test" / "box" / "0.png", image)
    save(root / "w" / "ground_truth" / "box" / "0_mask.png", image[..., 0])
    item = MVTecAD(root, "test", image_size=64, resize=resize)[0]
    assert item["image"].shape == (3, 64, 64)
    bright, mask = item["image"][0] > 0.5, item["mask"] > 0
    assert (bright ^ mask).float().mean() < 0.02 and mask.any()  # at most the resampled edge differs
    sw, sh, x, y = placement(160, 80, 64, resize)
    if resize == "pad":  # the padding is black and unmasked
        assert item["image"][:, : y].abs().sum() == 0 and not item["mask"][: y].any()


def write_wide(root: Path) -> Path:
    """MVTec-layout class of 800 x 1600 images: 3 training, 1 normal and 1 defective test image."""
    rng = np.random.default_rng(0)
    base = rng.integers(60, 200, (800, 1600, 3), dtype=np.uint8)
    for k in range(3):
        save(root / "wide" / "train" / "good" / f"{k}.png", base)
    save(root / "wide" / "test" / "good" / "0.png", base)
    bad = base.copy()
    bad[300:500, 1200:1400] = 255
    save(root / "wide" / "test" / "spot" / "0.png", bad)
    mask = np.zeros((800, 1600), np.uint8)
    mask[300:500, 1200:1400] = 255
    save(root / "wide" / "ground_truth" / "spot" / "0_mask.png", mask)
    return root


@pytest.mark.parametrize("resize", ["squash", "crop", "pad"])
def test_non_square_800_x_1600_images(tmp_path_factory, tmp_path, resize):
    root = tmp_path_factory.getbasetemp() / "wide"
    if not root.exists():
        write_wide(root)
    results = train_and_evaluate(root, tmp_path, f"--set=resize={resize}")
    assert results["config"]["resize"] == resize and set(results["results"]) == {"wide", "mean"}
    model = UniAD.load(tmp_path / "run" / "model.pt")
    image = torch.from_numpy(np.array(Image.open(root / "wide/test/spot/0.png"))).permute(2, 0, 1)[None] / 255.0
    scores, maps = model.predict(image)
    assert maps.shape == (1, 800, 1600) and torch.isfinite(maps).all()
    if resize == "crop":  # the ends of the long side are not seen: their map is 0
        assert maps[0, :, :399].abs().sum() == 0 and maps[0, :, 400:1200].min() > 0
    # the map over the image's own pixels is the square's map put back: the square's own map, resampled
    S = model.config.image_size
    square = to_square(image, S, resize)
    _, square_map = model.score_features(model.features(square), size=(S, S))
    sw, sh, x, y = placement(1600, 800, S, resize)
    inside = square_map[0, max(y, 0):max(y, 0) + min(sh, S), max(x, 0):max(x, 0) + min(sw, S)]
    seen = maps[0][:, 400:1200] if resize == "crop" else maps[0]
    assert abs(inside.mean().item() - seen.mean().item()) < 0.05 * inside.mean().item()


def test_a_calibration_folder_is_read_in_the_models_geometry(tmp_path):
    from uniad_mini.app.calibrate import normal_folder
    from uniad_mini.data import load_image

    path = save(tmp_path / "normal" / "a.png", noise(0, (64, 32)))
    model = UniAD(**TINY, resize="pad")
    item = normal_folder(model, tmp_path / "normal", None)[0]
    assert torch.equal(item["image"], load_image(path, 224, resize="pad")) and item["image"][:, :50].sum() == 0  # bars
