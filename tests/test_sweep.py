"""The recipe sweep: each variant is exactly the unified model `UniAD(**options).fit(...)` would train."""
import json

import pytest

from uniad_mini import MVTecAD, UniAD
from uniad_mini.commands.sweep import parse_variant, sweep, sweep_table
from uniad_mini.synthetic import write_mvtec

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
    assert written["results"] == records[0]["final"] and written["format"] and written["command"] == "sweep"
    assert not list(tmp_path.glob("features*.pt"))  # the shared cache is removed after the run

    direct = UniAD(**parse_variant(TINY)).fit(MVTecAD(data_root, "train"), progress=False)
    expected = direct.evaluate(MVTecAD(data_root, "test"), progress=False, metrics="auroc")
    for cls, (image, pixel) in records[0]["final"].items():
        assert image == round(100 * expected[cls]["image_auroc"], 1)
        assert pixel == round(100 * expected[cls]["pixel_auroc"], 1)
    assert records[0]["curve"][-1]["loss"] != records[1]["curve"][-1]["loss"]  # the option reached the model
    table = sweep_table(records)
    assert table.splitlines()[0] == "| variant | epochs | carpet | mesh | mean | training s |"
    assert f"| {TINY} | 2 | " in table


def test_a_variant_that_changes_the_features_gets_its_own_cache(data_root, tmp_path, one_thread):
    small = TINY.replace("epochs=2", "epochs=1")
    records = sweep(data_root, [small, small + ",input_norm=imagenet"], tmp_path, progress=False)
    direct = UniAD(**parse_variant(small + ",input_norm=imagenet")).fit(MVTecAD(data_root, "train"), progress=False)
    expected = direct.evaluate(MVTecAD(data_root, "test"), progress=False, metrics="auroc")
    assert records[1]["final"]["mean"][1] == round(100 * expected["mean"]["pixel_auroc"], 1)
    assert records[0]["final"] != records[1]["final"]  # the two caches differ


def test_a_bad_variant_is_refused_before_any_work(data_root, tmp_path):
    with pytest.raises(TypeError, match="unknown UniAD option"):
        sweep(data_root, ["lerning_rate=1"], tmp_path, progress=False)
    assert not list(tmp_path.iterdir())  # refused before any work
