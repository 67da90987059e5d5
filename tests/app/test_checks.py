"""Problems found before the first epoch, all of them at once (checks.py), and defect images with an empty mask
counted for the image metrics only (evaluation.pixel_labelled, left_out)."""
import json

import numpy as np
import pytest
import torch

from reliability_helpers import FAST, SIZE, TINY, copy_run, good_tree, noise, one_line_error, run, save, snapshot, synth, train_cli  # noqa: F401
from uniad_mini import UniAD
from uniad_mini import metrics as M
from uniad_mini.checks import check_data, open_checked
from uniad_mini.app.cli import main
from uniad_mini.data import MVTecAD
from uniad_mini.errors import DataError
from uniad_mini.evaluation import evaluate, left_out, pixel_labelled
from uniad_mini.features import Cache

# docs/reliability.md rows whose test lives here (tests/app/test_reliability.py matches the table to the cases)
ROWS = ["all_zero_mask_for_a_defect", "several_problems_in_both_splits", "unreadable_test_image_found_before_training",
        "fit_reads_each_image_once_and_reports_every_problem_before_training"]


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_thread):
    yield


def with_empty_masks(root, n=2):
    """good_tree plus `n` more defect images of class widget whose masks mark no pixel (the Magnetic Tile case)."""
    good_tree(root)
    for k in range(1, n + 1):
        save(root / "widget" / "test" / "uneven" / f"{k:03d}.png", noise(20 + k))
        save(root / "widget" / "ground_truth" / "uneven" / f"{k:03d}_mask.png", np.zeros((SIZE, SIZE), np.uint8))
    save(root / "widget" / "test" / "good" / "001.png", noise(30))
    return root


def test_all_zero_mask_for_a_defect(run, tmp_path, capsys):
    root = with_empty_masks(tmp_path / "data")
    out = copy_run(run, tmp_path / "run")
    assert main(["evaluate", str(out), str(root), *FAST, "--no-pictures"]) == 0
    err = capsys.readouterr().err
    assert "2 defect images with an empty mask: counted in the image metrics, left out of the pixel metrics" in err
    saved = json.loads((out / "results.json").read_text())
    empty = sorted(str(p) for p in (root / "widget" / "test" / "uneven").iterdir())
    assert saved["left_out"] == {k: empty for k in ("pixel_auroc", "pixel_ap", "pixel_f1_max", "aupro")}
    # the oracle: image metrics over all 5 test images, pixel metrics over the 3 without an empty mask
    model = UniAD.load(out / "model.pt")
    test = MVTecAD(root, "test", image_size=model.config.image_size)
    cache = model.cache(test, progress=False)
    scores, maps = model.score_features(cache.features)
    keep = [i for i, p in enumerate(cache.paths) if p not in empty]
    expected = M.anomaly_metrics(scores, cache.labels, maps[keep], cache.masks[keep])
    got = saved["results"]["widget"]
    assert got["image_auroc"] == M.auroc(scores, cache.labels) and len(cache) == 5 and len(keep) == 3
    assert all(abs(got[k] - v) < 1e-12 for k, v in expected.items())


def test_pixel_labelled_and_left_out_by_hand():
    masks = torch.zeros(4, 8, 8, dtype=torch.uint8)
    masks[1, 2, 2] = 1  # a defect with a mask
    cache = Cache(torch.zeros(4, 1, 1, 1), torch.tensor([0, 1, 1, 0]), masks, ["a"] * 4, ["n0", "d1", "d2", "n3"])
    assert pixel_labelled(cache).tolist() == [True, True, False, True]
    assert left_out(cache)["aupro"] == ["d2"] and "image_auroc" not in left_out(cache)


def test_a_class_whose_defects_all_lack_masks_has_nan_pixel_metrics_and_the_mean_skips_it():
    masks = torch.zeros(4, 8, 8, dtype=torch.uint8)
    masks[3, :4] = 1
    cache = Cache(torch.zeros(4, 1, 1, 1), torch.tensor([0, 1, 0, 1]), masks, ["a", "a", "b", "b"])
    maps = torch.rand(4, 8, 8)
    out = evaluate(torch.tensor([0.1, 0.9, 0.2, 0.8]), maps, cache)
    assert out["a"]["image_auroc"] == 1.0 and out["a"]["pixel_auroc"] != out["a"]["pixel_auroc"]
    assert out["mean"]["pixel_auroc"] == out["b"]["pixel_auroc"] and out["mean"]["image_auroc"] == 1.0


