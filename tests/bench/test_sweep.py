"""The recipe sweep: each variant is exactly the unified model `UniAD(**options).fit(...)` would train."""
import json

import pytest

from uniad_mini import MVTecAD, UniAD
from uniad_mini.bench.sweep import chosen, kinds_table, parse_variant, sweep, sweep_table
from uniad_mini.synthetic import write_mvtec
from uniad_mini.validation import KINDS, Validation, kind_aurocs

TINY = "layers=1,hidden_dim=32,heads=2,ffn_dim=64,epochs=2"


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep") / "data"
    return write_mvtec(root, classes=["carpet", "mesh"], n_train=3, n_test_good=1, n_test_bad=2)


def test_variants_parse_to_options():
    assert parse_variant("base") == {}
    assert parse_variant("lr=1e-4,schedule=step,layers=2") == {"lr": 1e-4, "schedule": "step", "layers": 2}
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse_variant("lr")


def test_a_variant_equals_the_model_trained_directly_and_the_table_shows_it(data_root, tmp_path, one_thread):
    records = sweep(data_root, [TINY, TINY + ",lr=1e-2"], tmp_path, progress=False, base={"seed": 0})
    assert [r["name"] for r in records] == [TINY, TINY + ",lr=1e-2"]
    written = json.loads((tmp_path / f"{TINY}.json").read_text())
    assert written["results"] == {"validation": records[0]["validation"], "test": records[0]["test"]}
    assert written["format"] and written["command"] == "sweep"
    assert written["images"] == {"train": 4, "validation": 2 * (1 + len(KINDS)), "test": 6}  # 1 of 3 per class held out
    assert not list(tmp_path.glob("features*.pt"))  # the shared cache is removed after the run

    validation = Validation(MVTecAD(data_root, "train"))  # trained on the rest of the training split
    direct = UniAD(**parse_variant(TINY)).fit(validation.train, progress=False)
    for name, data in (("test", MVTecAD(data_root, "test")), ("validation", validation)):
        expected = direct.evaluate(data, progress=False, metrics="auroc")
        for cls, (image, pixel) in records[0][name].items():
            assert image == round(100 * expected[cls]["image_auroc"], 1)
            assert pixel == round(100 * expected[cls]["pixel_auroc"], 1)
    cache = direct.cache(validation, progress=False)
    per_kind = kind_aurocs(direct.score_features(cache.features)[0], cache)
    assert records[0]["kinds"] == {c: {k: round(100 * v, 1) for k, v in per.items()} for c, per in per_kind.items()}
    assert set(records[0]["kinds"]) == {"carpet", "mesh"} and all(set(v) == set(KINDS) for v in per_kind.values())
    assert kinds_table(records).splitlines()[0] == "| variant | carpet | mesh |"
    assert records[0]["curve"][-1]["loss"] != records[1]["curve"][-1]["loss"]  # the option reached the model
    table = sweep_table(records)
    assert table.splitlines()[0] == ("| variant | epochs | carpet val | carpet test | mesh val | mesh test | mean val "
                                     "| mean test | training s |")
    assert "chosen by validation" in table and f"**{chosen(records)}**" in table


def test_a_variant_that_changes_the_features_gets_its_own_cache(data_root, tmp_path, one_thread):
    small = TINY.replace("epochs=2", "epochs=1")
    records = sweep(data_root, [small, small + ",input_norm=imagenet"], tmp_path, progress=False, holdout=0)
    direct = UniAD(**parse_variant(small + ",input_norm=imagenet")).fit(MVTecAD(data_root, "train"), progress=False)
    expected = direct.evaluate(MVTecAD(data_root, "test"), progress=False, metrics="auroc")
    assert records[1]["test"]["mean"][1] == round(100 * expected["mean"]["pixel_auroc"], 1)
    assert records[0]["test"] != records[1]["test"]  # the two caches differ
    assert "validation" not in records[0] and "nothing chosen" in sweep_table(records)  # --holdout 0: test only


