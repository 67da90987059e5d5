"""The claims the notebooks display, asserted: the identical shortcut of a linear layer and a convolution,
attention with a query that does not copy anomalies, UniAD's fixes against a plain transformer, and the
values the experiments report (recomputed with the one scorer).

Everything runs on a few embedded synthetic images (the notebooks' fast setting), one thread, in seconds.
"""
import copy
import math

import pytest
import torch

from uniad_mini import SyntheticAD
from uniad_mini.shortcut import experiments as E
from uniad_mini.shortcut import figures
from uniad_mini.errors import DataError
from uniad_mini.evaluation import evaluate
from uniad_mini.scoring import score
from uniad_mini.features import FeatureExtractor, cache_features
from uniad_mini.shortcut.fig5a import (auroc_resolution, drop_thresholds, fig5a, fig5a_report, fig5a_spread,
                                       fig5a_spread_report, fig5a_summary)
from uniad_mini.shortcut.identity import (centre_fraction, delta_kernel, direction_energy, gd_trajectory, identity_distance,
                                 jacobian_identity, least_squares_linear, mask_leak, rank_bound, spectrum,
                                 token_jacobian, tokens_of)
from uniad_mini.shortcut.reconstructors import (CNN, MLP, NAMES, MaskedQueryLayer, QueryAttention, build, relu_identity,
                                                transformer_size)
from uniad_mini.shortcut.reconstructors import transformer as make_transformer
from uniad_mini.training import train

FAST_SIZES = dict(n_train=6, n_test_good=2, n_test_bad=4)
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def caches(one_thread):
    extractor = FeatureExtractor()  # the frozen backbone alone: no transformer is built to cache features
    train = cache_features(extractor, SyntheticAD("train", **FAST_SIZES), progress=False)
    test = cache_features(extractor, SyntheticAD("test", **FAST_SIZES), progress=False)
    return train, test


@pytest.fixture(scope="module")
def data(caches):
    return E.prepare(*caches)


def recomputed_aurocs(model, data):
    """Image / pixel AUROC of a trained reconstructor by the one scorer, independently of the experiments."""
    scores, maps = score(model, data.test, tuple(data.cache.masks.shape[-2:]))
    return evaluate(scores, maps, data.cache, metrics="auroc")


# ---- the linear layer ---------------------------------------------------------------------------


def test_least_squares_minimiser_is_the_identity_when_tokens_span_the_space(data):
    X = data.train.permute(0, 2, 3, 1).reshape(-1, data.channels)  # (M, C), M >> C
    W = least_squares_linear(X)
    assert (W - torch.eye(data.channels)).norm() / math.sqrt(data.channels) < 1e-3


def test_least_squares_minimiser_is_a_projection_when_tokens_do_not_span():
    torch.manual_seed(0)
    basis = torch.linalg.qr(torch.randn(8, 3))[0]  # 3-dim subspace of R^8
    X = torch.randn(100, 3) @ basis.T  # (100, 8) tokens in that subspace
    W = least_squares_linear(X)
    assert torch.allclose(W, basis @ basis.T, atol=1e-4)  # I on the span, 0 off it
    assert torch.allclose(W @ X.T, X.T, atol=1e-4)


def test_linear_layer_trained_on_normal_features_converges_toward_the_identity(data):
    torch.manual_seed(0)
    linear = build("linear", data.channels, data.grid)
    recs = E.identity_trajectory(linear, data, 100, lr=3e-2, batch_size=4, schedule="cosine")
    dist = [r["identity_distance"] for r in recs]
    assert dist[0] == pytest.approx(1.0)  # starts from W = 0
    assert all(b < a for a, b in zip(dist[::10], dist[10::10])), dist[::10]  # decreasing
    assert dist[-1] < 0.25
    # ...and the anomalies are reconstructed along with it: the shortcut
    assert recs[-1]["anomalous_error"] < 0.01 * recs[0]["anomalous_error"]


