"""The `uniad-mini` command: every subcommand on a tiny MVTec-layout folder, and one-line errors."""
import json

import pytest

from uniad_mini.cli import main
from uniad_mini.synthetic import write_mvtec


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return write_mvtec(tmp_path_factory.mktemp("mvtec"), n_train=2, n_test_good=1, n_test_bad=2)


def test_train_evaluate_predict_round_trip(data_root, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", str(data_root), "--out", str(run), "--epochs", "1"]) == 0
    assert (run / "model.pt").is_file()
    assert main(["evaluate", str(run), str(data_root), "--pictures"]) == 0
    out = capsys.readouterr().out
    assert "| **mean** |" in out and "| cap |" in out
    results = json.loads((run / "results.json").read_text())
    assert set(results) == {"cap", "carpet", "mesh", "mean"}
    assert len(list((run / "maps").rglob("*.png"))) == 9 + 3  # 3 test images per class, a ROC plot per class
    images = sorted(data_root.glob("cap/test/*/*.png"))[:2]
    assert main(["predict", str(run), *map(str, images), "--out", str(tmp_path / "pred")]) == 0
    assert len(list((tmp_path / "pred").glob("*_map.png"))) == 2


def test_resume_continues_to_more_epochs(data_root, tmp_path):
    run = tmp_path / "run"
    assert main(["train", str(data_root), "--out", str(run), "--epochs", "1"]) == 0
    assert main(["train", str(data_root), "--out", str(run), "--epochs", "2", "--resume"]) == 0
    import torch

    assert torch.load(run / "model.pt", weights_only=True)["train_state"]["epoch"] == 2


@pytest.mark.parametrize("argv,message", [
    (["train", "/no/such/folder", "--out", "x"], "/no/such/folder"),
    (["evaluate", "/no/such/run", "/no/such/folder"], "no checkpoint"),
])
def test_errors_are_one_line_with_exit_status_2(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err and "Traceback" not in err


def test_predict_on_a_non_image_writes_nothing(data_root, tmp_path, capsys):
    run = tmp_path / "run"
    main(["train", str(data_root), "--out", str(run), "--epochs", "1"])
    junk = tmp_path / "notes.png"
    junk.write_text("not an image")
    good = next(data_root.glob("cap/test/good/*.png"))
    assert main(["predict", str(run), str(good), str(junk), "--out", str(tmp_path / "pred")]) == 2
    assert "notes.png" in capsys.readouterr().err
    assert not (tmp_path / "pred").exists()


def test_demo_runs_on_the_embedded_data_and_writes_a_table_and_pictures(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path / "demo"), "--epochs", "1"]) == 0
    out = capsys.readouterr().out
    for row in ("| cap |", "| carpet |", "| mesh |", "| **mean** |"):
        assert row in out
    assert (tmp_path / "demo" / "model.pt").is_file()
    assert len(list((tmp_path / "demo" / "maps").rglob("*.png"))) == 75 + 3
