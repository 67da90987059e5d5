"""Digests of every weight of a small UniAD trained in fp32 on a fixed seed, on the plain reference path and on
the default (fast) path: run it in two checkouts to see that a change left training bit for bit as it was.

    cd CHECKOUT && python PATH/TO/docs/scripts/weights_digest.py      # prints two sha256

The checkout's own package is imported (its root goes first on sys.path). The model is small (width 64,
1 + 1 layers, 2 epochs) so that the check takes about a minute a path on one thread. The digest covers the
transformer's weights and the feature statistics (what a checkpoint saves), name by name.
"""
import hashlib
import sys

sys.path.insert(0, ".")  # the checkout this is run in, before any installed copy

import torch  # noqa: E402

from uniad_mini import SyntheticAD, UniAD  # noqa: E402


def digest(**runtime) -> str:
    torch.set_num_threads(1)
    model = UniAD(epochs=2, hidden_dim=64, layers=1, ffn_dim=64, precision="fp32", seed=0, **runtime)
    model.fit(SyntheticAD(split="train", seed=0), progress=False)
    h = hashlib.sha256()
    for name, value in sorted(model.transformer.state_dict().items()):
        h.update(name.encode())
        h.update(value.detach().cpu().numpy().tobytes())
    for value in (model.feature_mean, model.feature_std):
        h.update(value.cpu().numpy().tobytes())
    return h.hexdigest()


if __name__ == "__main__":
    print("plain  ", digest(fast=False))
    print("default", digest())