def test_full_batch_gradient_descent_follows_the_closed_form_trajectory(data):
    """The derivation's dynamics, E_k = -(I - 2 lr Sigma / C)^k, against the layer the one loop trains with
    full-batch "sgd" from W = 0 (fp32): distance to I and the errors on normal and anomalous test tokens."""
    lam, U = spectrum(tokens_of(data.train))
    lr = data.channels / (2 * lam[0].item())  # the largest-eigenvalue direction is copied in one step
    steps = 25
    measured = E.identity_trajectory(build("linear", data.channels, data.grid), data, steps,
                                     E.gd_settings(steps, lr, len(data.train)))
    energies = {"normal": direction_energy(U, tokens_of(data.test, data.normal)),
                "anomalous": direction_energy(U, tokens_of(data.test, data.anomalous))}
    closed = gd_trajectory(lam, lr, range(steps + 1), energies)
    for m, c in zip(measured, closed):
        assert m["epoch"] == c["epoch"]
        for key in ("identity_distance", "normal_error", "anomalous_error"):
            assert m[key] == pytest.approx(c[key], rel=2e-3, abs=1e-6), (key, m, c)
    assert closed[-1]["identity_distance"] < closed[1]["identity_distance"] < 1.0


def test_direction_energy_sums_to_the_mean_squared_norm(data):
    lam, U = spectrum(tokens_of(data.train))
    assert (lam[:-1] >= lam[1:]).all() and lam.sum().item() == pytest.approx(data.channels, rel=1e-3)
    t = tokens_of(data.test, data.anomalous)
    assert direction_energy(U, t).sum().item() == pytest.approx(t.double().pow(2).sum(1).mean().item(), rel=1e-6)


def test_relu_identity_copies_every_input_above_minus_b_and_clips_only_below():
    torch.manual_seed(0)
    x = torch.randint(-256, 257, (2, 8, 5, 5)) / 64.0  # dyadic values in [-4, 4]: x + 4 - 4 is exact in fp32
    for model in (MLP(8, hidden=16), CNN(8, kernel=3, hidden=8), build("cnn3x3", 8)):
        relu_identity(model, 4.0)
        assert torch.equal(model(x), x), type(model).__name__
        beyond = x.clone()
        beyond[0, 0, 0, 0], beyond[0, 1, 0, 0] = -5.0, 40.0  # below -B the first ReLU clips; above +B nothing does
        y = model(beyond)[0, :2, 0, 0].tolist()
        assert y == [-4.0, 40.0], (type(model).__name__, y)
        assert jacobian_identity(model, x[:1], positions=((2, 2),))["identity_distance"] == pytest.approx(0, abs=1e-7)
    with pytest.raises(ValueError, match="narrower than C"):
        relu_identity(CNN(8, kernel=3, hidden=4), 4.0)


def test_token_jacobian_is_the_autograd_jacobian_for_every_kind_of_model():
    torch.manual_seed(0)
    C, grid, pos = 3, (6, 6), (2, 3)
    x = torch.randn(1, C, *grid)
    models = [MLP(C, hidden=5), CNN(C, kernel=3, hidden=4), QueryAttention(C, grid), MaskedQueryLayer(C, grid, 8, 2, 3),
              make_transformer(C, grid, dim=8, heads=2, layers=1, ffn=8, neighbor_size=3, layerwise_query=True)]
    for m in models:
        m.eval()
        want = torch.autograd.functional.jacobian(lambda z: m(z)[0, :, pos[0], pos[1]], x)  # (C, 1, C, h, w)
        want = want[:, 0].flatten(2).transpose(1, 2)  # (C, N, C)
        assert torch.allclose(token_jacobian(m, x, pos, chunk=2), want, atol=1e-6), type(m).__name__


def test_jacobian_rows_measure_over_a_subset_of_output_channels():
    torch.manual_seed(0)
    x = torch.randn(1, 8, 6, 6)
    copy = relu_identity(MLP(8, hidden=8), 8.0)
    fast = jacobian_identity(copy, x, positions=((2, 2),), rows=3)
    assert fast["identity_distance"] < 1e-6 and fast["self_share"] == pytest.approx(1.0)
    att = QueryAttention(8, (6, 6))
    J = token_jacobian(att, x, (2, 2))
    assert torch.allclose(token_jacobian(att, x, (2, 2), rows=torch.tensor([1, 5])), J[[1, 5]])
    assert jacobian_identity(att, x, ((2, 2),), rows=8) == jacobian_identity(att, x, ((2, 2),))


