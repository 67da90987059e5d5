"""Calibration: the held-out split, thresholds at a false-alarm rate (against brute force and scipy), decisions,
masks, the Prediction record, and the calibration kept in the checkpoint."""
import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from scipy.stats import beta

from uniad_mini import SyntheticAD, UniAD
from uniad_mini import calibration as C

TINY = dict(hidden_dim=32, heads=2, layers=1, ffn_dim=64)
pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: more threads only fight over the cores


# ---- the held-out split ---------------------------------------------------------------------------


def test_held_out_takes_a_share_of_each_class_and_is_deterministic():
    classes = ["a"] * 50 + ["b"] * 10 + ["c"] * 2
    kept, held = C.held_out(classes, 0.2, seed=3)
    assert sorted(kept + held) == list(range(62)) and not set(kept) & set(held)
    counts = {c: sum(classes[i] == c for i in held) for c in "abc"}
    assert counts == {"a": 10, "b": 2, "c": 1}  # round(share * n), at least 1, at most n - 1
    assert C.held_out(classes, 0.2, seed=3) == (kept, held)
    assert C.held_out(classes, 0.2, seed=4)[1] != held
    assert C.held_out(classes, 0.0, seed=3) == (list(range(62)), [])
    assert C.held_out(["a", "a"], 0.9)[1] != [0, 1]  # one image is always left to train on


def test_held_out_of_a_class_does_not_depend_on_the_other_classes():
    alone = C.held_out(["b"] * 10, 0.3, seed=1)[1]
    with_others = C.held_out(["a"] * 7 + ["b"] * 10, 0.3, seed=1)[1]
    assert [i - 7 for i in with_others if i >= 7] == alone


def test_held_out_refuses_a_share_outside_0_1():
    with pytest.raises(ValueError, match="share must be in"):
        C.held_out(["a"] * 3, 1.0)


def test_split_gives_subsets_of_the_data_set_by_class():
    data = SyntheticAD("train", n_train=5)
    kept, held = C.split(data, 0.4, seed=0)
    assert len(held) == 2 * len(data.classes) and len(kept) + len(held) == len(data)
    assert sorted(data.samples[i].cls for i in held.indices) == sorted(data.classes * 2)


# ---- thresholds -----------------------------------------------------------------------------------


@given(st.lists(st.integers(0, 20), min_size=1, max_size=300), st.sampled_from([0.0, 0.01, 0.05, 0.1, 0.5]))
def test_threshold_is_the_smallest_score_with_at_most_fpr_n_above_it(values, fpr):
    s = torch.tensor(values, dtype=torch.float32)
    t = C.threshold_at(s, fpr)
    allowed = math.floor(fpr * len(values) + 1e-9)
    brute = min(v for v in values if sum(x > v for x in values) <= allowed)  # the oracle: a plain search
    assert t == brute and int((s > t).sum()) <= allowed


def test_fpr_upper_bound_matches_clopper_pearson():
    for k, n in [(0, 5), (0, 42), (1, 42), (3, 100), (10, 1000)]:
        assert C.fpr_upper_bound(k, n) == pytest.approx(beta.ppf(0.95, k + 1, n - k), abs=1e-6)
    assert C.fpr_upper_bound(0, 5) == pytest.approx(1 - 0.05 ** (1 / 5), abs=1e-9)  # the zero-alarm closed form
    assert C.fpr_upper_bound(5, 5) == 1.0


def test_calibrate_sets_each_class_apart_and_warns_where_too_few_images():
    g = torch.Generator().manual_seed(0)
    scores = torch.cat([torch.rand(200, generator=g), 10 + torch.rand(5, generator=g)])
    maps = torch.rand(205, 8, 8, generator=g)
    classes = ["many"] * 200 + ["few"] * 5
    cal = C.calibrate(scores, maps, classes, fpr=0.01, pixel_fpr=0.05, source="test")
    many, few = cal["classes"]["many"], cal["classes"]["few"]
    assert many["images"] == 200 and many["false_alarms"] == 2  # floor(0.01 * 200) scores above it
    assert many["image"] == float(scores[:200].sort(descending=True).values[2])
    assert few["image"] == float(scores[200:].max()) and few["false_alarms"] == 0
    assert many["pixel"] == C.threshold_at(maps[:200], 0.05)
    assert cal["global"]["images"] == 205 and cal["global"]["image"] == C.threshold_at(scores, 0.01)
    assert len(cal["warnings"]) == 1 and "'few'" in cal["warnings"][0] and "5 normal image" in cal["warnings"][0]
    assert cal["fpr"] == 0.01 and cal["source"] == "test" and "floor(fpr*n)" in cal["method"]


# ---- decisions ------------------------------------------------------------------------------------


def _cal():
    scores, maps = torch.tensor([1.0, 2.0, 10.0, 20.0]), torch.zeros(4, 2, 2)
    maps[:2], maps[2:] = 0.5, 3.0
    return C.calibrate(scores, maps, ["a", "a", "b", "b"], fpr=0.0, pixel_fpr=0.0)


