"""The metrics: how good an anomaly score and an anomaly map are, computed by hand with numpy.

UniAD (paper Sec. 4.1) reports two numbers per class: *image AUROC* (detection: one score per image,
label "anomalous iff its mask has a positive pixel") and *pixel AUROC* (localisation: every pixel of
every test image of the class, at 224 x 224, pooled together). Later unified methods report seven:

    image AUROC, image AP, image F1-max, pixel AUROC, pixel AP, pixel F1-max, AUPRO.

Conventions, the same in every function:
  - a higher score means "more anomalous"; label 1 (True) is anomalous, 0 (False) normal;
  - a threshold t flags every sample with score s >= t;
  - inputs may be numpy arrays, torch tensors or nested lists, of any shape (they are flattened);
  - ties are handled exactly (each function equals its scikit-learn counterpart, ties included),
    and an AUROC below 0.5 is returned as it is: flipping it to 1 - AUROC would hide a sign bug.

Everything is sort-based, O(n log n), so 10M pixels take seconds, not minutes.

Degenerate inputs never give a silent number:
  - NaN scores, labels other than 0/1, mismatched lengths, no samples: ValueError saying which;
  - one class only: AUROC and the ROC curve raise ValueError (they need both classes); AP and F1-max
    raise when there is no anomalous sample, and with anomalous samples only they are 1.0 (precision
    is 1 at every threshold), as in scikit-learn;
  - constant scores: one threshold, so AUROC = 0.5, and AP = F1-max's precision = the anomalous fraction
    (F1-max = 2p / (p + 1)), as in scikit-learn;
  - AUPRO: ValueError when every mask is empty (no region) or every pixel is anomalous (no FPR).
"""
from __future__ import annotations

import numpy as np

# --------------------------------------------------------------------------------------------------
# Input checks: every public function goes through these, so a learner's mistake is reported once, clearly.


def _to_numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor, on any device
        x = x.detach().cpu()
        if str(x.dtype) == "torch.bfloat16":  # numpy has no bfloat16; float32 holds it exactly
            x = x.float()
        return x.numpy()
    return np.asarray(x)


def _as_scores(x, name: str = "scores") -> np.ndarray:
    """Real numbers, same shape as x, without NaN (inf is allowed: it sorts fine)."""
    x = _to_numpy(x)
    if x.dtype == bool:
        x = x.astype(np.int8)
    if not np.issubdtype(x.dtype, np.integer) and not np.issubdtype(x.dtype, np.floating):
        raise ValueError(f"{name} must be real numbers, got dtype {x.dtype}")
    if np.issubdtype(x.dtype, np.floating):
        nan = np.isnan(x)
        if nan.any():
            raise ValueError(
                f"{name} contain {int(nan.sum())} NaN value(s) (the first at flat index "
                f"{int(np.flatnonzero(nan)[0])}); a NaN has no rank - check the model output for "
                f"a division by zero or a diverged training run"
            )
    return x


def _as_binary(x, name: str = "labels") -> np.ndarray:
    """Bool array of x's shape. Takes bool or 0/1 values (1 = anomalous); anything else is an error."""
    x = _to_numpy(x)
    if x.dtype == bool:
        return x
    if not np.issubdtype(x.dtype, np.number) or np.issubdtype(x.dtype, np.complexfloating):
        raise ValueError(f"{name} must be bool or 0/1, got dtype {x.dtype}")
    is_one = x == 1
    bad = ~(is_one | (x == 0))
    if bad.any():
        example = x.ravel()[np.flatnonzero(bad)[0]]
        raise ValueError(
            f"{name} must be bool or 0/1 (1 = anomalous), but hold other values such as {example!r}; "
            f"a soft or resized mask must be thresholded first, e.g. mask > 0.5"
        )
    return is_one


def _scores_and_labels(scores, labels) -> tuple[np.ndarray, np.ndarray]:
    """Flattened (n,) scores and (n,) bool labels of equal length."""
    s = _as_scores(scores).ravel()
    y = _as_binary(labels).ravel()
    if s.size != y.size:
        raise ValueError(f"scores has {s.size} values but labels has {y.size}; they must pair one to one")
    if s.size == 0:
        raise ValueError("got no samples: scores and labels are empty")
    return s, y


def _one_class_error(metric: str, y: np.ndarray, needs: str) -> ValueError:
    only = int(y[0])
    name = "anomalous" if only else "normal"
    return ValueError(f"{metric} needs {needs}; labels hold only class {only} ({name})")


# --------------------------------------------------------------------------------------------------
# Ranking metrics on one flat list of scores.