def test_the_neighbor_mask_blocks_x_i_for_one_layer_only(one_thread):
    torch.manual_seed(0)
    x = torch.randn(1, 16, 14, 14)
    rows = {(r["model"], r["layers"], r["mask"]): r for r in mask_leak(x, layers=(1, 2), positions=((7, 7), (2, 9)))}
    assert rows[("one masked attention layer", 1, True)]["self_norm"] == 0.0  # exactly: no path from x_i to y_i
    share = {(L, mask): rows[("UniAD transformer", L, mask)]["self_share"] for L in (1, 2) for mask in (True, False)}
    for L in (1, 2):  # encoder residual + decoder: x_i comes back through a far token
        assert rows[("UniAD transformer", L, True)]["self_norm"] > 1e-3
    assert share[1, False] > 2 * share[1, True]  # one encoder + one decoder layer: the mask still holds x_i down
    assert share[2, True] > 0.5 * share[2, False]  # two of each: at initialisation it no longer does


def test_a_width_r_bottleneck_keeps_j_ii_at_least_sqrt_1_minus_r_over_c_from_the_identity():
    torch.manual_seed(0)
    C, r = 12, 5
    assert rank_bound(r, C) == pytest.approx(math.sqrt(1 - r / C)) and rank_bound(C, C) == rank_bound(2 * C, C) == 0
    for _ in range(20):  # any rank-r matrix is at least sqrt(C - r) from I
        M = torch.randn(C, r) @ torch.randn(r, C)
        assert (M - torch.eye(C)).norm() / math.sqrt(C) >= rank_bound(r, C) - 1e-6
    U = torch.linalg.qr(torch.randn(C, r)).Q  # the projection onto r directions meets it
    assert (U @ U.T - torch.eye(C)).norm() / math.sqrt(C) == pytest.approx(rank_bound(r, C), abs=1e-6)
    x = torch.randn(1, C, 6, 6)
    narrow = make_transformer(C, (6, 6), dim=r + 1, heads=1, layers=1, ffn=8)  # output_proj (r + 1) -> C
    assert jacobian_identity(narrow, x, positions=((2, 2),))["identity_distance"] >= rank_bound(r + 1, C) - 1e-6


def test_the_wide_transformers_are_wide_enough_to_copy():
    for C in (16, 192, 272):
        size = transformer_size("wide", C)
        assert size["dim"] >= C + 2 and size["dim"] % size["heads"] == 0 and size["dim"] % 8 == 0
        assert {k: v for k, v in size.items() if k not in ("dim", "ffn")} == {
            k: v for k, v in transformer_size("small", C).items() if k not in ("dim", "ffn")}
    assert transformer_size("wide", 192)["dim"] == 200
    for name in ("transformer-wide", "uniad-wide"):
        m = build(name, 16, (14, 14))
        assert m.module.input_proj.out_features == transformer_size("wide", 16)["dim"]
    assert build("uniad-wide", 16).module.neighbor_size == build("uniad", 16).module.neighbor_size is not None


def test_one_by_one_conv_is_the_linear_layer_at_every_position(data):
    torch.manual_seed(0)
    linear = MLP(data.channels, layers=1)
    conv = CNN(data.channels, kernel=1, layers=1)
    with torch.no_grad():
        conv.net[0].weight.copy_(linear.net[0].weight[:, :, None, None])
        conv.net[0].bias.copy_(linear.net[0].bias)
        assert torch.allclose(conv(data.test[:2]), linear(data.test[:2]), atol=1e-5)


def test_delta_kernel_is_the_identity_convolution(data):
    conv = CNN(data.channels, kernel=3, layers=1)
    with torch.no_grad():
        conv.net[0].weight.copy_(delta_kernel(data.channels, 3))
        conv.net[0].bias.zero_()
        assert torch.allclose(conv(data.test[:2]), data.test[:2])
    assert identity_distance(conv) == pytest.approx(0.0, abs=1e-7)
    assert centre_fraction(conv.net[0].weight) == pytest.approx(1.0)


