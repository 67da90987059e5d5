"""Graded: the image and pixel AUROC by hand (paper Sec. 4.1), `metrics.auroc`. Implements no part of the paper.
The oracle is AUROC's definition, counted over every (anomalous, normal) pair; while the part runs, SciPy and the project's other curves are refused."""
import numpy as np
import pytest

OTHERS = ("metrics.roc_curve", "metrics._at_or_above", "metrics._area_up_to", "metrics.average_precision",
          "metrics._pr_curve", "metrics.aupro")
pytestmark = pytest.mark.by_hand(why="count the anomaly / normal pairs in order, a tied pair as one half", project=OTHERS)


def pairs_auroc(scores, labels):
    s, y = np.asarray(scores, dtype=float), np.asarray(labels).astype(bool)
    pos, neg = s[y], s[~y]
    return ((pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()) / (pos.size * neg.size)


def check(expect, student, scores, labels, given, expected=None, lines=None):
    expected = pairs_auroc(scores, labels) if expected is None else expected
    got = student("metrics.auroc", scores, labels, lines=lines)
    if not isinstance(got, (float, np.floating)) or abs(got - expected) > 1e-12:
        expect.fail("auroc", f"{expected!r}", f"{got!r}", given)


@pytest.mark.points(2)
def test_reversed_scores_give_auroc_zero_not_flipped(expect, student):
    check(expect, student, [0.9, 0.8, 0.2, 0.1], [0, 0, 1, 1], "scores [0.9, 0.8, 0.2, 0.1], labels [0, 0, 1, 1]", 0.0)


@pytest.mark.points(2)
def test_constant_scores_give_auroc_one_half(expect, student):
    check(expect, student, np.full(10, 3.0), [0, 1] * 5, "ten scores of 3.0, labels 0, 1, 0, 1, ...", 0.5)


### BEGIN HIDDEN TESTS
@pytest.mark.points(2, category="ties")
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auroc_matches_the_pair_count_with_ties(expect, student, seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 200)
    labels[:2] = [0, 1]
    scores = rng.integers(0, 7, 200) / 7  # few values: many ties
    pos, neg = scores[labels == 1][:, None], scores[labels == 0][None, :]  # every (anomalous, normal) pair
    expected = float(((pos > neg) + 0.5 * (pos == neg)).mean())  # the probability definition of AUROC
    check(expect, student, scores, labels, f"200 scores with 7 distinct values (seed {seed})", expected)


@pytest.mark.points(1, category="lists, int and bool labels")
def test_auroc_counts_tied_pairs_as_half_on_lists_and_int_labels(expect, student):
    check(expect, student, [1, 2, 2, 3, 1], [0, 1, 0, 1, 1], "scores [1, 2, 2, 3, 1], labels [0, 1, 0, 1, 1]")
    check(expect, student, np.array([0.3, 0.3, 0.3, 0.1]), np.array([True, False, True, False]), "bool labels, ties")


@pytest.mark.points(1, category="continuous scores")
def test_auroc_of_continuous_scores_is_the_pair_count(expect, student):
    rng = np.random.default_rng(3)
    labels = rng.random(3000) < 0.2
    scores = rng.normal(size=3000) + labels
    check(expect, student, scores, labels, "3000 normal scores, the anomalous ones shifted by 1 (no ties)")


@pytest.mark.points(2, category="a million scores, without listing the pairs")
def test_a_million_pixel_scores_without_listing_the_pairs(expect, student):
    from uniad_mini.metrics import auroc  # the instructor's, for the expected value

    rng = np.random.default_rng(4)
    labels = rng.random(1_000_000) < 0.1  # 1e5 x 9e5 = 9e10 pairs: too many to list
    scores = (rng.normal(size=1_000_000) + labels).astype(np.float32)
    check(expect, student, scores, labels, "1e6 pixel scores, 10% anomalous", auroc(scores, labels), lines=60)
### END HIDDEN TESTS