def test_decide_uses_each_images_class_threshold_and_masks_only_anomalous_images():
    cal = _cal()  # a: image 2, pixel 0.5; b: image 20, pixel 3
    maps = torch.tensor([[[0.0, 1.0], [4.0, 0.0]]]).repeat(3, 1, 1)
    pred = C.decide(torch.tensor([3.0, 3.0, 1.0]), maps, cal, ["a", "b", "a"])
    assert pred.decisions.tolist() == [True, False, False]
    assert pred.thresholds.tolist() == [2.0, 20.0, 2.0] and pred.classes == ["a", "b", "a"]
    assert pred.masks[0].tolist() == [[False, True], [True, False]]  # map above a's pixel threshold 0.5
    assert not pred.masks[1:].any() and pred.areas.tolist() == [2, 0, 0]
    glob = C.decide(torch.tensor([3.0]), maps[:1], cal)  # no class: the pooled threshold (20)
    assert glob.classes == [C.GLOBAL] and glob.decisions.tolist() == [False]


def test_unknown_class_names_the_calibrated_ones():
    with pytest.raises(ValueError, match=r"unknown class 'c': this model was calibrated for \['a', 'b'\]"):
        C.decide(torch.tensor([1.0]), torch.zeros(1, 2, 2), _cal(), "c")


def test_uncalibrated_prediction_has_scores_and_maps_only_and_still_unpacks():
    pred = C.decide(torch.tensor([1.0]), torch.zeros(1, 2, 2), None)
    scores, maps = pred
    assert scores is pred.scores and maps is pred.maps and pred.decisions is None and pred.areas is None
    assert isinstance(pred, tuple) and len(pred) == 2 and pred[0] is scores  # every tuple use of the old return
    torch.testing.assert_close(pred, (scores.clone(), maps.clone()))
    with pytest.raises(ValueError, match="not calibrated"):
        C.decide(torch.tensor([1.0]), torch.zeros(1, 2, 2), None, "a")


def test_measure_counts_false_alarms_and_recall_by_hand():
    cal = _cal()
    scores = torch.tensor([3.0, 1.0, 3.0, 30.0, 5.0])
    labels = torch.tensor([0, 0, 1, 1, 1])
    classes = ["a", "a", "a", "b", "b"]
    maps, masks = torch.ones(5, 2, 2), torch.zeros(5, 2, 2)
    masks[2:, 0, 0] = 1
    m = C.measure(cal, scores, maps, labels, masks, classes)
    assert (m["a"]["false_alarms"], m["a"]["normal"], m["a"]["caught"], m["a"]["defects"]) == (1, 2, 1, 1)
    assert (m["b"]["caught"], m["b"]["defects"], m["b"]["recall"]) == (1, 2, 0.5)
    assert m["all"]["fpr"] == 0.5 and m["all"]["recall"] == pytest.approx(2 / 3)
    # pixel: maps 1 > a's 0.5 everywhere in images decided anomalous; b's pixel threshold 3 flags nothing
    assert m["a"]["pixel_recall"] == 1.0 and m["b"]["pixel_recall"] == 0.0
    assert m["a"]["pixel_fpr"] == pytest.approx(7 / 11)  # image 0 (4 px) and image 2 (3 normal px) of 11


# ---- the model --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model_and_data():
    model = UniAD(**TINY)
    train = model.cache(SyntheticAD("train", n_train=4), progress=False)
    model.fit(train, epochs=1, progress=False)
    return model, train


def test_model_calibrate_predict_save_and_load(model_and_data, tmp_path):
    model, normal = model_and_data
    cal = model.calibrate(normal, fpr=0.25, pixel_fpr=0.01, source="synthetic")
    assert set(cal["classes"]) == {"cap", "carpet", "mesh"} and model.calibration is cal
    images = torch.rand(2, 3, 48, 64)
    pred = model.predict(images, "cap")
    scores, maps = model.predict(images)  # the earlier return value, unpacked
    torch.testing.assert_close(pred.scores, scores)
    assert pred.decisions.tolist() == (scores > cal["classes"]["cap"]["image"]).tolist()
    assert pred.masks.shape == maps.shape == (2, *images.shape[-2:])
    model.save(tmp_path / "m.pt")
    ckpt = torch.load(tmp_path / "m.pt", weights_only=True)  # plain data: loads without pickled code
    assert ckpt["calibration"]["classes"]["cap"] == cal["classes"]["cap"]
    again = UniAD.load(tmp_path / "m.pt")
    assert again.calibration == cal
    assert again.predict(images, "cap").decisions.tolist() == pred.decisions.tolist()


def test_calibrate_refuses_defective_images(model_and_data):
    model, normal = model_and_data
    mixed = normal.subset([0, 1])
    mixed.labels = torch.tensor([0, 1])  # one of them marked defective
    with pytest.raises(ValueError, match="normal images only"):
        model.calibrate(mixed)


def test_per_class_thresholds_hold_the_rate_on_fresh_normal_scores():
    """On scores drawn from the same distribution, the empirical false-alarm rate of a threshold set on n
    normal scores stays near the target (it is a quantile), per class, though the scales differ 100-fold."""
    g = np.random.default_rng(0)
    calib = np.concatenate([g.normal(0, 1, 2000), g.normal(0, 100, 2000)])
    cal = C.calibrate(torch.tensor(calib), torch.zeros(4000, 1, 1), ["x"] * 2000 + ["y"] * 2000, fpr=0.05)
    fresh_x, fresh_y = torch.tensor(g.normal(0, 1, 20000)), torch.tensor(g.normal(0, 100, 20000))
    for cls, fresh in (("x", fresh_x), ("y", fresh_y)):
        rate = float((fresh > cal["classes"][cls]["image"]).double().mean())
        assert 0.035 < rate < 0.065
    glob = cal["global"]["image"]  # pooled: class y's wide scores set it, so x never alarms and y alarms ~10%
    assert float((fresh_x > glob).double().mean()) < 0.001 and float((fresh_y > glob).double().mean()) > 0.07