def test_conv3x3_kernel_concentrates_toward_the_centre_delta(data):
    torch.manual_seed(0)
    conv = build("conv3x3", data.channels, data.grid)
    recs = E.identity_trajectory(conv, data, 20, lr=3e-3, batch_size=4, schedule="cosine")
    centre = [r["centre_fraction"] for r in recs[1:]]  # epoch 0 is K = 0: no share to speak of
    assert centre[-1] > centre[0] + 0.1, centre
    assert centre[-1] > 2.5 / 9  # well above an even spread over the 9 taps
    assert recs[-1]["identity_distance"] < recs[1]["identity_distance"]
    assert recs[-1]["anomalous_error"] < 0.5 * recs[0]["anomalous_error"]


def test_identity_distance_needs_a_single_layer():
    with pytest.raises(ValueError, match="single linear layer"):
        identity_distance(MLP(8))


# ---- attention with a query ---------------------------------------------------------------------


def test_query_attention_outputs_convex_combinations_of_its_input_tokens():
    torch.manual_seed(0)
    att = QueryAttention(8, (4, 4))
    x = torch.randn(2, 8, 4, 4)
    A = att.attention(x)
    assert A.shape == (2, 16, 16)
    assert torch.allclose(A.sum(-1), torch.ones(2, 16)) and (A >= 0).all()
    same = torch.randn(8, 1, 1).expand(1, 8, 4, 4)  # every token equal: a convex combination gives it back
    assert torch.allclose(att(same), same, atol=1e-6)


def test_attention_error_on_anomalies_stays_above_the_mlps(data):
    """Compared where both reconstruct normal tokens equally well, the attention-with-query reconstructor lets an
    anomaly stand out more (anomalous / normal error), and its anomalous error stays higher in absolute terms."""
    torch.manual_seed(0)
    att = E.identity_trajectory(build("attention", data.channels, data.grid), data, 30, lr=1e-1, batch_size=4,
                                schedule="cosine")
    torch.manual_seed(0)
    mlp = E.identity_trajectory(build("mlp", data.channels, data.grid), data, 30, lr=1e-3, batch_size=4)
    a = att[-1]
    m = E.at_equal_normal_error(mlp, a["normal_error"])
    assert m["normal_error"] <= a["normal_error"] * 1.05  # the MLP did reach that normal error
    assert a["ratio"] > 1.2 * m["ratio"], (a, m)
    assert a["anomalous_error"] > m["anomalous_error"]
    assert a["anomalous_error"] > mlp[-1]["anomalous_error"]
    # the attention's anomalous error levels off while the MLP's keeps falling with its normal error
    assert a["anomalous_error"] > 0.6 * att[0]["anomalous_error"]
    assert mlp[-1]["anomalous_error"] < 0.5 * mlp[0]["anomalous_error"]


def test_self_margin_gives_the_self_weight_and_a_pushed_token_is_copied():
    torch.manual_seed(0)
    att = QueryAttention(8, (4, 4))
    x = torch.randn(2, 8, 4, 4)
    m = E.self_margin(att, x)
    assert torch.allclose(m["margin"].sigmoid(), m["self_weight"], atol=1e-6)
    push = E.push_along_query(att, x[:1], (1, 2), [0.0, 10.0, 40.0])
    assert push[0]["self_weight"] < push[1]["self_weight"] < push[2]["self_weight"]  # the logit is linear in x_i
    assert push[2]["error"] < 0.05 * push[2]["deviation"]  # most of the move is reconstructed: copied


def test_the_margin_is_bounded_by_the_gap_to_the_mean_rival_with_equality_for_equal_rivals():
    torch.manual_seed(0)
    att = QueryAttention(8, (4, 4))
    m = E.self_margin(att, torch.randn(3, 8, 4, 4))
    assert (m["margin"] <= m["mean_gap"] / math.sqrt(8) - math.log(15) + 1e-5).all()  # Jensen, N - 1 = 15 rivals
    x = torch.zeros(1, 8, 4, 4)
    x[0, :, 1, 2] = torch.randn(8)  # every rival of token (1, 2) is 0: all its rival logits are equal
    m = E.self_margin(att, x)
    i = 1 * 4 + 2
    assert m["margin"][0, i].item() == pytest.approx(m["mean_gap"][0, i].item() / math.sqrt(8) - math.log(15), abs=1e-5)