def test_a_scoring_row_is_the_trained_model_scored_again(data_root, tmp_path, one_thread):
    small = TINY.replace("epochs=2", "epochs=1")
    records = sweep(data_root, [small], tmp_path, progress=False, holdout=0, points=0,
                    scorings=["map_sigma=4,score_pool=8"])
    assert [r["name"] for r in records] == [small, small + " +map_sigma=4,score_pool=8"]
    direct = UniAD(**parse_variant(small), map_sigma=4.0, score_pool=8).fit(MVTecAD(data_root, "train"), progress=False)
    expected = direct.evaluate(MVTecAD(data_root, "test"), progress=False, metrics="auroc")
    assert records[1]["test"]["mean"] == [round(100 * expected["mean"][k], 1) for k in ("image_auroc", "pixel_auroc")]
    assert records[1]["train_seconds"] == records[0]["train_seconds"]  # the same training, not a second one
    assert (tmp_path / f"{small}+map_sigma=4,score_pool=8.json").exists()
    with pytest.raises(ValueError, match="--scoring takes only"):
        sweep(data_root, ["base"], tmp_path / "x", progress=False, scorings=["lr=1"])
    with pytest.raises(ValueError, match="map_sigma"):
        sweep(data_root, ["base"], tmp_path / "x", progress=False, scorings=["map_sigma=-1"])
    assert not (tmp_path / "x").exists()  # refused before any work


def test_validation_chooses_not_the_test_split():
    def record(name, val, test):
        return {"name": name, "validation": {"a": val, "mean": val}, "test": {"a": test, "mean": test},
                "curve": [{"epoch": 1}], "train_seconds": 1.0}

    records = [record("x", [90.0, 90.0], [99.0, 99.0]), record("y", [95.0, 90.0], [80.0, 80.0]),
               {**record("knn", [99.0, 99.0], [99.5, 99.5]), "baseline": "knn"}]  # a bar to clear, never chosen
    assert chosen(records) == "y" and chosen(records, "test") == "x"
    assert "| **y** |" in sweep_table(records) and "| **x** |" in sweep_table(records, "test")
    with pytest.raises(ValueError, match="--select"):
        chosen(records, "train")


def test_a_bad_variant_is_refused_before_any_work(data_root, tmp_path):
    with pytest.raises(TypeError, match="unknown UniAD option"):
        sweep(data_root, ["lerning_rate=1"], tmp_path, progress=False)
    with pytest.raises(ValueError, match="--holdout"):
        sweep(data_root, ["base"], tmp_path, progress=False, holdout=1.0)
    assert not list(tmp_path.iterdir())  # refused before any work


@pytest.mark.slow
def test_baseline_rows_score_the_same_caches(data_root, tmp_path, one_thread):
    from uniad_mini.evaluation import evaluate
    from uniad_mini.scoring import score
    from uniad_mini.baselines import NearestToken

    records = sweep(data_root, ["knn", "cnn,epochs=1"], tmp_path, progress=False)
    assert [r["baseline"] for r in records] == ["knn", "cnn"] and records[1]["curve"][-1]["epoch"] == 1
    validation = Validation(MVTecAD(data_root, "train"))  # the bank holds the training part only
    ref = UniAD()
    train = ref.cache(validation.train, progress=False)
    ref.set_feature_stats(train.features)
    bank = NearestToken(ref.standardize(train.features))
    for name, data in (("test", MVTecAD(data_root, "test")), ("validation", validation)):
        cache = ref.cache(data, progress=False)
        expected = evaluate(*score(bank, ref.standardize(cache.features), (224, 224)), cache, metrics="auroc")
        for cls, (image, pixel) in records[0][name].items():
            assert image == round(100 * expected[cls]["image_auroc"], 1)
            assert pixel == round(100 * expected[cls]["pixel_auroc"], 1)
