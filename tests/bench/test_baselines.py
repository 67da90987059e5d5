"""bench-quality's trained baseline (the 3 x 3 CNN) and each scorer's memory and time against the training set."""
import json

import pytest
import torch

from uniad_mini import SyntheticAD, UniAD
from uniad_mini.bench.baselines import costs, cnn_model, cnn_results, cost_table, nbytes, training_sizes
from uniad_mini.app.cli import main
from uniad_mini.baselines import NearestToken
from uniad_mini.synthetic import write_mvtec

TINY = dict(hidden_dim=32, heads=2, layers=1, ffn_dim=64)


@pytest.fixture(scope="module")
def caches():
    model = UniAD(**TINY)
    train = model.cache(SyntheticAD("train", n_train=4), progress=False)
    test = model.cache(SyntheticAD("test", n_test_good=1, n_test_bad=1), progress=False)
    model.set_feature_stats(train.features)
    return model, train, test


@pytest.mark.slow
def test_the_cnn_is_trained_by_the_loop_from_its_seed(caches, one_thread):
    model, train, test = caches
    z = model.standardize(train.features)
    untrained = cnn_model(model, train, 1, seed=5)  # one epoch
    again = cnn_model(model, train, 1, seed=5)
    other = cnn_model(model, train, 1, seed=6)
    w = lambda m: torch.cat([p.flatten() for p in m.parameters()])  # noqa: E731
    assert torch.equal(w(untrained), w(again)) and not torch.equal(w(untrained), w(other))
    longer = cnn_model(model, train, 8, seed=5)
    err = lambda m: float(((m(z) - z) ** 2).mean().detach())  # noqa: E731
    assert err(longer) < err(untrained)  # training lowers the reconstruction error of the normal features
    results, _ = cnn_results(model, train, test, 1, seed=5)
    assert set(results) == {"cap", "carpet", "mesh", "mean"} and 0 <= results["mean"]["image_auroc"] <= 1


@pytest.mark.slow
def test_costs_count_the_bank_by_hand_and_the_models_do_not_grow(caches, one_thread):
    model, train, test = caches
    cnn = cnn_model(model, train, 1, seed=0)
    rows = costs(model, train, test, cnn, config=TINY)
    C, tokens = train.features.shape[1], 14 * 14
    assert [r["train_images"] for r in rows] == training_sizes(len(train)) == [1, 3, 6, 12]
    for r in rows:  # the bank holds every token of n images, float32
        assert r["knn"]["bytes"] == r["train_images"] * tokens * C * 4
        assert r["knn"]["ms_per_image"] > 0 and r["uniad"]["ms_per_image"] > 0
    cnn_params = sum(p.numel() for p in cnn.parameters())
    uniad_params = sum(p.numel() for p in UniAD(**TINY).transformer.parameters())
    assert {r["cnn"]["bytes"] for r in rows} == {4 * cnn_params}
    assert {r["uniad"]["bytes"] for r in rows} == {nbytes(UniAD(**TINY).reconstructor())} == {4 * uniad_params}
    assert nbytes(NearestToken(torch.zeros(2, C, 14, 14))) == 2 * tokens * C * 4
    table = cost_table(rows)
    assert table.splitlines()[0] == ("| training images | bank MB | bank ms / image | CNN 3 x 3 MB | CNN 3 x 3 ms / image "
                                     "| UniAD MB | UniAD ms / image |")


@pytest.mark.slow
def test_bench_quality_with_the_cnn_prints_its_table_and_the_costs(tmp_path, capsys, one_thread):
    root = write_mvtec(tmp_path / "data", classes=["carpet", "mesh"], n_train=3, n_test_good=1, n_test_bad=1)
    argv = ["bench-quality", str(root), "--epochs", "1", "--baselines", "knn", "cnn", "--quiet",
            "--out", str(tmp_path / "run"), *[f"--set={k}={v}" for k, v in TINY.items()]]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "Baseline: 3 x 3 CNN reconstructor" in out and "Memory and scoring time" in out
    report = json.loads((tmp_path / "run" / "results.json").read_text())
    assert set(report["baselines"]) == {"knn", "cnn"} and [r["train_images"] for r in report["costs"]] == [1, 3, 6]