def test_a_move_orthogonal_to_the_query_keeps_the_self_weight_and_copies_that_share_of_the_move():
    torch.manual_seed(0)
    att = QueryAttention(8, (4, 4))
    x = torch.randn(1, 8, 4, 4)
    push = E.push_along_query(att, x, (2, 1), [0.0, 10.0, 1000.0], orthogonal=True)
    a = push[0]["self_weight"]
    assert all(p["self_weight"] == pytest.approx(a, abs=1e-4) for p in push)  # row i of A does not see the move
    assert a > 0.1  # (a self weight large enough for the share below to be a test)
    assert push[-1]["error"] / push[-1]["deviation"] == pytest.approx((1 - a) ** 2, rel=0.05)  # 1 - A_ii is left
    along = E.push_along_query(att, x, (2, 1), [10.0])
    assert along[0]["self_weight"] > a  # along q_i the self weight grows instead


def test_defect_positions_are_anomalous_tokens_of_that_image(data):
    i = int(torch.nonzero(data.anomalous.flatten(1).any(1))[0])
    at = E.defect_positions(data, i, count=3)
    assert 1 <= len(at) <= 3 and len(set(at)) == len(at) and all(data.anomalous[i][r, c] for r, c in at)
    normal = int(torch.nonzero(data.cache.labels == 0)[0])
    with pytest.raises(ValueError, match="no anomalous token"):
        E.defect_positions(data, normal)


def test_defect_attention_shares_are_fractions(data):
    torch.manual_seed(0)
    d = E.defect_attention(QueryAttention(data.channels, data.grid), data)
    assert all(0 <= v <= 1 for v in d.values()) and d["self"] + d["other_defect_tokens"] <= 1 + 1e-6


# ---- the experiments ----------------------------------------------------------------------------


def test_fig5a_records_falling_loss_and_the_aurocs_of_the_model_it_trained(caches, data):
    recs, models = fig5a(*caches, names=("mlp", "uniad"), epochs=3, eval_every=2, size="tiny", log=None,
                         return_models=True, jacobian_positions=((7, 7),), jacobian_rows=16)
    assert [(r["model"], r["epoch"]) for r in recs] == [("mlp", 0), ("mlp", 2), ("mlp", 3), ("uniad", 0), ("uniad", 2),
                                                       ("uniad", 3)]
    mlp = [r["loss"] for r in recs if r["model"] == "mlp"]
    assert mlp[2] < mlp[1] and mlp[2] < mlp[0], mlp  # epoch 2 is a mean over the epoch; by epoch 3 it has fallen
    for name in ("mlp", "uniad"):
        first, *_, last = [r for r in recs if r["model"] == name]
        assert last["loss"] < first["loss"]
        again = recomputed_aurocs(models[name], data)  # the last record describes the model it returned
        assert last["image_auroc"] == pytest.approx(again["mean"]["image_auroc"])
        assert last["pixel_auroc"] == pytest.approx(again["mean"]["pixel_auroc"])
        assert last["per_class"] == {c: v for c, v in again.items() if c != "mean"}
        assert last["ratio"] == pytest.approx(E.error_ratio(models[name], data)["ratio"])
        assert 0 <= last["jacobian"]["self_share"] <= 1 and last["jacobian"]["identity_distance"] > 0
    for r in recs:
        assert sorted(r["per_class"]) == sorted(set(caches[1].classes))
        assert 0 <= r["image_auroc"] <= 1 and 0 <= r["pixel_auroc"] <= 1 and r["ratio"] > 0


def test_one_reconstruction_gives_the_aurocs_and_the_error_ratio(data):
    torch.manual_seed(0)
    model = build("mlp", data.channels, data.grid)
    res, ratio = E.aurocs_and_ratio(model, data)
    assert res == E.aurocs(model, data) and ratio == pytest.approx(E.error_ratio(model, data))


def _records(model, image, pixel, loss):
    return [{"model": model, "epoch": e, "loss": lo, "image_auroc": i, "pixel_auroc": p,
             "per_class": {"a": {"image_auroc": i, "pixel_auroc": p}}}
            for e, (i, p, lo) in enumerate(zip(image, pixel, loss))]