def break_four_ways(root):
    """good_tree with four problems: an unreadable training image, a mask without an image, a defect image
    without its mask, a mask of another size than its image."""
    good_tree(root)
    (root / "widget" / "train" / "good" / "001.png").write_bytes(b"not a png")
    save(root / "widget" / "ground_truth" / "crack" / "007_mask.png", np.zeros((SIZE, SIZE), np.uint8))
    save(root / "widget" / "test" / "crack" / "002.png", noise(12))
    save(root / "widget" / "test" / "dent" / "000.png", noise(13))
    save(root / "widget" / "ground_truth" / "dent" / "000_mask.png", np.zeros((16, 16), np.uint8))
    return ["train/good/001.png", "007_mask.png has no image", "test/crack/002.png", "is 16x16 but its image"]


def test_several_problems_in_both_splits(tmp_path, capsys):
    fragments = break_four_ways(tmp_path / "data")
    out = tmp_path / "out"
    assert train_cli(tmp_path / "data", out) == 2
    err = one_line_error(capsys, "train")
    assert "4 problems in the data" in err and all(f in err for f in fragments), err
    assert not out.exists()  # refused before the run folder: nothing trained, nothing written
    with pytest.raises(DataError) as e:
        open_checked(tmp_path / "data")
    assert len(e.value.problems) == 4


def test_unreadable_test_image_found_before_training(tmp_path, capsys):
    root = good_tree(tmp_path / "data")
    (root / "widget" / "test" / "good" / "000.png").write_bytes(b"")
    assert train_cli(root, tmp_path / "out") == 2
    assert "test/good/000.png" in one_line_error(capsys, "train")
    assert not (tmp_path / "out").exists()


def test_fit_reads_each_image_once_and_reports_every_problem_before_training(tmp_path, monkeypatch):
    root = good_tree(tmp_path / "data")
    (root / "widget" / "train" / "good" / "000.png").write_bytes(b"")
    (root / "widget" / "train" / "good" / "001.png").write_bytes(b"\x89PNG")
    (root / "widget" / "test" / "good" / "000.png").write_bytes(b"GIF8")
    reads = []
    original = MVTecAD.__getitem__
    monkeypatch.setattr(MVTecAD, "__getitem__", lambda self, i: reads.append((self.split, i)) or original(self, i))
    model = UniAD(**TINY, epochs=1)
    train, test = MVTecAD(root, "train"), MVTecAD(root, "test")
    with pytest.raises(DataError) as e:
        model.fit(train, progress=False, check=[test])  # the test split checked with it, before any epoch
    assert len(e.value.problems) == 3 and model.train_state["epoch"] == 0
    assert sorted(reads) == sorted(set(reads))  # every image of both splits read once, no more
    assert {i for split, i in reads if split == "train"} == set(range(len(train)))
    # the test split checked by itself: its notes say what is odd but valid
    with_empty_masks(tmp_path / "other", n=1)
    assert check_data(MVTecAD(tmp_path / "other", "test")) == [
        "1 defect image in the test split with an empty mask (or none): kept for the image metrics, left out of "
        "the pixel metrics and AUPRO"]


def test_evaluate_lists_every_unreadable_test_image_in_its_one_pass(tmp_path):
    root = good_tree(tmp_path / "data")
    (root / "widget" / "test" / "good" / "000.png").write_bytes(b"")
    (root / "widget" / "test" / "good" / "001.png").write_bytes(b"GIF8")
    model = UniAD(**TINY)
    test = MVTecAD(root, "test")  # indexing does not open normal images: these two fail when decoded
    with pytest.raises(DataError) as e:
        model.evaluate(test, progress=False)
    assert len(e.value.problems) == 2
