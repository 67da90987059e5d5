"""The validation set: held-out normal images, as they are and with drawn anomalies whose masks are exact."""
import pytest
import torch

from uniad_mini import SyntheticAD, UniAD
from uniad_mini.calibration import held_out, item_classes
from uniad_mini.evaluation import evaluate
from uniad_mini.features import Cache
from uniad_mini.validation import KINDS, MASK_THRESHOLD, MIN_DEFECT_PIXELS, Validation, kind_aurocs, kind_of, paint


@pytest.fixture(scope="module")
def train():
    return SyntheticAD("train", n_train=6, seed=3)


@pytest.fixture(scope="module")
def validation(train):
    return Validation(train, share=0.34, seed=1)


def test_the_held_out_images_are_the_projects_one_split_and_the_rest_trains(train, validation):
    kept, held = held_out(item_classes(train), 0.34, 1)
    assert validation.kept == kept and validation.held == held and list(validation.train.indices) == kept
    assert not set(kept) & set(held) and sorted(kept + held) == list(range(len(train)))
    assert len(validation) == len(held) * (1 + len(KINDS))
    assert validation.labels.count(0) == len(held)


def test_normals_are_untouched(train, validation):
    normals = [j for j, (*_, kind) in enumerate(validation.items) if kind is None]
    for j in normals:
        item, source = validation[j], train[validation.items[j][0]]
        assert item["label"] == 0 and item["defect"] == "good" and not item["mask"].any()
        assert torch.equal(item["image"], source["image"]) and item["cls"] == source["cls"]


def test_masks_are_where_pixels_changed(train, validation):
    for j, (i, cls, _, kind) in enumerate(validation.items):
        if kind is None:
            continue
        item, before = validation[j], train[i]["image"]
        mask = item["mask"].bool()
        changed = (item["image"] - before).abs().amax(0)  # (H, W)
        assert item["label"] == 1 and item["defect"] == kind and item["cls"] == cls
        assert torch.equal(item["image"][:, ~mask], before[:, ~mask])  # outside the mask: the original, exactly
        assert mask[changed > MASK_THRESHOLD].all()  # every visibly changed pixel is in the mask
        assert int(mask.sum()) >= MIN_DEFECT_PIXELS
        assert (changed[mask] > MASK_THRESHOLD).float().mean() > 0.5  # the mask is mostly changed pixels
        assert 0 <= float(item["image"].min()) and float(item["image"].max()) <= 1


def test_same_seed_same_set_another_seed_another(train, validation):
    again = Validation(train, share=0.34, seed=1)
    assert again.items == validation.items
    for j in range(len(validation)):
        a, b = validation[j], again[j]
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["mask"], b["mask"])
    other = Validation(train, share=0.34, seed=2)
    j = next(j for j, it in enumerate(other.items) if it[3] == "blob")
    assert other.held != validation.held or not torch.equal(other[j]["mask"], validation[j]["mask"])


def test_each_kind_changes_the_image_and_an_unknown_kind_is_refused(train):
    import numpy as np

    image, donor = train[0]["image"], train[1]["image"]
    for kind in KINDS:
        out, mask = paint(image, kind, np.random.default_rng(0), donor)
        assert mask.sum() >= MIN_DEFECT_PIXELS and not torch.equal(out, image)
    with pytest.raises(ValueError, match="unknown anomaly kind"):
        Validation(train, kinds=["glitter"])


def test_a_bend_moves_pixels_inside_its_disc_and_adds_no_colour():
    from uniad_mini.validation import bend

    flat = torch.full((3, 64, 64), 0.4)
    assert torch.allclose(bend(flat, 128.0, 128.0, 60.0, 1.0), flat, atol=1e-6)  # nothing to move, nothing changes
    stripes = (torch.arange(64) // 4 % 2).float().expand(3, 64, 64).clone()  # (3, H, W) vertical stripes, 0 / 1
    out = bend(stripes, 128.0, 128.0, 60.0, 1.0)  # centre of the image; radius 60 of 256 = 15 of 64 pixels
    yy, xx = torch.meshgrid(torch.arange(64) + 0.5 - 32, torch.arange(64) + 0.5 - 32, indexing="ij")
    moved = (out - stripes).abs().amax(0) > 1e-6
    assert moved.any() and not moved[yy**2 + xx**2 >= 15**2].any()  # only inside the disc
    assert out.min() >= 0 and out.max() <= 1  # bilinear samples of the image: no new extremes


@pytest.mark.slow
def test_evaluate_scores_it_like_a_test_split(validation, one_thread):
    cache = UniAD().cache(validation, progress=False)
    assert cache.labels.tolist() == validation.labels and cache.masks.shape[-1] == 224
    perfect = evaluate(cache.labels.float(), cache.masks.float(), cache, metrics="auroc")  # the truth as the score
    assert all(r["image_auroc"] == 1.0 and r["pixel_auroc"] == 1.0 for r in perfect.values())
    blind = evaluate(torch.zeros(len(cache)), torch.zeros(cache.masks.shape), cache, metrics="auroc")
    assert blind["mean"]["image_auroc"] == 0.5


def test_per_kind_auroc_is_each_kind_against_the_normals_of_its_class():
    from sklearn.metrics import roc_auc_score

    g = torch.Generator().manual_seed(0)
    kinds = ["good"] * 6 + [k for k in KINDS for _ in range(3)]  # per class: 6 normal images, 3 of each kind
    paths = [f"{c}/{i}.png" + ("" if k == "good" else f"#{k}") for c in ("a", "b") for i, k in enumerate(kinds)]
    n = len(paths)
    cache = Cache(torch.zeros(n, 1, 1, 1), torch.tensor([int("#" in p) for p in paths]), torch.zeros(n, 2, 2),
                  [p.split("/")[0] for p in paths], paths)
    scores = torch.rand(n, generator=g)
    got = kind_aurocs(scores, cache)
    assert [kind_of(p) for p in paths[:len(kinds)]] == kinds and kind_of("x#y.png") == "good"
    for c in ("a", "b"):
        for k in KINDS:
            pick = [i for i, p in enumerate(paths) if p.startswith(c) and kind_of(p) in ("good", k)]
            expected = roc_auc_score([int(kind_of(paths[i]) == k) for i in pick], scores[pick].numpy())
            assert got[c][k] == pytest.approx(expected)