def auroc(scores, labels) -> float:
    """Area under the ROC curve: the Mann-Whitney U statistic of P anomalous and N normal scores, over P N,

        AUROC = 1 / (P N) * sum_{i in pos} sum_{j in neg} ( [s_i > s_j] + 1/2 [s_i = s_j] )

    the probability that a random anomalous sample outscores a random normal one, a tie counting
    half. Equal to sklearn.metrics.roc_auc_score, ties included. Counted without the P x N loop:
    with the normal scores sorted, a binary search per anomalous score s_i finds how many normal
    scores lie below s_i (side="left") and below-or-equal (side="right").
    """
    s, y = _scores_and_labels(scores, labels)
    if y.all() or not y.any():
        raise _one_class_error("AUROC", y, "both normal and anomalous samples")
    ### HINT: AUROC is the share of (anomalous, normal) pairs that the scores put in the right order, a tie counting
    ### HINT: one half; a million pixels make 1e11 pairs, so count them per anomalous score without listing them.
    ### BEGIN SOLUTION
    pos = np.sort(s[y])  # (P,) sorted too, so the searches walk memory in order
    neg = np.sort(s[~y])  # (N,)
    below = np.searchsorted(neg, pos, side="left")  # (P,) #{j : s_j < s_i}
    below_or_tied = np.searchsorted(neg, pos, side="right")  # (P,) #{j : s_j <= s_i}
    twice_u = int(below.sum()) + int(below_or_tied.sum())  # 2U = sum of 2 [>] + [=], exact in integers
    return twice_u / (2 * pos.size * neg.size)
    ### END SOLUTION


def roc_curve(scores, labels) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(FPR, TPR, thresholds) of the ROC curve, one point per distinct score, highest threshold first:

        TPR_n = #{pos : s >= t_n} / P,   FPR_n = #{neg : s >= t_n} / N,

    preceded by (0, 0) at threshold +inf. The same points as
    sklearn.metrics.roc_curve(labels, scores, drop_intermediate=False); `auroc` is their trapezoid area.
    """
    s, y = _scores_and_labels(scores, labels)
    if y.all() or not y.any():
        raise _one_class_error("a ROC curve", y, "both normal and anomalous samples")
    thresholds = np.unique(s)[::-1]  # (T,) every distinct score, highest first
    tp = _at_or_above(np.sort(s[y]), thresholds)  # (T,)
    fp = _at_or_above(np.sort(s[~y]), thresholds)  # (T,)
    start = np.zeros(1)
    return (np.concatenate([start, fp / fp[-1]]), np.concatenate([start, tp / tp[-1]]),
            np.concatenate([[np.inf], thresholds]))


def _at_or_above(values: np.ndarray, thresholds: np.ndarray, weights: np.ndarray | None = None):
    """For each threshold t: #{i : v_i >= t}, or with weights sum_{i : v_i >= t} w_i.

    `values` must be sorted ascending (and `weights` paired with them); a binary search finds where
    t would go, and every value from there on is >= t. Ties are never split.
    """
    first = np.searchsorted(values, thresholds, side="left")  # (T,) index of the first value >= t
    if weights is None:
        return values.size - first
    from_top = np.append(np.cumsum(weights[::-1])[::-1], 0.0)  # (n+1,) from_top[i] = sum of w[i:]
    return from_top[first]


def _pr_curve(s: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Precision P_n and recall R_n at every distinct threshold t_1 > t_2 > ... > t_T:

        TP_n = #{pos : s >= t_n},  FP_n = #{neg : s >= t_n},  P_n = TP_n / (TP_n + FP_n),  R_n = TP_n / #pos

    The same points as sklearn.metrics.precision_recall_curve, without its closing (P=1, R=0).
    """
    thresholds = np.unique(s)[::-1]  # (T,) every distinct score, highest first
    tp = _at_or_above(np.sort(s[y]), thresholds)  # (T,)
    fp = _at_or_above(np.sort(s[~y]), thresholds)  # (T,)
    return tp / (tp + fp), tp / tp[-1]


def _average_precision(precision: np.ndarray, recall: np.ndarray) -> float:
    gain = np.diff(recall, prepend=0.0)  # (T,) R_n - R_{n-1}, R_0 = 0
    return float(np.sum(gain * precision))


def _f1_max(precision: np.ndarray, recall: np.ndarray) -> float:
    both = precision + recall
    f1 = np.divide(2 * precision * recall, both, out=np.zeros_like(both), where=both > 0)
    return float(f1.max())


def average_precision(scores, labels) -> float:
    """Average precision, the step-wise area under the precision-recall curve:

        AP = sum_n (R_n - R_{n-1}) P_n,   R_0 = 0,

    over the distinct thresholds t_1 > t_2 > ... (no interpolation). Equal to
    sklearn.metrics.average_precision_score, ties included.
    """
    s, y = _scores_and_labels(scores, labels)
    if not y.any():
        raise _one_class_error("average precision", y, "at least one anomalous sample")
    return _average_precision(*_pr_curve(s, y))


