"""The quality benchmark (`uniad-mini bench-quality`) on a tiny synthetic data set: settings x seeds, the tables,
the pictures, results.json, the command line.

One run (two classes, two seeds, one epoch, a one-layer model of width 32) is shared by most tests.
"""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from uniad_mini import MVTecAD, SyntheticAD, UniAD
from uniad_mini.bench import quality as protocol
from uniad_mini.app.cli import main
from uniad_mini.evaluation import ALL_METRICS, evaluate
from uniad_mini.pictures import roc_curve_png, write_pictures
from uniad_mini.bench.quality import PROTOCOL_NOTE, markdown_tables, run_protocol, train_model
from uniad_mini.synthetic import write_mvtec

SMALL = dict(layers=1, hidden_dim=32, heads=2, ffn_dim=64)
CLASSES = ["carpet", "mesh"]
TEST_PER_CLASS = 4  # 2 good + 2 defective


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread is fastest (conftest)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("protocol") / "data"
    return write_mvtec(root, classes=CLASSES, n_train=4, n_test_good=2, n_test_bad=2)


@pytest.fixture(scope="module")
def run(data_root):
    out = data_root.parent / "run"
    results = run_protocol(data_root, seeds=2, epochs=1, out=out, progress=False, **SMALL)
    return results, out


@pytest.fixture(scope="module")
def caches(data_root):
    extractor = UniAD(**SMALL)
    return (extractor.cache(MVTecAD(data_root, "train"), progress=False),
            extractor.cache(MVTecAD(data_root, "test"), progress=False))


def test_runner_trains_every_setting_from_every_seed(run):
    results, _ = run
    assert results["seeds"] == [0, 1] and results["classes"] == CLASSES
    for setting in ("unified", "separate"):
        assert len(results["results"][setting]) == 2
        for seed_run in results["results"][setting]:
            assert list(seed_run) == CLASSES + ["mean"]
            for values in seed_run.values():
                assert list(values) == list(ALL_METRICS)
                assert all(0.0 <= v <= 1.0 for v in values.values())


def test_seeds_give_different_models(run):
    results, _ = run
    first, second = results["results"]["unified"]
    assert first != second


def test_unified_setting_is_one_model_evaluated_on_every_class(run, caches):
    results, _ = run
    train, test = caches
    model = train_model(train, seed=1, epochs=1, config=SMALL, progress=False)
    expected = evaluate(*model.score_features(test.features), test)
    assert list(results["results"]["unified"][1]) == list(expected)
    for name, row in expected.items():
        assert results["results"]["unified"][1][name] == pytest.approx(row, abs=1e-6)


def test_separate_setting_is_one_model_trained_on_each_class_alone(run, caches):
    results, _ = run
    train, test = caches
    mesh = test.by_class()["mesh"]
    model = train_model(train.by_class()["mesh"], seed=1, epochs=1, config=SMALL, progress=False)
    expected = evaluate(*model.score_features(mesh.features), mesh)["mesh"]
    assert results["results"]["separate"][1]["mesh"] == pytest.approx(expected, abs=1e-6)


def test_markdown_has_every_class_the_mean_and_spreads(run):
    results, _ = run
    text = markdown_tables(results)
    assert PROTOCOL_NOTE in text
    for title in ("Unified: one model for all classes", "Separate: one model per class", "Unified vs separate"):
        assert title in text
    rows = [line for line in text.splitlines() if line.startswith("| ") and "---" not in line]
    for name in CLASSES + ["**mean**"]:
        named = [r for r in rows if r.startswith(f"| {name} |")]
        assert len(named) == 3  # unified, separate, side by side
        assert all(cell.count("±") == 1 for r in named for cell in r.strip("|").split("|")[1:])
    assert sum(r.count("|") - 2 for r in rows if r.startswith("| carpet |")) == 7 + 7 + 4  # metric cells


def test_mean_row_is_the_unweighted_mean_over_classes(run):
    results, _ = run
    unified = results["results"]["unified"]
    per_seed = [np.mean([r[c]["aupro"] for c in CLASSES]) for r in unified]
    assert [r["mean"]["aupro"] for r in unified] == pytest.approx(per_seed, abs=1e-12)
    line = next(x for x in markdown_tables(results).splitlines() if x.startswith("| **mean** |"))
    assert line.split("|")[8].strip() == f"{100 * np.mean(per_seed):.1f} ± {100 * np.std(per_seed, ddof=1):.1f}"


def test_one_seed_prints_the_mean_without_a_spread(run):
    results, _ = run
    one = {**results, "seeds": [0], "results": {"unified": results["results"]["unified"][:1], "separate": []}}
    text = markdown_tables(one)
    assert "±" not in text and "one seed, no spread" in text and "Separate" not in text


