"""The metric speed table of `uniad-mini perf`, side by side with scikit-learn (the test oracle).

    python docs/scripts/metric_speed_vs_sklearn.py          # options: --pixels 1e7 --repeats 3

scikit-learn lives here, beside the tests, because the package never imports it. It has no AUPRO; its
counterpart here is exact and short: `roc_curve` with each pixel of region k weighted 1 / (K |C_k|) and
each normal pixel 1 gives (FPR, PRO) at every threshold, the regions labelled by scipy.ndimage.label.
Both values are printed, so the speed-up is for the same number.
"""
import argparse

import numpy as np
from scipy import ndimage
from sklearn.metrics import roc_auc_score, roc_curve

from uniad_mini.bench.speed import metric_speed


def sklearn_aupro(maps: np.ndarray, masks: np.ndarray, max_fpr: float = 0.3) -> float:
    """AUPRO with scikit-learn and scipy: a weighted ROC curve is the (FPR, PRO) curve."""
    regions = np.zeros(masks.shape, dtype=np.int64)
    K = 0
    for n in range(len(masks)):  # 8-connectivity, like metrics.connected_components
        lab, k = ndimage.label(masks[n], structure=np.ones((3, 3)))
        regions[n] = np.where(lab > 0, lab + K, 0)
        K += k
    size = np.bincount(regions.ravel(), minlength=K + 1)
    weight = np.ones(K + 1)
    weight[1:] = 1.0 / (K * size[1:])  # a region pixel's share of PRO; normal pixels weigh 1
    fpr, pro, _ = roc_curve(masks.ravel(), maps.ravel(), sample_weight=weight[regions.ravel()], drop_intermediate=False)
    k = int(np.searchsorted(fpr, max_fpr, side="right"))
    x, y = fpr[:k], pro[:k]
    if x[-1] < max_fpr:
        x = np.append(x, max_fpr)
        y = np.append(y, np.interp(max_fpr, fpr[k - 1 : k + 1], pro[k - 1 : k + 1]))
    return float(np.trapezoid(y, x) / max_fpr)


ORACLES = {
    "pixel AUROC": lambda maps, masks: roc_auc_score(masks.ravel(), maps.ravel()),
    "AUPRO (FPR <= 0.3)": sklearn_aupro,
}

if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pixels", type=float, default=10e6, help="scores to rank (default 10M)")
    p.add_argument("--repeats", type=int, default=3, help="timed repetitions, the best is kept (default 3)")
    args = p.parse_args()
    print(metric_speed(int(args.pixels), args.repeats, ORACLES, "scikit-learn"))
