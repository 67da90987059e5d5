"""Bad input loses nothing: the data, model-input and checkpoint rows of docs/reliability.md, one case each.

Each bad input is built in tmp_path with PIL / numpy. A refused input must give one line on stderr naming the
file or value, exit status 2, no traceback, and leave the disk as it was: nothing half-written, an earlier
checkpoint or results.json byte for byte untouched. An odd but valid input must be read right. The run rows
(locks, full disks, Ctrl-C, SIGKILL) and the determinism measurements are in tests/app/test_reliability_runs.py;
the last test here checks that the doc's table and the cases of both files match one to one.
"""
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import test_checks
import test_export
import test_layouts
import test_predict
import test_reliability_runs
from reliability_helpers import (FAST, SIZE, TINY, ckpt, copy_run, good_tree, noise, one_line_error, run,  # noqa: F401
                                 save, snapshot, synth, train_cli, truncated)
from uniad_mini import UniAD
from uniad_mini.app.cli import main
from uniad_mini.data import MVTecAD, load_image
from uniad_mini.app.runs import LOCK_NAME

DOC = Path(__file__).resolve().parents[2] / "docs" / "reliability.md"


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_thread):
    yield


# --------------------------------------------------------------------------------------------------
# Data: refused. (split, break(root) -> the fragment the one line must contain)


def _remove(*parts):
    return lambda root: shutil.rmtree(root.joinpath(*parts))


def _missing_root(root):
    shutil.rmtree(root)
    return f"data folder not found: {root}"


def _no_classes(root):
    shutil.rmtree(root / "widget")
    (root / "stuff").mkdir()
    return "no classes found"


def _without_train_good(root):
    _remove("widget", "train", "good")(root)
    return "empty class 'widget'"


def _without_test(root):
    _remove("widget", "test")(root)
    return "widget/test is missing"


def _test_only_good(root):
    _remove("widget", "test", "crack")(root)
    _remove("widget", "ground_truth")(root)
    return "all normal"


def _test_only_defects(root):
    _remove("widget", "test", "good")(root)
    return "all defective"


def _empty_class(root):
    (root / "hollow" / "train" / "good").mkdir(parents=True)
    return "empty class 'hollow'"


def _non_image(root):
    (root / "widget" / "train" / "good" / "notes.txt").write_text("hello")
    return "notes.txt"


def _stray_file(root):
    (root / "widget" / "train" / "readme.md").write_text("hello")
    return "unexpected file"


def _defect_in_train(root):
    save(root / "widget" / "train" / "crack" / "000.png", noise())
    return "train/crack"


def _zero_byte(root):
    (root / "widget" / "train" / "good" / "000.png").write_bytes(b"")
    return "000.png"


def _truncated_png(root):
    truncated(root / "widget" / "train" / "good" / "000.png", "PNG")
    return "000.png (OSError: image file is truncated"


def _truncated_jpeg(root):
    (root / "widget" / "train" / "good" / "000.png").unlink()
    truncated(root / "widget" / "train" / "good" / "000.jpg", "JPEG")
    return "000.jpg (OSError: image file is truncated"


def _tiny(root):
    save(root / "widget" / "train" / "good" / "000.png", noise(0, (8, 12)))
    return "000.png is 8x12 pixels"


def _mask_missing(root):
    (root / "widget" / "ground_truth" / "crack" / "000_mask.png").unlink()
    return "000_mask.png"


def _mask_other_size(root):
    save(root / "widget" / "ground_truth" / "crack" / "000_mask.png", np.zeros((16, 16), np.uint8))
    return "is 16x16 but its image"


def _mask_for_good(root):
    save(root / "widget" / "ground_truth" / "good" / "000_mask.png", np.zeros((SIZE, SIZE), np.uint8))
    return "mask for a normal image"


def _symlink_loop(root):
    (root / "widget" / "train" / "good" / "again").symlink_to(root / "widget" / "train")
    return "unexpected folder"


def _broken_symlink(root):
    (root / "widget" / "train" / "good" / "000.png").unlink()
    (root / "widget" / "train" / "good" / "000.png").symlink_to(root / "gone.png")
    return "broken link"


BAD_DATA = {
    "missing_root": ("train", _missing_root),
    "root_without_class_folders": ("train", _no_classes),
    "class_without_train_good": ("train", _without_train_good),
    "class_without_test": ("test", _without_test),
    "test_folder_with_only_good": ("test", _test_only_good),
    "test_folder_without_good": ("test", _test_only_defects),
    "empty_class": ("train", _empty_class),
    "non_image_file": ("train", _non_image),
    "stray_file_beside_the_image_folders": ("train", _stray_file),
    "defect_folder_in_train": ("train", _defect_in_train),
    "zero_byte_png": ("train", _zero_byte),
    "truncated_png": ("train", _truncated_png),
    "truncated_jpeg": ("train", _truncated_jpeg),
    "image_smaller_than_16_px": ("train", _tiny),
    "mask_missing": ("test", _mask_missing),
    "mask_of_another_size": ("test", _mask_other_size),
    "mask_for_a_good_image": ("test", _mask_for_good),
    "symlink_loop": ("train", _symlink_loop),
    "broken_symlink": ("train", _broken_symlink),
}


