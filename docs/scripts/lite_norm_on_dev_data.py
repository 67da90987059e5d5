"""What the Lite0 input normalisation changes on real images, without training a model.

    python docs/scripts/lite_norm_on_dev_data.py [DATA_ROOT]      (default: $UNIAD_DATA, else ../shared/data)

For the current input (pixel - 127) / 128, TensorFlow's for the Lite weights, and the earlier
(pixel - 127.5) / 127.5: the stacked features' largest difference over the test images, as a fraction of
their largest value, and the nearest-training-token baseline on each (no training: every test token is
replaced by its nearest training token in standardised units and scored as UniAD scores; benchmark.knn_results).
"""
import sys

import torch

from uniad_mini import UniAD
from uniad_mini.checks import open_checked
from uniad_mini.app.actions import data_root_or_default
from uniad_mini.bench.quality import knn_results
from uniad_mini.evaluation import results_table

OLD = ((0.5,) * 3, (0.5,) * 3)  # (pixel - 127.5) / 127.5


def main(root) -> None:
    model = UniAD()
    sets, _ = open_checked(root)
    current = (model.backbone.mean, model.backbone.std)
    runs = {}
    for name, (mean, std) in [("(p - 127) / 128", current), ("(p - 127.5) / 127.5", OLD)]:
        model.backbone.mean, model.backbone.std = mean, std
        train, test = model.cache(sets["train"], desc=f"train {name}"), model.cache(sets["test"], desc=f"test {name}")
        model.set_feature_stats(train.features)
        runs[name] = (test.features, knn_results(model, train, test))
    (a, new), (b, old) = runs.values()
    print(f"\nstacked test features: largest |difference| / largest |value| = {((a - b).abs().max() / a.abs().max()):.4f}")
    for name, (_, results) in runs.items():
        print(f"\nnearest-training-token baseline, input {name}:\n")
        print(results_table(results, ["image_auroc", "pixel_auroc", "aupro"]))


if __name__ == "__main__":
    torch.manual_seed(0)
    main(data_root_or_default(sys.argv[1] if len(sys.argv) > 1 else None))