def test_fig5a_report_says_what_was_observed_and_in_how_many_epochs():
    falling = [1.0, 0.5, 0.1]
    recs = (_records("mlp", [0.8, 0.9, 0.95], [0.8, 0.9, 0.95], falling)  # keeps improving: claim fails
            + _records("cnn3x3", [0.8, 0.95, 0.85], [0.8, 0.9, 0.9], falling)  # peaks and drops 10 points: holds
            + _records("transformer", [0.8, 0.9, 0.88], [0.8, 0.9, 0.9], falling)  # drops 2 < 10: holds
            + _records("uniad", [0.8, 0.9, 0.85], [0.8, 0.9, 0.9], falling))  # drops 5: claim fails
    rows = {r["model"]: r for r in fig5a_summary(recs)}
    assert rows["mlp"]["holds"] is False and rows["cnn3x3"]["holds"] is True
    assert rows["transformer"]["holds"] is True and rows["uniad"]["holds"] is False
    assert rows["cnn3x3"]["image_auroc"] == pytest.approx({"peak": 0.95, "peak_epoch": 1, "last": 0.85, "drop": 0.1,
                                                            "loss_at_peak": 0.5, "loss_last": 0.1, "last_epoch": 2})
    assert rows["cnn3x3"]["holds_per_metric"] == {"image_auroc": True, "pixel_auroc": False}
    report = fig5a_report(recs)
    assert "HOLD" not in report  # a run of 2 epochs says what it saw, not whether a 1000-epoch claim holds
    assert ("mlp (paper: detection drops while the loss falls): loss 1.000 -> 0.100; image AUROC fell 0.0 from its "
            "peak, 1.0 short of the 1.0 threshold: no drop;") in report
    assert "So the drop is not observed in 2 epochs (the paper trains 1000)." in report
    assert ("image AUROC fell 10.0 from its peak, 9.0 beyond the 1.0 threshold: a drop; pixel AUROC fell 0.0 from "
            "its peak, 1.0 short of the 1.0 threshold: no drop. So the drop is observed in 2 epochs (image AUROC).") in report
    assert "uniad (paper: detection does not drop" in report and "So a drop in 2 epochs (image AUROC), where the paper reports none." in report
    rising = fig5a_report(_records("mlp", [0.8, 0.95, 0.85], [0.8, 0.9, 0.9], [0.5, 0.6, 0.7]))
    assert "So a drop in 2 epochs (image AUROC), but with a loss that did not fall." in rising  # not the claim's drop


def test_a_drop_printed_as_one_point_counts_as_one_point():
    recs = _records("mlp", [0.8, 0.938, 0.928], [0.8, 0.9, 0.9], [1.0, 0.5, 0.1])  # 0.938 - 0.928 = 0.00999...
    (row,) = fig5a_summary(recs, drop=1.0)
    assert row["drops"]["image_auroc"] and row["largest_drop"] == 1.0


def test_auroc_resolution_is_one_image_pair_of_the_smallest_class(caches):
    _, test = caches  # per class 4 anomalous x 2 normal = 8 pairs, 3 classes
    cls, points = auroc_resolution(test)
    assert points == pytest.approx(100 / 8 / 3)


def test_an_image_auroc_drop_must_exceed_several_image_pairs(caches):
    _, test = caches  # one pair of the smallest class moves the mean image AUROC by 100 / 8 / 3 = 4.2 points
    assert drop_thresholds(test, drop=1.0, pairs=3) == {"image_auroc": 12.5, "pixel_auroc": 1.0}
    recs = _records("mlp", [0.8, 0.95, 0.90], [0.8, 0.95, 0.90], [1.0, 0.5, 0.1])  # both fall 5 points
    (row,) = fig5a_summary(recs, drop_thresholds(test))
    assert row["drops"] == {"image_auroc": False, "pixel_auroc": True}
    assert "at least 12.5 image / 1.0 pixel AUROC points" in fig5a_report(recs, test)


def test_fig5a_summary_cannot_judge_the_transformer_when_nothing_dropped():
    recs = _records("mlp", [0.8, 0.9], [0.8, 0.9], [1, 0.5]) + _records("transformer", [0.8, 0.9], [0.8, 0.9], [1, 0.5])
    rows = {r["model"]: r for r in fig5a_summary(recs)}
    assert rows["transformer"]["holds"] is None and "cannot be compared: no MLP or CNN drop observed" in fig5a_report(recs)