@pytest.mark.parametrize("case", BAD_DATA)
def test_bad_data_is_one_line_naming_the_file_exit_2_and_nothing_written(case, run, tmp_path, capsys):
    split, breaker = BAD_DATA[case]
    root = good_tree(tmp_path / "data")
    fragment = breaker(root)
    if split == "train":  # `train` refuses: the run folder is not created, or left empty
        out = tmp_path / "out"
        assert train_cli(root, out) == 2
        assert snapshot(out) == {} and not (out / LOCK_NAME).exists()
    else:  # `evaluate` refuses: the model and the earlier results.json stay byte for byte
        out = copy_run(run, tmp_path / "run")
        before = snapshot(out)
        assert main(["evaluate", str(out), str(root), *FAST, "--no-pictures"]) == 2
        assert snapshot(out) == before
    err = one_line_error(capsys, "train" if split == "train" else "evaluate")
    assert fragment in err, err


# --------------------------------------------------------------------------------------------------
# Data: odd but valid, read right


def _png_16bit(tmp_path):
    a = np.tile(np.linspace(0, 65535, SIZE).astype(np.uint16), (SIZE, 1))  # a horizontal ramp
    x = load_image(save(tmp_path / "a.png", a), size=None)
    assert Image.open(tmp_path / "a.png").mode.startswith("I;16")
    assert x.shape == (3, SIZE, SIZE) and x[0, 0, 0] == 0 and x[0, 0, -1] == 1  # 65535 -> 1, not clipped at 255


