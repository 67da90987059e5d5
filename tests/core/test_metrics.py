"""The metrics against oracles: scikit-learn for the ranking metrics, brute force written out below for
connected components and AUPRO (one threshold at a time, regions found by flood fill)."""
from collections import deque

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score
from sklearn.metrics import roc_curve as sklearn_roc_curve

from uniad_mini.metrics import (
    anomaly_metrics,
    aupro,
    auroc,
    average_precision,
    connected_components,
    f1_max,
    roc_curve,
)

# --- strategies -----------------------------------------------------------------------------------

FEW_VALUES = [-1.0, 0.0, 0.25, 0.5, 2.0]  # scores drawn from these tie often
few_valued = st.sampled_from(FEW_VALUES)
continuous = st.floats(-1e3, 1e3, allow_nan=False, width=64)


@st.composite
def scored_samples(draw, elements):
    """(scores, labels) of a random length up to 300, holding at least one sample of each class."""
    n = draw(st.integers(2, 300))
    scores = draw(arrays(np.float64, n, elements=elements))
    labels = draw(arrays(np.int64, n, elements=st.integers(0, 1)))
    normal = draw(st.integers(0, n - 1))
    anomalous = (normal + draw(st.integers(1, n - 1))) % n  # another index
    labels[normal], labels[anomalous] = 0, 1
    return scores, labels


def either(elements_a, elements_b):
    return st.one_of(scored_samples(elements_a), scored_samples(elements_b))


small_masks = st.tuples(st.integers(1, 3), st.integers(1, 12), st.integers(1, 12)).flatmap(
    lambda shape: arrays(bool, shape, elements=st.booleans())
)

# --- brute-force references -----------------------------------------------------------------------


def sklearn_f1_max(scores, labels):
    precision, recall, _ = precision_recall_curve(labels, scores)
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = 2 * precision * recall / (precision + recall)
    return np.nanmax(f1)


def flood_fill_regions(mask2d):
    """Every 8-connected foreground region of one (H, W) mask as a frozenset of (i, j), by BFS."""
    H, W = mask2d.shape
    seen, regions = set(), []
    for start in zip(*np.nonzero(mask2d)):
        if start in seen:
            continue
        seen.add(start)
        region, todo = set(), deque([start])
        while todo:
            i, j = todo.popleft()
            region.add((i, j))
            for di in (-1, 0, 1):
                for dj in (-1, 0, 1):
                    p = (i + di, j + dj)
                    if 0 <= p[0] < H and 0 <= p[1] < W and mask2d[p] and p not in seen:
                        seen.add(p)
                        todo.append(p)
        regions.append(frozenset(region))
    return regions


def brute_force_aupro(maps, masks, max_fpr=0.3):
    regions = [(n, r) for n in range(len(masks)) for r in flood_fill_regions(masks[n])]
    normal = ~masks
    curve = [(0.0, 0.0)]  # (FPR, PRO) above every score
    for t in sorted(set(maps.ravel().tolist()), reverse=True):
        flagged = maps >= t
        pro = np.mean([np.mean([flagged[n][p] for p in region]) for n, region in regions])
        fpr = flagged[normal].mean()
        curve.append((fpr, pro))
    area = 0.0
    for (x0, y0), (x1, y1) in zip(curve, curve[1:]):  # each segment, clipped at max_fpr
        if x0 >= max_fpr:
            break
        if x1 > max_fpr:
            y1 = y0 + (y1 - y0) * (max_fpr - x0) / (x1 - x0)
            x1 = max_fpr
        area += (x1 - x0) * (y0 + y1) / 2
    return area / max_fpr


# --- ranking metrics against scikit-learn ---------------------------------------------------------


@given(either(few_valued, continuous))
def test_auroc_matches_sklearn_with_ties(sample):
    scores, labels = sample
    assert auroc(scores, labels) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)


@given(scored_samples(few_valued))
def test_auroc_counts_tied_pairs_as_half(sample):
    scores, labels = sample
    pos, neg = scores[labels == 1], scores[labels == 0]
    wins = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    assert auroc(scores, labels) == pytest.approx(wins / (pos.size * neg.size), abs=1e-12)


@given(either(few_valued, continuous))
def test_average_precision_matches_sklearn_with_ties(sample):
    scores, labels = sample
    expected = average_precision_score(labels, scores)
    assert average_precision(scores, labels) == pytest.approx(expected, abs=1e-12)


@given(either(few_valued, continuous))
def test_f1_max_matches_sklearn_precision_recall_curve(sample):
    scores, labels = sample
    assert f1_max(scores, labels) == pytest.approx(sklearn_f1_max(scores, labels), abs=1e-12)