def test_run_folder_holds_results_and_pictures(run):
    results, out = run
    saved = json.loads((out / "results.json").read_text())
    assert saved == {"format": 1, **json.loads(json.dumps(results))}  # evaluation.write_results' layout
    assert (out / "results.md").read_text().strip() == markdown_tables(results).strip()
    for setting in ("unified", "separate"):
        folder = out / "pictures" / setting / "seed0"  # pictures of the first seed only
        pngs = sorted(folder.rglob("*.png"))
        assert len(pngs) == len(CLASSES) * TEST_PER_CLASS + len(CLASSES)  # a panel per test image + ROC per class
        assert {p.name for p in folder.glob("roc_*.png")} == {f"roc_{c}.png" for c in CLASSES}
        with Image.open(folder / "carpet" / "good_000.png") as im:
            assert im.size == (3 * 224, 224 + 14)  # image | ground truth | overlay, title line
    assert not (out / "pictures" / "unified" / "seed1").exists()


def test_cache_subset_of_a_class_equals_caching_that_class_alone():
    model = UniAD(**SMALL)
    both = model.cache(SyntheticAD("test", classes=CLASSES, n_test_good=1, n_test_bad=2), progress=False)
    alone = model.cache(SyntheticAD("test", classes="mesh", n_test_good=1, n_test_bad=2), progress=False)
    part = both.subset(both.class_indices()["mesh"])
    torch.testing.assert_close(part.features, alone.features, atol=1e-5, rtol=1e-5)
    assert torch.equal(part.labels, alone.labels) and torch.equal(part.masks, alone.masks)
    assert part.classes == alone.classes and part.paths == alone.paths
    assert list(both.by_class()) == CLASSES


def test_write_pictures_takes_a_data_set(tmp_path):
    data = SyntheticAD("test", classes="cap", n_test_good=1, n_test_bad=2)
    written = write_pictures(UniAD(**SMALL), data, tmp_path)
    assert len(written) == len(data) + 1 and all(p.is_file() for p in written)
    assert (tmp_path / "roc_cap.png").is_file()


def test_roc_plot_draws_the_curve_through_the_top_left_corner():
    image = roc_curve_png({"image": ([0.0, 0.0, 1.0], [0.0, 1.0, 1.0])}, title="perfect", legend=["AUROC 100%"])
    a = np.asarray(image)
    blue = (a[..., 2] > 150) & (a[..., 0] < 80)
    ys, xs = np.nonzero(blue)
    assert blue.sum() > 100 and xs.min() <= 44 and ys.min() <= 24  # the curve reaches (FPR 0, TPR 1)


def test_cli_prints_the_tables_from_the_first_seed(data_root, tmp_path, capsys):
    argv = ["bench-quality", str(data_root), "--seeds", "1", "--seed", "3", "--epochs", "1", "--settings", "unified",
            "--no-pictures", "--quiet", "--out", str(tmp_path / "cli")] + [f"--set={k}={v}" for k, v in SMALL.items()]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert PROTOCOL_NOTE in out and "| carpet |" in out and "| mesh |" in out and "Seeds 3;" in out
    saved = json.loads((tmp_path / "cli" / "results.json").read_text())
    assert saved["seeds"] == [3] and "seed" not in saved["config"] and len(saved["results"]["unified"]) == 1
    assert not (tmp_path / "cli" / "pictures").exists()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["{missing}"], "data folder not found"),
        (["{root}", "--set", "hidden_size=3"], "unknown UniAD option"),
        (["{root}", "--seeds", "0"], "seeds must be at least 1"),
        (["{root}", "--classes", "nope"], "class 'nope' not found"),
    ],
)
def test_cli_bad_input_exits_2_with_one_line(argv, message, data_root, tmp_path, capsys):
    argv = [a.format(missing=tmp_path / "nowhere", root=data_root) for a in argv]
    assert main(["bench-quality", *argv, "--quiet", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("uniad-mini bench-quality: error: ") and message in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_perf_scikit_learn_aupro_is_the_same_number():
    """The speed table compares speeds of one number: its weighted-ROC AUPRO must equal metrics.aupro."""
    from metric_speed_vs_sklearn import sklearn_aupro  # docs/scripts/ is on the path (conftest.py)

    from uniad_mini.metrics import aupro

    rng = np.random.default_rng(0)
    masks = np.zeros((4, 20, 20), dtype=bool)
    masks[1, 2:5, 3:9] = masks[2, 10:18, 1:4] = masks[2, 0:2, 15:20] = masks[3, 5:15, 5:15] = True
    for maps in (rng.random(masks.shape) + masks, np.round(rng.random(masks.shape) * 4) + masks):  # ties too
        for max_fpr in (0.3, 1.0):
            assert sklearn_aupro(maps, masks, max_fpr) == pytest.approx(aupro(maps, masks, max_fpr), abs=1e-12)