def test_a_verdict_over_runs_holds_only_with_a_margin_of_the_spread():
    falling = [1.0, 0.5, 0.1]
    runs = {"seed 0": _records("mlp", [0.80, 0.95, 0.94], [0.8, 0.90, 0.900], falling)  # image 1 point, pixel 0
                      + _records("cnn3x3", [0.80, 0.95, 0.80], [0.8, 0.90, 0.895], falling)  # image 15, pixel 0.5
                      + _records("uniad", [0.80, 0.95, 0.90], [0.8, 0.90, 0.900], falling),  # image 5, pixel 0
            "seed 1": _records("mlp", [0.80, 0.95, 0.93], [0.8, 0.90, 0.900], falling)  # image 2
                      + _records("cnn3x3", [0.80, 0.95, 0.85], [0.8, 0.90, 0.900], falling)  # image 10
                      + _records("uniad", [0.80, 0.95, 0.95], [0.8, 0.90, 0.900], falling)}  # image 0
    rows = {(r["model"], r["metric"]): r for r in fig5a_spread(runs, drop=3.0)}
    assert rows["mlp", "image_auroc"]["drops"] == [1.0, 2.0] and rows["mlp", "image_auroc"]["spread"] == 1.0
    assert rows["mlp", "image_auroc"]["verdict"] == "no drop"  # 2.0 <= 3.0 - 1.0
    assert rows["cnn3x3", "image_auroc"]["verdict"] == "drop"  # 10.0 >= 3.0 + 5.0
    assert rows["uniad", "image_auroc"]["verdict"] == "undecided"  # one run 5.0 above, one 0.0 below: spread 5
    assert rows["cnn3x3", "pixel_auroc"]["margin"] == 0.5 and rows["cnn3x3", "pixel_auroc"]["verdict"] == "no drop"
    assert rows["mlp", "image_auroc"]["loss_ratio"] == pytest.approx([0.1, 0.1])
    report = fig5a_spread_report(runs, drop=3.0)
    assert "HOLD" not in report
    assert ("mlp: paper says detection drops -> image AUROC no drop, pixel AUROC no drop: the drop is not observed "
            "in 2 runs of 2 epochs (the paper trains 1000)") in report
    assert ("cnn3x3: paper says detection drops -> image AUROC drop, pixel AUROC no drop: the drop is observed with "
            "the margin in 2 runs of 2 epochs") in report
    assert ("uniad: paper says detection does not drop -> image AUROC undecided, pixel AUROC no drop: not settled in "
            "2 runs of 2 epochs") in report
    wide = {k: [dict(r, model="transformer-wide") for r in v if r["model"] == "uniad"] + v for k, v in runs.items()}
    assert "transformer-wide: paper says detection drops less -> " in fig5a_spread_report(wide, drop=3.0)


def test_ablation_rows_are_the_aurocs_and_losses_of_the_models_it_trained(caches, data):
    configs = {"plain": {}, "mask + jitter": dict(neighbor_size=7, jitter_scale=20.0)}
    rows, models = E.ablation(*caches, configs=configs, epochs=1, size="tiny", log=None, return_models=True)
    assert [r["config"] for r in rows] == ["plain", "mask + jitter"] and list(models) == ["plain", "mask + jitter"]
    for r in rows:
        assert set(r) == set(E.ABLATION_KEYS)
        again = recomputed_aurocs(models[r["config"]], data)
        assert (r["image_auroc"], r["pixel_auroc"]) == pytest.approx(
            (again["mean"]["image_auroc"], again["mean"]["pixel_auroc"]))
        assert r["per_class"] == {c: v for c, v in again.items() if c != "mean"}
        assert 0 <= r["image_auroc"] <= 1 and 0 <= r["pixel_auroc"] <= 1
        assert 0 < r["loss"] < E.train_loss(build("transformer", data.channels, data.grid, "tiny"), data.train)
    assert (rows[0]["neighbor_size"], rows[0]["layerwise_query"], rows[0]["jitter_scale"]) == (None, False, 0.0)
    assert (rows[1]["neighbor_size"], rows[1]["layerwise_query"], rows[1]["jitter_scale"]) == (7, False, 20.0)
    table = E.ablation_table(rows).splitlines()
    assert len(table) == 2 + len(rows) and table[2].startswith("| plain | - | - | - |")
    assert set(E.ABLATION) == {"plain transformer", "+ layer-wise query", "+ neighbor mask", "+ feature jitter",
                               "UniAD (all three)"}