@given(either(few_valued, continuous))
def test_roc_curve_matches_sklearn_point_for_point(sample):
    scores, labels = sample
    fpr, tpr, thresholds = roc_curve(scores, labels)
    expected = sklearn_roc_curve(labels, scores, drop_intermediate=False)
    for ours, theirs in zip((fpr, tpr, thresholds), expected):
        np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-12)
    assert np.trapezoid(tpr, fpr) == pytest.approx(auroc(scores, labels), abs=1e-12)


def test_auroc_on_two_million_values_matches_sklearn():
    rng = np.random.default_rng(0)
    labels = rng.random(2_000_000) < 0.1
    scores = (rng.random(labels.size) + 0.3 * labels).astype(np.float32)  # float32: some ties
    assert auroc(scores, labels) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)


# --- edge cases -----------------------------------------------------------------------------------


@pytest.mark.parametrize("metric", [auroc, average_precision, f1_max])
def test_perfect_separation_gives_one(metric):
    assert metric([0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1]) == 1.0


def test_reversed_scores_give_auroc_zero_not_flipped():
    assert auroc([0.9, 0.8, 0.2, 0.1], [0, 0, 1, 1]) == 0.0


def test_constant_scores_give_auroc_one_half():
    assert auroc(np.full(10, 3.0), [0, 1] * 5) == 0.5


def test_constant_scores_give_the_anomalous_fraction_as_precision():
    labels = [0, 1, 0, 0]  # one threshold: everything flagged, precision 1/4, recall 1
    assert average_precision(np.zeros(4), labels) == 0.25
    assert f1_max(np.zeros(4), labels) == pytest.approx(2 * 0.25 / 1.25)


@pytest.mark.parametrize("metric", [average_precision, f1_max])
def test_precision_metrics_of_anomalous_samples_only_are_one(metric):
    assert metric([0.1, 0.5, 0.9], [1, 1, 1]) == 1.0 == average_precision_score([1, 1, 1], [0.1, 0.5, 0.9])


@pytest.mark.parametrize("only", [0, 1])
def test_roc_curve_with_one_class_only_says_so(only):
    with pytest.raises(ValueError, match="ROC curve needs both normal and anomalous samples"):
        roc_curve([0.1, 0.5, 0.9], [only] * 3)


@pytest.mark.parametrize("only", [0, 1])
def test_auroc_with_one_class_only_says_so(only):
    message = f"AUROC needs both normal and anomalous samples; labels hold only class {only}"
    with pytest.raises(ValueError, match=message):
        auroc([0.1, 0.5, 0.9], [only] * 3)


@pytest.mark.parametrize("metric", [average_precision, f1_max])
def test_precision_metrics_need_an_anomalous_sample(metric):
    with pytest.raises(ValueError, match="labels hold only class 0"):
        metric([0.1, 0.5, 0.9], [0, 0, 0])


@pytest.mark.parametrize("metric", [auroc, average_precision, f1_max])
def test_nan_scores_are_rejected(metric):
    with pytest.raises(ValueError, match="NaN"):
        metric([0.1, float("nan"), 0.9], [0, 1, 1])


def test_length_mismatch_names_both_lengths():
    with pytest.raises(ValueError, match="3 values but labels has 2"):
        auroc([0.1, 0.5, 0.9], [0, 1])


@pytest.mark.parametrize("labels", [[0, 1, 2], [0, 0.5, 1], ["a", "b", "a"]])
def test_labels_other_than_0_1_are_rejected(labels):
    with pytest.raises(ValueError, match="bool or 0/1"):
        auroc([0.1, 0.5, 0.9], labels)


def test_inputs_may_be_tensors_lists_or_any_shape():
    scores = np.array([[0.1, 0.7], [0.4, 0.9]])
    labels = np.array([[0, 1], [1, 0]])
    expected = roc_auc_score(labels.ravel(), scores.ravel())
    assert auroc(scores, labels) == pytest.approx(expected)
    assert auroc(torch.tensor(scores), torch.tensor(labels).bool()) == pytest.approx(expected)
    assert auroc(scores.tolist(), labels.tolist()) == pytest.approx(expected)
    assert auroc(torch.tensor(scores, dtype=torch.bfloat16), labels) == pytest.approx(expected)


# --- connected components -------------------------------------------------------------------------


@given(small_masks)
def test_connected_components_match_flood_fill(masks):
    labels, count = connected_components(masks)
    expected = [(n, region) for n in range(len(masks)) for region in flood_fill_regions(masks[n])]
    assert count == len(expected)
    assert labels.shape == masks.shape and ((labels > 0) == masks).all()
    found = []
    for k in range(1, count + 1):
        n, i, j = np.nonzero(labels == k)
        assert len(set(n)) == 1  # a region never spans two images
        found.append((n[0], frozenset(zip(i, j))))
    assert set(found) == set(expected)  # the same partition of the foreground


