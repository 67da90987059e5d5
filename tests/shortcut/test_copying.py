"""The copy made to happen and one remedy ablated (uniad_mini/shortcut/copying.py, assignments 07-08): the synthetic
features are what their docstring says, Jittered is Eq. 4 in training mode only, the loop is reproducible, and the
measures give their end values on a copy and on a model that removes everything."""
import math

import pytest
import torch
import torch.nn as nn

from uniad_mini.shortcut import copying
from uniad_mini.shortcut.reconstructors import relu_identity


@pytest.fixture(scope="module")
def data():
    return copying.synthetic_features(n_train=8, n_test=6)


def test_synthetic_features_are_seeded_and_each_defect_moves_a_disc_by_its_strength(data):
    again = copying.synthetic_features(n_train=8, n_test=6)
    assert torch.equal(data.train, again.train) and torch.equal(data.test, again.test)
    assert data.train.shape == (8, 32, 14, 14) and data.test.shape == data.clean.shape == (6, 32, 14, 14)
    assert not (data.anomalous & data.normal).any() and data.normal[:3].all() and not data.normal[3:].any()
    assert data.anomalous[3:].flatten(1).any(1).all() and not data.anomalous[:3].any()
    moved = (data.test - data.clean).norm(dim=1)  # (M, h, w)
    assert torch.allclose(moved[data.anomalous], torch.full_like(moved[data.anomalous], 4.0), atol=1e-4)
    assert (moved[~data.anomalous] == 0).all()
    tokens = data.train.permute(0, 2, 3, 1).reshape(-1, 32)
    lam = torch.linalg.eigvalsh(tokens.T @ tokens / len(tokens))
    assert lam.min() > 0.1 and lam.max() > 3  # every direction has variance, most sits in the pattern's 6


def test_jittered_adds_eq4_noise_in_training_mode_only_and_has_no_weights():
    x = torch.randn(64)[None, :, None, None].repeat(1, 1, 80, 80)  # (1, 64, 80, 80): one token, 6400 times
    net = copying.Jittered(nn.Identity(), 10.0)
    assert net.eval()(x) is x and copying.Jittered(nn.Identity(), 0.0).train()(x) is x
    assert list(net.parameters()) == []
    noise = net.train()(x) - x
    assert noise.std().item() == pytest.approx(10.0 * x[0, :, 0, 0].norm().item() / 64, rel=0.03)


def test_fit_is_reproducible_and_calls_back_before_and_after_every_epoch(data):
    seen, losses = [], []
    for _ in range(2):
        torch.manual_seed(0)
        model = copying.Jittered(copying.token_mlp(32, 16), 3.0)
        losses.append(copying.fit(model, data.train, 3, seed=1, callback=lambda m, e, loss: seen.append((e, loss))))
    assert losses[0] == losses[1] and len(losses[0]) == 3 and not model.training
    assert [e for e, _ in seen[:4]] == [0, 1, 2, 3] and seen[0][1] is None and seen[3][1] == losses[0][-1]


def test_a_copy_passes_every_defect_and_a_model_that_outputs_nothing_passes_none(data):
    copy = relu_identity(copying.token_mlp(32, 64), 2.0 ** math.ceil(math.log2(data.test.abs().max().item())))
    m = copying.measure(copy, data)
    assert m["identity_distance"] < 1e-5 and m["self_share"] == pytest.approx(1.0)
    assert m["defect_passed"] == pytest.approx(1.0, abs=1e-4) and m["normal_error"] < 1e-8
    nothing = nn.Conv2d(32, 32, 1)
    nn.init.zeros_(nothing.weight), nn.init.zeros_(nothing.bias)  # y = 0: its error is each token's own energy
    zero = copying.errors(nothing, data)
    assert zero["defect_passed"] == 0.0 and zero["anomalous_error"] > zero["normal_error"]


def test_a_narrow_token_mlp_stays_above_the_rank_bound(data):
    torch.manual_seed(0)
    narrow = copying.token_mlp(32, 8)
    copying.fit(narrow, data.train, 2)
    assert copying.measure(narrow, data)["identity_distance"] >= math.sqrt(1 - 8 / 32) - 1e-6