def _palette_png(tmp_path):
    p = Image.new("P", (SIZE, SIZE))
    p.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    p.paste(1, (0, 0, SIZE // 2, SIZE))
    x = load_image(save(tmp_path / "p.png", p), size=None)
    assert torch.allclose(x[:, 5, 5] * 255, torch.tensor([10.0, 200.0, 30.0])) and x[:, 5, -5].max() == 0


def _cmyk_jpeg(tmp_path):
    save(tmp_path / "c.jpg", Image.new("RGB", (SIZE, SIZE), (255, 0, 0)).convert("CMYK"))
    x = load_image(tmp_path / "c.jpg", size=None)
    assert Image.open(tmp_path / "c.jpg").mode == "CMYK"
    assert (x[:, 8, 8] - torch.tensor([1.0, 0.0, 0.0])).abs().max() < 0.05  # red stays red


def _rgba_png(tmp_path):
    a = np.zeros((SIZE, SIZE, 4), np.uint8)
    a[..., :3], a[:, : SIZE // 2, 3] = (200, 100, 50), 255  # left opaque, right transparent
    x = load_image(save(tmp_path / "a.png", a), size=None)
    assert torch.allclose(x[:, 0, 0] * 255, torch.tensor([200.0, 100.0, 50.0])) and x[:, :, SIZE // 2:].max() == 0


def _grayscale_png(tmp_path):
    x = load_image(save(tmp_path / "g.png", noise(channels=1)), size=None)
    assert x.shape == (3, SIZE, SIZE) and torch.equal(x[0], x[1]) and torch.equal(x[1], x[2])


def _exif_rotated_jpeg(tmp_path):
    im = Image.new("L", (48, 32), 0)
    im.paste(255, (0, 0, 24, 32))  # stored: left half white; EXIF 6 shows it turned 90 degrees clockwise
    exif = Image.Exif()
    exif[0x0112] = 6
    save(tmp_path / "w" / "test" / "crack" / "000.jpg", im, exif=exif)
    x = load_image(tmp_path / "w" / "test" / "crack" / "000.jpg", size=None)
    assert x.shape == (3, 48, 32) and x[0, :20].min() > 0.9 and x[0, 28:].max() < 0.1  # upright: white on top
    save(tmp_path / "w" / "test" / "good" / "000.png", noise(channels=1))
    save(tmp_path / "w" / "ground_truth" / "crack" / "000_mask.png", np.full((48, 32), 255, np.uint8))
    assert len(MVTecAD(tmp_path, "test", image_size=SIZE)) == 2  # the upright 32x48 mask matches


def _very_large_image(tmp_path):
    path = save(tmp_path / "big.jpg", noise(0, (4000, 3000)))
    seen = []
    import uniad_mini.images as data

    real = data.pil_to_tensor
    data.pil_to_tensor = lambda im, size, resize: seen.append(im.size) or real(im, size, resize)
    try:
        x = load_image(path)  # what MVTecAD items are: (3, 224, 224), never the full-size image
        y = load_image(path, size=None, max_side=2048)  # what `predict` reads
    finally:
        data.pil_to_tensor = real
    assert x.shape == (3, 224, 224) and seen[0] == (500, 375)  # decoded at 1/8 scale, not 4000 x 3000
    assert y.shape == (3, 1536, 2048)


def _non_square_image(tmp_path):
    root = good_tree(tmp_path, image="000.png")
    save(root / "widget" / "test" / "crack" / "000.png", noise(3, (48, 32)))
    save(root / "widget" / "ground_truth" / "crack" / "000_mask.png", np.full((32, 48), 255, np.uint8))
    item = MVTecAD(root, "test")[0]
    assert item["image"].shape == (3, 224, 224) and item["mask"].min() == 1
    scores, maps = UniAD(**TINY).predict(load_image(root / "widget/test/crack/000.png", size=None)[None])
    assert maps.shape == (1, 32, 48)


def _mask_values_0_and_1(tmp_path):
    root = good_tree(tmp_path)
    m = np.zeros((SIZE, SIZE), np.uint8)
    m[:8] = 1
    save(root / "widget" / "ground_truth" / "crack" / "000_mask.png", m)
    mask = MVTecAD(root, "test", image_size=SIZE)[0]["mask"]
    assert mask[:8].min() == 1 and mask[8:].max() == 0


def _symlinked_class_and_image(tmp_path):
    root = good_tree(tmp_path / "data")
    elsewhere = save(tmp_path / "elsewhere" / "photo.png", noise(42))
    (root / "widget" / "train" / "good" / "002.png").symlink_to(elsewhere)
    (root / "alias").symlink_to(root / "widget", target_is_directory=True)
    ds = MVTecAD(root, "train", image_size=SIZE)
    assert ds.classes == ["alias", "widget"] and len(ds) == 6  # each link followed once
    assert torch.equal(ds[2]["image"], load_image(elsewhere, size=SIZE))


def _spaces_and_non_ascii_names(tmp_path):
    root = good_tree(tmp_path / "données", cls="pièce", defect="rayure fine", image="éclat 01.png")
    ds = MVTecAD(root, "test", image_size=SIZE)
    item = ds[ds.labels.index(1)]
    assert item["path"].endswith("rayure fine/éclat 01.png") and item["label"] == 1 and item["mask"].sum() > 0


VALID_IMAGES = {
    "png_16_bit": _png_16bit,
    "palette_png": _palette_png,
    "cmyk_jpeg": _cmyk_jpeg,
    "rgba_png": _rgba_png,
    "grayscale_png": _grayscale_png,
    "exif_rotated_jpeg": _exif_rotated_jpeg,
    "very_large_image": _very_large_image,
    "non_square_image": _non_square_image,
    "mask_values_0_and_1": _mask_values_0_and_1,
    "symlinked_class_and_image": _symlinked_class_and_image,
    "spaces_and_non_ascii_names": _spaces_and_non_ascii_names,
}


@pytest.mark.parametrize("case", VALID_IMAGES)
def test_odd_but_valid_images_are_read_right(case, tmp_path):
    VALID_IMAGES[case](tmp_path)


# --------------------------------------------------------------------------------------------------
# Model input: a ValueError of one line that says what to change


def _inf():
    x = torch.rand(1, 3, SIZE, SIZE)
    x[0, 1, 2, 3] = float("inf")
    return x


BAD_INPUT = {
    "nan_pixels": (lambda: torch.full((1, 3, SIZE, SIZE), float("nan")), "NaN or inf"),
    "inf_pixels": (_inf, "NaN or inf"),
    "values_outside_0_1": (lambda: torch.rand(1, 3, SIZE, SIZE) * 255, r"must lie in [0, 1]"),
    "uint8_tensor": (lambda: torch.randint(0, 255, (1, 3, SIZE, SIZE), dtype=torch.uint8), "divide uint8 by 255"),
    "wrong_channel_count": (lambda: torch.rand(1, 4, SIZE, SIZE), "(B, 3, H, W)"),
    "batch_of_zero_images": (lambda: torch.rand(0, 3, SIZE, SIZE), "empty batch"),
    "tensor_smaller_than_16_px": (lambda: torch.rand(1, 3, 8, SIZE), "at least 16 x 16"),
}


@pytest.mark.parametrize("case", BAD_INPUT)
def test_bad_model_input_is_a_one_line_value_error(case):
    make, fragment = BAD_INPUT[case]
    with pytest.raises(ValueError) as e:
        UniAD(**TINY).predict(make())
    assert fragment in str(e.value) and "\n" not in str(e.value)


def test_grid_too_small_for_the_neighbor_window(tmp_path, capsys, synth):
    with pytest.raises(ValueError, match="7x7 neighbor window blocks every key .* 2x2 grid"):
        UniAD(**TINY, image_size=32)
    assert train_cli(synth, tmp_path / "out", "--set", "image_size=32") == 2
    assert "larger input image" in one_line_error(capsys, "train") and not (tmp_path / "out").exists()


# --------------------------------------------------------------------------------------------------
# Checkpoints: refused by `evaluate` in one line, the file untouched, no results.json


class RunsCode:
    """A pickle that creates a file when loaded without weights_only: the kind of file torch.load can execute."""

    def __init__(self, target):
        self.target = str(target)

    def __reduce__(self):
        return (open, (self.target, "w"))


BAD_CHECKPOINTS = {
    "checkpoint_missing": (lambda path, run: path.unlink(), "no checkpoint at"),
    "checkpoint_truncated": (lambda path, run: path.write_bytes(path.read_bytes()[:5000]), "truncated"),
    "another_programs_pt": (lambda path, run: torch.save({"state_dict": {"w": torch.ones(2)}}, path),
                            "is not a uniad_mini checkpoint (no config/feature_mean"),
    "checkpoint_weights_of_another_config": (
        lambda path, run: torch.save({**ckpt(run), "config": {**ckpt(run)["config"], "hidden_dim": 64}}, path),
        "does not match its own config"),
    "checkpoint_config_this_version_refuses": (
        lambda path, run: torch.save({**ckpt(run), "config": {**ckpt(run)["config"], "schedule": "abacus"}}, path),
        "cannot build: unknown schedule 'abacus'"),
    "checkpoint_of_a_newer_format": (lambda path, run: torch.save({**ckpt(run), "format": 99}, path),
                                     "checkpoint format 99; this uniad_mini reads up to 3: upgrade"),
    "checkpoint_of_random_bytes": (lambda path, run: path.write_bytes(b"not a checkpoint"),
                                   "is not a uniad_mini checkpoint, or it is truncated (UnpicklingError"),
    "pickle_that_would_run_code": (
        lambda path, run: torch.save({**ckpt(run), "train_state": RunsCode(path.parent / "pwned")}, path),
        "asks to run code when loaded (io.open); refused"),
}


@pytest.mark.parametrize("case", BAD_CHECKPOINTS)
def test_bad_checkpoint_is_refused_in_one_line_and_left_as_it_is(case, run, synth, tmp_path, capsys):
    change, fragment = BAD_CHECKPOINTS[case]
    out = copy_run(run, tmp_path / "run", results=False)
    change(out / "model.pt", run)
    before = snapshot(out)
    assert main(["evaluate", str(out), str(synth), *FAST, "--no-pictures"]) == 2
    assert fragment in one_line_error(capsys, "evaluate")
    assert snapshot(out) == before and not (out / "pwned").exists()  # no results.json; no code ran
    if case == "pickle_that_would_run_code":  # the file is a real exploit: an unsafe load runs it
        torch.load(out / "model.pt", weights_only=False)
        assert (out / "pwned").exists()


def test_checkpoint_of_the_older_format_is_migrated(run, tmp_path):
    old = {k: v for k, v in ckpt(run).items() if k != "format"}  # format 1: the same keys, no "format"
    torch.save(old, tmp_path / "old.pt")
    x = torch.rand(1, 3, 64, 64)
    torch.testing.assert_close(UniAD.load(tmp_path / "old.pt").predict(x), UniAD.load(run / "model.pt").predict(x))


# --------------------------------------------------------------------------------------------------
# The table in docs/reliability.md and the cases of both files, one to one

ROW_FUNCTIONS = ["grid_too_small_for_the_neighbor_window", "checkpoint_of_the_older_format_is_migrated"]


def doc_rows() -> list[str]:
    """The case ids of the table: the first cell of each row, in backticks."""
    return re.findall(r"^\| `([a-z0-9_]+)` \|", DOC.read_text(), flags=re.M)


def test_the_doc_table_and_the_cases_match_one_to_one():
    elsewhere = [test_reliability_runs, test_checks, test_layouts, test_predict, test_export]  # modules whose ROWS are tests of their own
    cases = [*BAD_DATA, *VALID_IMAGES, *BAD_INPUT, *BAD_CHECKPOINTS, *ROW_FUNCTIONS, *(r for m in elsewhere for r in m.ROWS)]
    assert all(f"test_{name}" in globals() for name in ROW_FUNCTIONS)
    assert all(hasattr(m, f"test_{name}") for m in elsewhere for name in m.ROWS)
    assert sorted(doc_rows()) == sorted(cases) and len(set(cases)) == len(cases) >= 30