def test_connected_components_join_diagonal_neighbours():
    mask = np.array([[1, 0, 0, 1], [0, 1, 1, 0], [0, 0, 0, 0], [1, 0, 0, 0]])
    labels, count = connected_components(mask)
    assert count == 2
    assert labels.tolist() == [[1, 0, 0, 1], [0, 1, 1, 0], [0, 0, 0, 0], [2, 0, 0, 0]]  # raster order


def test_connected_components_keep_images_of_a_batch_apart():
    masks = np.zeros((2, 3, 3), dtype=bool)
    masks[0, 2, :] = True  # touches image 1's first row only in the flattened array
    masks[1, 0, :] = True
    labels, count = connected_components(masks)
    assert count == 2 and set(labels[0, 2]) == {1} and set(labels[1, 0]) == {2}


def test_connected_components_follow_a_long_snake():
    mask = np.zeros((41, 41), dtype=bool)
    mask[::2, :] = True  # rows joined alternately at the right and left ends: one path of ~860 pixels
    mask[1::4, -1] = True
    mask[3::4, 0] = True
    labels, count = connected_components(mask)
    assert count == 1


# --- AUPRO ----------------------------------------------------------------------------------------


@given(small_masks, st.data())
def test_aupro_matches_brute_force_reference(masks, data):
    masks = np.concatenate([masks, masks], axis=-1)  # at least two pixels
    anomalous = data.draw(st.integers(0, masks.size - 1))
    normal = (anomalous + data.draw(st.integers(1, masks.size - 1))) % masks.size
    masks.flat[anomalous], masks.flat[normal] = True, False  # at least one region and one normal pixel
    values = data.draw(st.sampled_from([few_valued, continuous]))
    maps = data.draw(arrays(np.float64, masks.shape, elements=values))
    max_fpr = data.draw(st.sampled_from([0.3, 0.05, 1.0]))
    assert aupro(maps, masks, max_fpr) == pytest.approx(brute_force_aupro(maps, masks, max_fpr), abs=1e-9)


def test_aupro_of_a_perfect_map_is_one():
    masks = np.zeros((2, 8, 8), dtype=bool)
    masks[0, 1:3, 1:3] = masks[1, 4:8, 0:6] = True
    assert aupro(masks.astype(float), masks) == pytest.approx(1.0)


def test_aupro_weighs_a_small_region_like_a_large_one():
    masks = np.zeros((1, 10, 10), dtype=bool)
    masks[0, 0, 0] = True  # a 1-pixel region...
    masks[0, 5:10, 5:10] = True  # ...and a 25-pixel one
    maps = masks.astype(float)
    maps[0, 0, 0] = -1.0  # rank the small one below every normal pixel: PRO stays 1/2 until FPR = 1
    assert aupro(maps, masks) == pytest.approx(0.5)


def test_aupro_needs_a_region_and_a_normal_pixel():
    with pytest.raises(ValueError, match="anomalous region"):
        aupro(np.random.rand(2, 4, 4), np.zeros((2, 4, 4)))
    with pytest.raises(ValueError, match="normal pixels"):
        aupro(np.random.rand(2, 4, 4), np.ones((2, 4, 4)))


def test_anomaly_metrics_report_the_seven_numbers():
    rng = np.random.default_rng(1)
    masks = np.zeros((6, 16, 16), dtype=bool)
    masks[3:, 4:9, 4:9] = True
    maps = rng.random(masks.shape) + masks
    image_scores, image_labels = maps.reshape(6, -1).max(1), masks.reshape(6, -1).any(1)
    out = anomaly_metrics(image_scores, image_labels, torch.tensor(maps), torch.tensor(masks))
    image, pixel = ["image_auroc", "image_ap", "image_f1_max"], ["pixel_auroc", "pixel_ap", "pixel_f1_max"]
    assert list(out) == image + pixel + ["aupro"]
    assert all(isinstance(v, float) and 0.0 <= v <= 1.0 for v in out.values())
    assert out["pixel_auroc"] == pytest.approx(roc_auc_score(masks.ravel(), maps.ravel()))
    assert out["pixel_ap"] == pytest.approx(average_precision_score(masks.ravel(), maps.ravel()))
    assert out["image_f1_max"] == pytest.approx(sklearn_f1_max(image_scores, image_labels))
    assert out["aupro"] == pytest.approx(aupro(maps, masks))