def test_every_named_reconstructor_keeps_the_feature_grid():
    x = torch.randn(2, 16, 14, 14)
    for name in NAMES:
        model = build(name, 16, (14, 14), size="tiny")
        assert model(x).shape == x.shape, name
    with pytest.raises(ValueError, match="unknown reconstructor"):
        build("resnet", 16)
    with pytest.raises(ValueError, match="unknown transformer size"):
        build("uniad", 16, size="huge")


def test_experiments_train_with_the_one_loop_and_plain_adam(data):
    settings = E.adam_settings(3, lr=1e-2, batch_size=4, seed=3)
    assert (settings.optimizer, settings.weight_decay, settings.warmup, settings.schedule) == ("adam", 0.0, 0.0,
                                                                                                 "constant")
    torch.manual_seed(1)
    model = MLP(data.channels, hidden=16)
    twin = copy.deepcopy(model)
    recs = E.identity_trajectory(model, data, 3, lr=1e-2, batch_size=4, seed=3)
    state = train(twin, data.train, settings, progress=False)
    assert [r["loss"] for r in recs[1:]] == state["history"]
    assert [r["epoch"] for r in recs] == [0, 1, 2, 3]


# ---- where the notebooks' data comes from -------------------------------------------------------


def test_fast_setting_always_uses_the_synthetic_data(monkeypatch):
    monkeypatch.setenv(E.FAST_ENV, "1")
    assert E.fast_mode()
    d = E.experiment_data(classes=["mesh"])
    assert d["fast"] and "synthetic" in d["source"] and len(d["train"]) == FAST_SIZES["n_train"]
    monkeypatch.setenv(E.FAST_ENV, "0")
    assert not E.fast_mode()


def test_a_wrong_data_folder_says_so(monkeypatch, tmp_path):
    monkeypatch.setenv("UNIAD_DATA", str(tmp_path / "missing"))
    with pytest.raises(DataError, match="UNIAD_DATA"):
        E.experiment_data(fast=False)


def test_full_setting_reads_the_real_images_when_present(monkeypatch, shared_data):
    monkeypatch.setenv("UNIAD_DATA", str(shared_data))
    d = E.experiment_data(fast=False, classes=["grid"])
    assert d["source"].startswith("real images") and d["test"].classes == ["grid"]


# ---- pictures -----------------------------------------------------------------------------------


def test_plots_draw_from_the_records(data, caches):
    pytest.importorskip("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    recs = _records("mlp", [0.8, 0.9], [0.8, 0.9], [1, 0.5])
    traj = [{"epoch": e, "loss": 1.0, "identity_distance": 1 - e / 3, "anomalous_error": 3 - e,
             "normal_error": 2 - e / 2, "centre_fraction": 0.1 + e / 10} for e in range(3)]
    att = QueryAttention(data.channels, data.grid)
    figs = [figures.plot_fig5a(recs), figures.plot_trajectories({"t": traj}), figures.plot_error_plane({"t": traj}),
            figures.plot_kernel_energy({"delta": delta_kernel(4, 3)}), figures.plot_neighbor_masks(),
            figures.plot_attention(att, data, *E.example_pair(data)),
            figures.plot_ablation([{"config": "a", "image_auroc": 0.9, "pixel_auroc": 0.8}], noise=3.0),
            figures.plot_spectrum(torch.tensor([3.0, 2.0, 1.0]), {"normal": torch.tensor([2.0, 1.0, 0.5]),
                                  "anomalous": torch.tensor([1.0, 1.0, 1.0])}, {"ratio": ([0, 1, 10], [1.0, 2.0, 3.0])})]
    assert all(len(f.axes) for f in figs)
    for f in figs[:2] + figs[-2:]:  # every panel with a curve or bars says what its y-axis is
        assert all(ax.get_ylabel() for ax in f.axes if ax.lines or ax.patches), f
    assert figs[-2].axes[0].get_ylim() == (50.0, 100.0)  # AUROC bars from chance, not from the lowest bar
    dashed = figures.plot_trajectories({"a": traj, "b": traj}, styles={"b": dict(ls="--")})
    assert [line.get_linestyle() for line in dashed.axes[0].lines] == ["-", "--"]
    figs.append(dashed)
    for f in figs:
        plt.close(f)
