"""Reading images, masks and the MVTec AD layout; the synthetic data set.

Small MVTec-layout folders are painted with PIL into tmp_path; the real data (shared/data) is only
indexed, and those tests skip when it is absent.
"""
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from uniad_mini import shapes, synthetic
from uniad_mini.data import MVTecAD, collate, load_image, load_mask
from uniad_mini.errors import DataError
from uniad_mini.synthetic import SyntheticAD, generate, write_mvtec

SIZE = 32


def save(path: Path, image) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    (image if isinstance(image, Image.Image) else Image.fromarray(image)).save(path)
    return path


def noise_rgb(seed=0, size=SIZE):
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


def make_class(root: Path, cls="widget", n_train=2, defect="crack"):
    """root/cls with n_train normal training images, one normal and one defective test image."""
    for k in range(n_train):
        save(root / cls / "train" / "good" / f"{k:03d}.png", noise_rgb(k))
    save(root / cls / "test" / "good" / "000.png", noise_rgb(10))
    save(root / cls / "test" / defect / "000.png", noise_rgb(11))
    mask = np.zeros((SIZE, SIZE), np.uint8)
    mask[4:10, 5:12] = 255
    save(root / cls / "ground_truth" / defect / "000_mask.png", mask)
    return root


# --------------------------------------------------------------------------------------------------
# Single files
# --------------------------------------------------------------------------------------------------


def test_grayscale_image_becomes_three_equal_rgb_channels(tmp_path):
    gray = np.random.default_rng(0).integers(0, 256, (SIZE, SIZE), dtype=np.uint8)
    x = load_image(save(tmp_path / "g.png", gray), size=None)
    assert x.shape == (3, SIZE, SIZE) and x.dtype == torch.float32
    assert torch.equal(x[0], x[1]) and torch.equal(x[1], x[2])
    assert torch.allclose(x[0], torch.from_numpy(gray / 255.0).float())