def f1_max(scores, labels) -> float:
    """The best F1 over all thresholds:

        F1-max = max_n 2 P_n R_n / (P_n + R_n)     (0 where P_n + R_n = 0)

    over the points of the precision-recall curve (one per distinct threshold, as in
    sklearn.metrics.precision_recall_curve).
    """
    s, y = _scores_and_labels(scores, labels)
    if not y.any():
        raise _one_class_error("F1-max", y, "at least one anomalous sample")
    return _f1_max(*_pr_curve(s, y))


# --------------------------------------------------------------------------------------------------
# Regions of a mask, and the per-region overlap (AUPRO).

# right, below-left, below, below-right: together they name each pair of 8-neighbours once
_NEIGHBOURS = ((0, 1), (1, -1), (1, 0), (1, 1))


def _union_find(n: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Root of every node 0..n-1 after joining each pair (a[k], b[k]); a root is its tree's smallest node.

    Vectorised: in each round every link that still joins two trees hooks the larger root under the
    smaller one, then pointer jumping sends every node straight to its root. Parents only ever point
    to smaller ids, so no cycle can form; each round merges trees, so it ends (in a few rounds).
    """
    parent = np.arange(n)
    while True:
        ra, rb = parent[a], parent[b]  # parent is compressed: these are the roots
        apart = ra != rb
        if not apart.any():
            return parent
        a, b, ra, rb = a[apart], b[apart], ra[apart], rb[apart]  # joined links stay joined: drop them
        np.minimum.at(parent, np.maximum(ra, rb), np.minimum(ra, rb))  # hook
        while True:  # compress
            grand = parent[parent]
            if np.array_equal(grand, parent):
                break
            parent = grand


def connected_components(mask) -> tuple[np.ndarray, int]:
    """Label the 8-connected foreground regions of a (H, W) mask, or of each mask in an (N, H, W) batch.

    Returns (labels, count): int64 labels of the mask's shape, 0 on the background and 1..count on
    the regions, numbered in raster order of each region's first pixel (as scipy.ndimage.label
    does). In a batch a region never spans two images, and the numbers run on from image to image.

    Two passes of union-find over the foreground pixels: (1) link each foreground pixel to its
    foreground neighbours and merge linked pixels (`_union_find`); (2) number the roots 1..count.
    """
    m = _as_binary(mask, "mask")
    if m.ndim not in (2, 3):
        raise ValueError(f"mask must be (H, W) or (N, H, W), got shape {m.shape}")
    N, H, W = (1, *m.shape) if m.ndim == 2 else m.shape
    flat = m.ravel()  # pixel (n, i, j) sits at n*H*W + i*W + j
    fg = np.flatnonzero(flat)  # (K,) flat index of each foreground pixel, raster order
    row, col = (fg // W) % H, fg % W
    a, b = [], []  # linked pairs, as positions in fg
    for di, dj in _NEIGHBOURS:
        inside = (row + di < H) & (col + dj >= 0) & (col + dj < W)  # (K,) the neighbour is in the image
        here = np.flatnonzero(inside)
        there = fg[here] + di * W + dj  # flat index of the neighbour
        linked = flat[there]  # the neighbour is foreground too
        a.append(here[linked])
        b.append(np.searchsorted(fg, there[linked]))
    root = _union_find(fg.size, np.concatenate(a), np.concatenate(b))  # (K,)
    roots, region = np.unique(root, return_inverse=True)  # region: (K,) 0..count-1, raster order
    labels = np.zeros(flat.size, dtype=np.int64)
    labels[fg] = region + 1
    return labels.reshape(m.shape), int(roots.size)


def _maps_and_masks(maps, masks) -> tuple[np.ndarray, np.ndarray]:
    """(N, H, W) scores and (N, H, W) bool masks; also accepts (H, W) for one image and (N, 1, H, W)."""
    x, m = _as_scores(maps, "maps"), _as_binary(masks, "masks")
    if x.shape != m.shape:
        raise ValueError(f"maps have shape {x.shape} but masks {m.shape}; they must match pixel for pixel")
    if x.ndim == 4 and x.shape[1] == 1:
        x, m = x[:, 0], m[:, 0]
    if x.ndim == 2:
        x, m = x[None], m[None]
    if x.ndim != 3:
        raise ValueError(f"maps and masks must be (N, H, W), (N, 1, H, W) or (H, W), got {x.shape}")
    return x, m


def _area_up_to(x: np.ndarray, y: np.ndarray, x_max: float) -> float:
    """Trapezoid area under the polyline through (x, y), from x[0] to x_max.

    x is non-decreasing and reaches x_max; the curve is interpolated at exactly x_max.
    """
    k = int(np.searchsorted(x, x_max, side="right"))  # points with x <= x_max
    xs, ys = x[:k], y[:k]
    if xs[-1] < x_max:  # close the area with the curve's value at exactly x_max
        x0, x1, y0, y1 = x[k - 1], x[k], y[k - 1], y[k]
        xs = np.append(xs, x_max)
        ys = np.append(ys, y0 + (y1 - y0) * (x_max - x0) / (x1 - x0))
    return float(np.sum(np.diff(xs) * (ys[1:] + ys[:-1]) / 2))


def aupro(maps, masks, max_fpr: float = 0.3) -> float:
    """Normalised area under the per-region-overlap curve (Bergmann et al., MVTec AD, 2019/2021).

    The regions C_1..C_K are the 8-connected components of the ground-truth masks. At threshold t

        PRO(t) = 1/K sum_k |{p in C_k : s_p >= t}| / |C_k|      (each region counts the same)
        FPR(t) = |{p normal : s_p >= t}| / |{p normal}|         (normal: mask == 0, all images)

    and AUPRO = 1/max_fpr * integral_0^max_fpr PRO dFPR, over the curve through every distinct
    threshold (trapezoids, the curve interpolated at exactly max_fpr): 1.0 for a perfect map.

    Exact and vectorised: pixel p adds 1/(K |C_k|) to PRO when it lies in C_k and 1/#normal to FPR
    otherwise, so at each threshold both curves are sums over the pixels scoring >= t, read off
    sorted scores by binary search (`_at_or_above`).
    maps, masks: (N, H, W) arrays or tensors.
    """
    if not 0.0 < max_fpr <= 1.0:
        raise ValueError(f"max_fpr must be in (0, 1], got {max_fpr}")
    x, m = _maps_and_masks(maps, masks)  # (N, H, W)
    regions, K = connected_components(m)  # (N, H, W) 0 = normal, 1..K
    if K == 0:
        raise ValueError("AUPRO needs at least one anomalous region, but every mask is empty")
    normal = ~m.ravel()
    num_normal = int(normal.sum())
    if num_normal == 0:
        raise ValueError("AUPRO needs normal pixels to count false positives, but every mask pixel is set")
    size = np.bincount(regions.ravel(), minlength=K + 1)  # (K+1,) pixels per region ([0]: normal ones)
    share = np.zeros(K + 1)
    share[1:] = 1.0 / (K * size[1:])  # what one pixel of region k adds to PRO; 0 for normal pixels
    x, regions = x.ravel(), regions.ravel()
    thresholds = np.unique(x)[::-1]  # (T,) every distinct score, highest first
    fpr = _at_or_above(np.sort(x[normal]), thresholds) / num_normal  # (T,)
    inside = regions > 0
    order = np.argsort(x[inside])  # only region pixels carry a weight that must follow their score
    pro = _at_or_above(x[inside][order], thresholds, share[regions[inside]][order])  # (T,)
    fpr, pro = np.append(0.0, fpr), np.append(0.0, pro)  # (T+1,) from a threshold above every score
    return _area_up_to(fpr, pro, max_fpr) / max_fpr


# --------------------------------------------------------------------------------------------------


def anomaly_metrics(image_scores, image_labels, maps, masks, max_fpr: float = 0.3) -> dict[str, float]:
    """The seven numbers of the modern protocol for one class.

    image_scores, image_labels: (N,) one score and one 0/1 label per image;
    maps, masks: (N, H, W) pixel scores and ground-truth masks (pixel metrics pool every pixel).
    Returns {"image_auroc", "image_ap", "image_f1_max", "pixel_auroc", "pixel_ap", "pixel_f1_max", "aupro"}.
    """
    s, y = _scores_and_labels(image_scores, image_labels)
    x, m = _maps_and_masks(maps, masks)
    out = {"image_auroc": auroc(s, y)}  # checks both classes are present
    image_curve = _pr_curve(s, y)
    out["image_ap"] = _average_precision(*image_curve)
    out["image_f1_max"] = _f1_max(*image_curve)
    out["pixel_auroc"] = auroc(x, m)
    pixel_curve = _pr_curve(x.ravel(), m.ravel())  # auroc above has checked both classes are present
    out["pixel_ap"] = _average_precision(*pixel_curve)
    out["pixel_f1_max"] = _f1_max(*pixel_curve)
    out["aupro"] = aupro(x, m, max_fpr=max_fpr)
    return out