def test_16bit_grayscale_is_scaled_to_the_unit_range(tmp_path):
    a = np.zeros((SIZE, SIZE), np.uint16)
    a[:, SIZE // 2:] = 65535
    x = load_image(save(tmp_path / "g16.png", a), size=None)
    assert x.shape == (3, SIZE, SIZE)
    assert x[:, :, : SIZE // 2].max() == 0 and torch.allclose(x[:, :, SIZE // 2:], torch.ones(1))


def test_rgba_is_composited_over_black(tmp_path):
    a = np.zeros((SIZE, SIZE, 4), np.uint8)
    a[..., :3] = (200, 100, 50)
    a[:, : SIZE // 2, 3] = 255  # left half opaque, right half transparent
    x = load_image(save(tmp_path / "rgba.png", a), size=None)
    assert x.shape == (3, SIZE, SIZE)
    assert torch.allclose(x[:, 0, 0], torch.tensor([200, 100, 50]) / 255.0)
    assert x[:, :, SIZE // 2:].max() == 0


def test_image_is_resized_to_the_requested_size(tmp_path):
    x = load_image(save(tmp_path / "a.png", noise_rgb()), size=20)
    assert x.shape == (3, 20, 20) and 0 <= x.min() and x.max() <= 1


def test_mask_is_binary_after_resizing(tmp_path):
    m = np.zeros((SIZE, SIZE), np.uint8)
    m[:8] = 1  # any nonzero value marks an anomalous pixel
    m[8:16] = 255
    y = load_mask(save(tmp_path / "m.png", m), size=16)
    assert y.shape == (16, 16) and set(y.unique().tolist()) == {0.0, 1.0}
    assert y[:8].min() == 1 and y[8:].max() == 0


def test_corrupt_png_is_an_error_naming_the_file(tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a png" * 10)
    with pytest.raises(DataError, match="broken.png"):
        load_image(bad)


def test_missing_image_file_is_an_error_naming_it(tmp_path):
    with pytest.raises(DataError, match="nowhere.png"):
        load_image(tmp_path / "nowhere.png")


# --------------------------------------------------------------------------------------------------
# The MVTec AD layout
# --------------------------------------------------------------------------------------------------


def test_normal_test_image_has_an_empty_mask_and_label_0(tmp_path):
    ds = MVTecAD(make_class(tmp_path), "test", image_size=SIZE)
    item = ds[[s.defect for s in ds.samples].index("good")]
    assert item["label"] == 0 and item["defect"] == "good" and item["cls"] == "widget"
    assert item["mask"].shape == (SIZE, SIZE) and item["mask"].max() == 0
    assert item["image"].shape == (3, SIZE, SIZE)


def test_defective_test_image_has_its_mask_and_label_1(tmp_path):
    ds = MVTecAD(make_class(tmp_path), "test", image_size=SIZE)
    item = ds[[s.defect for s in ds.samples].index("crack")]
    assert item["label"] == 1 and item["defect"] == "crack"
    expected = torch.zeros(SIZE, SIZE)
    expected[4:10, 5:12] = 1
    assert torch.equal(item["mask"], expected)
    assert item["path"].endswith("crack/000.png")


def test_train_split_holds_only_normal_images(tmp_path):
    ds = MVTecAD(make_class(tmp_path, n_train=3), "train", image_size=SIZE)
    assert len(ds) == 3 and ds.labels == [0, 0, 0] and ds.split == "train" and ds.image_size == SIZE


def test_every_class_folder_is_indexed_sorted_and_items_record_their_class(tmp_path):
    make_class(tmp_path, "zebra", n_train=1)
    make_class(tmp_path, "apple", n_train=2)
    (tmp_path / "notes").mkdir()  # no train/ or test/: not a class
    ds = MVTecAD(tmp_path, "train", image_size=SIZE)
    assert ds.classes == ["apple", "zebra"]
    assert [ds[i]["cls"] for i in range(len(ds))] == ["apple", "apple", "zebra"]
    assert [s.path for s in ds.samples] == sorted(s.path for s in ds.samples)
    assert MVTecAD(tmp_path, "train", classes=["zebra"], image_size=SIZE).classes == ["zebra"]


def test_hidden_files_are_ignored(tmp_path):
    make_class(tmp_path)
    (tmp_path / "widget" / "train" / "good" / ".DS_Store").write_bytes(b"\0\1")
    assert len(MVTecAD(tmp_path, "train", image_size=SIZE)) == 2


def test_native_size_is_kept_when_image_size_is_none(tmp_path):
    item = MVTecAD(make_class(tmp_path), "test", image_size=None)[0]
    assert item["image"].shape == (3, SIZE, SIZE) and item["mask"].shape == (SIZE, SIZE)


def test_collate_builds_a_batch(tmp_path):
    ds = MVTecAD(make_class(tmp_path), "test", image_size=16)
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=2, collate_fn=collate)))
    assert batch["image"].shape == (2, 3, 16, 16) and batch["mask"].shape == (2, 16, 16)
    assert batch["label"].tolist() == [1, 0] and batch["cls"] == ["widget"] * 2  # "crack" < "good"
    assert torch.equal(batch["image"][1], ds[1]["image"]) and batch["path"] == [ds[0]["path"], ds[1]["path"]]


# --- errors a learner will hit ---------------------------------------------------------------------


def test_missing_mask_is_an_error_naming_the_expected_mask_file(tmp_path):
    make_class(tmp_path)
    (tmp_path / "widget" / "ground_truth" / "crack" / "000_mask.png").unlink()
    with pytest.raises(DataError, match="000_mask.png"):
        MVTecAD(tmp_path, "test")


def test_mask_of_another_size_is_an_error_naming_both_files_and_sizes(tmp_path):
    make_class(tmp_path)
    save(tmp_path / "widget" / "ground_truth" / "crack" / "000_mask.png", np.zeros((16, 16), np.uint8))
    with pytest.raises(DataError, match="000_mask.png") as e:
        MVTecAD(tmp_path, "test")
    assert "16x16" in str(e.value) and f"{SIZE}x{SIZE}" in str(e.value) and "crack/000.png" in str(e.value)


def test_empty_class_is_an_error_naming_the_folder(tmp_path):
    make_class(tmp_path)
    (tmp_path / "hollow" / "train" / "good").mkdir(parents=True)
    with pytest.raises(DataError, match="empty class 'hollow'.*hollow/train"):
        MVTecAD(tmp_path, "train")


def test_non_image_file_in_an_image_folder_is_an_error_naming_it(tmp_path):
    make_class(tmp_path)
    (tmp_path / "widget" / "train" / "good" / "notes.txt").write_text("hello")
    with pytest.raises(DataError, match="notes.txt"):
        MVTecAD(tmp_path, "train")


def test_unreadable_png_is_an_error_naming_it_when_loaded(tmp_path):
    make_class(tmp_path)
    (tmp_path / "widget" / "train" / "good" / "001.png").write_bytes(b"garbage bytes, not an image")
    ds = MVTecAD(tmp_path, "train")
    with pytest.raises(DataError, match="001.png"):
        ds[1]


def test_unreadable_mask_is_an_error_naming_it(tmp_path):
    make_class(tmp_path)
    (tmp_path / "widget" / "ground_truth" / "crack" / "000_mask.png").write_bytes(b"garbage")
    with pytest.raises(DataError, match="000_mask.png"):
        MVTecAD(tmp_path, "test")


def test_missing_root_is_an_error_naming_it(tmp_path):
    with pytest.raises(DataError, match="not_there"):
        MVTecAD(tmp_path / "not_there")


def test_unknown_class_is_an_error_listing_the_available_ones(tmp_path):
    make_class(tmp_path)
    with pytest.raises(DataError, match="'nope'.*widget"):
        MVTecAD(tmp_path, classes=["nope"])


def test_folder_without_classes_is_an_error(tmp_path):
    (tmp_path / "stuff").mkdir()
    with pytest.raises(DataError, match="no classes found"):
        MVTecAD(tmp_path)


def test_a_single_class_folder_as_root_says_to_pass_its_parent(tmp_path):
    make_class(tmp_path)
    with pytest.raises(DataError, match="single class"):
        MVTecAD(tmp_path / "widget")


def test_anomalous_folder_in_train_is_an_error(tmp_path):
    make_class(tmp_path)
    save(tmp_path / "widget" / "train" / "crack" / "000.png", noise_rgb())
    with pytest.raises(DataError, match="train/crack"):
        MVTecAD(tmp_path, "train")


# --------------------------------------------------------------------------------------------------
# Synthetic data
# --------------------------------------------------------------------------------------------------

SMALL = dict(n_train=3, n_test_good=2, n_test_bad=8)  # 8 defective: two of each of the four types


def test_synthetic_has_at_least_three_classes_that_look_different():
    assert len(synthetic.CLASSES) >= 3
    ds = SyntheticAD("train", image_size=64, **SMALL)
    means = {c: torch.stack([ds[i]["image"] for i in range(len(ds)) if ds[i]["cls"] == c]).mean((0, 2, 3))
             for c in ds.classes}
    colours = torch.stack(list(means.values()))  # (classes, 3) mean colour per class
    assert torch.cdist(colours, colours).add(torch.eye(len(means))).min() > 0.05


def test_synthetic_is_deterministic_for_a_seed():
    a, b = SyntheticAD("test", image_size=32, seed=3, **SMALL), SyntheticAD("test", image_size=32, seed=3, **SMALL)
    for i in (0, 5, len(a) - 1):
        assert torch.equal(a[i]["image"], b[i]["image"]) and torch.equal(a[i]["mask"], b[i]["mask"])


def test_synthetic_seeds_give_different_images():
    a, b = SyntheticAD("train", image_size=32, seed=0, **SMALL), SyntheticAD("train", image_size=32, seed=1, **SMALL)
    assert not torch.equal(a[0]["image"], b[0]["image"])


def test_synthetic_normal_samples_vary():
    for c in synthetic.CLASSES:
        x, y = (generate(c, "train", "good", k)["image"].astype(float) for k in (0, 1))
        assert np.abs(x - y).mean() > 5, c  # not one template with noise on top


def test_synthetic_masks_are_nonzero_exactly_for_defective_samples():
    ds = SyntheticAD("test", image_size=64, **SMALL)
    assert sorted(set(ds.labels)) == [0, 1]
    for i in range(len(ds)):
        item = ds[i]
        assert item["label"] == int(item["defect"] != "good")
        assert (item["mask"].sum() > 0) == bool(item["label"]), item["path"]
        assert set(item["mask"].unique().tolist()) <= {0.0, 1.0}


def _change(g) -> np.ndarray:
    """(G, G) largest change over channels that the defect made, in uint8 levels."""
    diff = np.abs(g["image"].astype(int) - g["clean"])
    return diff.max(-1) if diff.ndim == 3 else diff


def test_synthetic_defect_masks_are_exactly_the_changed_pixels():
    # the mask is {|defective - clean| > threshold}, speckle closed and enclosed holes filled (e.g. the plate
    # seen through a broken mesh): nothing changed visibly outside it, and it is all of one defect
    for c in synthetic.CLASSES:
        g = generate(c, "test", "good", 0)
        assert np.array_equal(g["image"], g["clean"]) and not g["mask"].any()
        for d in synthetic.DEFECTS[c]:
            for k in range(2):
                g = generate(c, "test", d, k)
                changed = _change(g) > synthetic.MASK_THRESHOLD
                assert not (changed & ~g["mask"]).any(), (c, d, k)
                assert np.array_equal(g["mask"], shapes.fill_holes(shapes.close(changed))), (c, d, k)


def test_synthetic_mask_filling_closes_enclosed_holes_only():
    ring = np.zeros((shapes.GEN_SIZE,) * 2, bool)
    ring[100:130, 100:130], ring[110:120, 110:120] = True, False  # a square ring: its hole is enclosed
    ring[0:3, :] = True  # a bar along the border encloses nothing
    filled = shapes.fill_holes(ring)
    assert filled[110:120, 110:120].all() and filled.sum() == ring.sum() + 100


def test_synthetic_defects_are_local_and_large_enough_for_the_feature_grid():
    # a 224-pixel image gives a 14 x 14 grid of tokens (stride 16, 18 px at GEN_SIZE): a defect must cover
    # about a token to be seen at all, and stay local (not a global change of the image)
    for c in synthetic.CLASSES:
        for d in synthetic.DEFECTS[c]:
            for k in range(3):
                m = generate(c, "test", d, k)["mask"]
                ys, xs = np.nonzero(m)
                extent = max(ys.max() - ys.min(), xs.max() - xs.min()) + 1
                assert m.sum() >= synthetic.MIN_DEFECT_PIXELS >= 18 * 18, (c, d, k, m.sum())
                assert extent >= 24 and m.mean() < 0.2, (c, d, k, extent, m.mean())


def test_synthetic_defects_range_from_faint_to_strong():
    contrast = []
    for c in synthetic.CLASSES:
        for d in synthetic.DEFECTS[c]:
            for k in range(3):
                g = generate(c, "test", d, k)
                contrast.append(np.median(_change(g)[g["mask"]]) / 255)
    assert min(contrast) < 0.15 and max(contrast) > 0.3


def _nearest_distance(queries, bank, leave_one_out=False):
    """Mean-absolute distance (uint8 levels) of each query image to its nearest image in `bank`."""
    d = np.abs(queries[:, None] - bank[None]).mean((2, 3, 4))  # (Q, B)
    if leave_one_out:
        np.fill_diagonal(d, np.inf)
    return d.min(1)


def test_synthetic_normal_test_images_come_from_the_training_distribution():
    # no normal variation at test time that the training images do not show: every good test image is as
    # close to some training image as the training images are to each other (images at 64 x 64)
    def small(c, split, n):
        return np.stack([np.asarray(Image.fromarray(generate(c, split, "good", k)["image"]).resize((64, 64)),
                                    float).reshape(64, 64, -1) for k in range(n)])

    for c in synthetic.CLASSES:
        train, test = small(c, "train", 12), small(c, "test", 6)
        within = _nearest_distance(train, train, leave_one_out=True)
        assert _nearest_distance(test, train).max() <= 1.25 * within.max(), c


def test_synthetic_defects_are_learnable_from_the_training_images():
    # the nearest-training-token baseline (no training) on the model's own features separates every class:
    # what a detector must learn is in the training images, and every defect shows in the 14 x 14 features
    from uniad_mini import UniAD
    from uniad_mini.baselines import NearestToken
    from uniad_mini.evaluation import evaluate
    from uniad_mini.scoring import score

    torch.manual_seed(0)
    model = UniAD(hidden_dim=32, heads=2, layers=1, ffn_dim=64)  # the transformer is not used
    train = model.cache(SyntheticAD("train", n_train=10), progress=False)
    test = model.cache(SyntheticAD("test", n_test_good=4, n_test_bad=8), progress=False)
    model.set_feature_stats(train.features)
    bank = NearestToken(model.standardize(train.features))
    results = evaluate(*score(bank, model.standardize(test.features), (224, 224)), test)
    for c in synthetic.CLASSES:
        assert results[c]["image_auroc"] >= 0.95 and results[c]["pixel_auroc"] >= 0.95, (c, results[c])


def test_synthetic_grayscale_class_has_equal_channels():
    assert "mesh" in synthetic.GRAYSCALE
    x = SyntheticAD("train", classes=["mesh"], image_size=32, **SMALL)[0]["image"]
    assert torch.equal(x[0], x[1]) and torch.equal(x[1], x[2])


def test_synthetic_subset_gives_the_same_images_as_the_full_set():
    full = SyntheticAD("test", image_size=32, **SMALL)
    one = SyntheticAD("test", classes=["mesh"], image_size=32, **SMALL)
    by_path = {s.path: i for i, s in enumerate(full.samples)}
    for i in (0, len(one) - 1):
        j = by_path[one.samples[i].path]
        assert torch.equal(one[i]["image"], full[j]["image"]) and torch.equal(one[i]["mask"], full[j]["mask"])


def test_synthetic_train_and_test_streams_are_independent():
    assert not np.array_equal(generate("cap", "train", "good", 0)["image"], generate("cap", "test", "good", 0)["image"])


def test_unknown_synthetic_class_is_an_error():
    with pytest.raises(DataError, match="nope"):
        SyntheticAD(classes=["nope"])


def test_write_mvtec_reads_back_with_MVTecAD(tmp_path):
    root = write_mvtec(tmp_path / "synth", seed=2, **SMALL)
    for split in ("train", "test"):
        made = SyntheticAD(split, image_size=48, seed=2, **SMALL)
        read = MVTecAD(root, split, image_size=48)
        assert read.classes == made.classes and read.labels == made.labels
        assert [Path(s.path).relative_to(root).as_posix() for s in read.samples] == [s.path for s in made.samples]
        for i in range(len(made)):
            a, b = made[i], read[i]
            assert (a["image"] - b["image"]).abs().max() <= 1 / 255 + 1e-6
            assert torch.equal(a["mask"], b["mask"]) and (a["cls"], a["defect"]) == (b["cls"], b["defect"])
    assert Image.open(root / "mesh" / "train" / "good" / "000.png").mode == "L"  # grayscale stays grayscale


# --------------------------------------------------------------------------------------------------
# The real data (skipped when absent)
# --------------------------------------------------------------------------------------------------


def test_real_data_indexes_with_masks_that_align(shared_data):
    assert {"bottle", "grid", "hazelnut_toy"} <= set(MVTecAD(shared_data, "train").classes)
    train = MVTecAD(shared_data, "train", classes=["bottle"])
    test = MVTecAD(shared_data, "test", classes=["bottle"])
    assert len(train) == 209 and len(test) == 83 and sum(test.labels) == 63
    for s in test.samples:
        if s.label:
            assert Path(s.mask_path).name == Path(s.path).stem + "_mask.png"
            assert Path(s.mask_path).parent.name == s.defect
            assert load_mask(s.mask_path, size=None).sum() > 0
    grid = MVTecAD(shared_data, "test", classes=["grid"])
    item = grid[grid.labels.index(1)]
    assert item["image"].shape == (3, 224, 224) and torch.equal(item["image"][0], item["image"][2])
    assert item["mask"].shape == (224, 224) and item["mask"].sum() > 0
