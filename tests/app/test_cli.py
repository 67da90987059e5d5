"""The `uniad-mini` command: every subcommand on a tiny MVTec-layout folder, one-line errors, help texts."""
import csv
import json

import pytest
import torch

from uniad_mini import SyntheticAD, UniAD
from uniad_mini.app.cli import main, parser
from uniad_mini.data import default_data_root, load_image
from uniad_mini.environment import env_flag
from uniad_mini.config import RECIPES
from uniad_mini.synthetic import write_mvtec

SUBCOMMANDS = ["demo", "train", "evaluate", "predict", "calibrate", "export", "sweep", "bench-quality", "bench-speed", "bench-kernel", "course"]
TINY = dict(hidden_dim=32, heads=2, layers=1, ffn_dim=64)
SMALL = [f"--set={k}={v}" for k, v in TINY.items()]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return write_mvtec(tmp_path_factory.mktemp("mvtec"), n_train=2, n_test_good=1, n_test_bad=2)


@pytest.fixture(scope="module")
def run(data_root, tmp_path_factory):
    run = tmp_path_factory.mktemp("cli") / "run"
    assert main(["train", str(data_root), "--out", str(run), "--epochs", "1", "--quiet", "--device", "auto", *SMALL]) == 0
    return run


def one_line_error(capsys, command: str) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"uniad-mini {command}: error: ") and "\n" not in err and "Traceback" not in err
    return err


def test_checkpoint_holds_the_transformer_statistics_and_thresholds_only(run):
    ckpt = torch.load(run / "model.pt", weights_only=True)
    assert set(ckpt) == {"format", "config", "transformer", "feature_mean", "feature_std", "train_state", "calibration"}
    assert not {"backend", "fast", "compile"} & set(ckpt["config"])  # run-time choices are made at load time
    assert set(ckpt["transformer"]) == set(UniAD(**TINY).transformer.state_dict())  # no backbone weights
    assert ckpt["config"]["hidden_dim"] == 32 and ckpt["train_state"]["epoch"] == 1
    assert ckpt["feature_std"].ne(1).all()  # the training statistics, not the identity


def test_evaluate_prints_and_writes_the_same_numbers(run, data_root, capsys):
    assert main(["evaluate", str(run), str(data_root), "--quiet"]) == 0
    out = capsys.readouterr().out
    saved = json.loads((run / "results.json").read_text())
    assert saved["format"] == 1 and saved["command"] == "evaluate" and saved["epochs"] == 1
    assert set(saved["results"]) == {"cap", "carpet", "mesh", "mean"}
    for name, row in saved["results"].items():
        label = "**mean**" if name == "mean" else name
        assert f"| {label} | {100 * row['image_auroc']:.1f} | " in out
    assert len(list((run / "maps").rglob("*.png"))) == 9 + 3  # a panel per test image (3 a class), a ROC per class


def test_evaluate_no_pictures_and_classes(run, data_root, tmp_path):
    copy = tmp_path / "run"
    copy.mkdir()
    (copy / "model.pt").write_bytes((run / "model.pt").read_bytes())
    assert main(["evaluate", str(copy), str(data_root), "--quiet", "--no-pictures", "--classes", "cap"]) == 0
    assert set(json.loads((copy / "results.json").read_text())["results"]) == {"cap", "mean"}
    assert not (copy / "maps").exists()


def test_predict_prints_the_models_own_scores(run, data_root, tmp_path, capsys):
    images = sorted(data_root.glob("cap/test/*/*.png"))[:2]
    assert main(["predict", str(run), *map(str, images), "--out", str(tmp_path / "pred")]) == 0
    out = capsys.readouterr().out
    model = UniAD.load(run / "model.pt")
    for path in images:
        pred = model.predict(load_image(path, size=None)[None], classes="cap")  # the folder names the class
        decision = "anomalous" if pred.decisions[0] else "normal"
        assert f"{path},cap,{pred.scores[0]:.4f},{pred.thresholds[0]:.4f},{decision}," in out
    assert len(list((tmp_path / "pred" / "images").glob("*_overlay.png"))) == 2
    assert (tmp_path / "pred" / "predictions.csv").read_text().count("\n") == 3 and (tmp_path / "pred" / "report.html").exists()


def test_resume_ends_where_an_uninterrupted_run_ends(data_root, tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert main(["train", str(data_root), "--out", str(straight), "--epochs", "2", "--quiet", *SMALL]) == 0
    assert main(["train", str(data_root), "--out", str(resumed), "--epochs", "1", "--quiet", *SMALL]) == 0
    assert main(["train", str(data_root), "--out", str(resumed), "--epochs", "2", "--quiet", "--resume"]) == 0
    a, b = (torch.load(r / "model.pt", weights_only=True) for r in (straight, resumed))
    assert b["train_state"]["epoch"] == 2
    for key, value in a["transformer"].items():
        torch.testing.assert_close(b["transformer"][key], value, rtol=0, atol=0)


def test_predict_skips_a_non_image_and_exits_2_after_the_others(run, data_root, tmp_path, capsys):
    junk = tmp_path / "notes.png"
    junk.write_text("not an image")
    good = next(data_root.glob("cap/test/good/*.png"))
    assert main(["predict", str(run), str(junk), str(good), "--out", str(tmp_path / "pred"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert any(line.startswith(f"uniad-mini predict: skipped {junk}: cannot read image") for line in err)
    assert err[-1].startswith("uniad-mini predict: error: 1 input(s) could not be read")
    assert str(good) in (tmp_path / "pred" / "predictions.csv").read_text()  # the readable image is done


def test_demo_runs_on_the_embedded_data_and_writes_a_table_results_and_pictures(tmp_path, capsys, monkeypatch):
    small = lambda split, classes, seed, **_: SyntheticAD(split, classes=classes, seed=seed, n_train=4, n_test_good=1, n_test_bad=2)  # noqa: E731
    monkeypatch.setattr("uniad_mini.app.actions.SyntheticAD", small)  # the demo's code path on fewer images
    assert main(["demo", "--out", str(tmp_path / "demo"), "--epochs", "1", "--quiet", *SMALL]) == 0
    out = capsys.readouterr().out
    saved = json.loads((tmp_path / "demo" / "results.json").read_text())
    assert saved["format"] == 1 and saved["command"] == "demo" and saved["config"]["hidden_dim"] == 32
    for name in ("cap", "carpet", "mesh", "mean"):
        label = "**mean**" if name == "mean" else name
        assert f"| {label} | {100 * saved['results'][name]['image_auroc']:.1f} | " in out
    assert (tmp_path / "demo" / "model.pt").is_file()
    assert len(list((tmp_path / "demo" / "maps").rglob("*.png"))) == 3 * 3 + 3
    # decisions: thresholds set on fresh normal images (data seed 1), saved, and what they catch on the test split
    calibration = torch.load(tmp_path / "demo" / "model.pt", weights_only=True)["calibration"]
    assert sorted(calibration["classes"]) == ["cap", "carpet", "mesh"] and "data seed 1" in calibration["source"]
    assert "decisions: thresholds at 1% false alarms" in out and "| (global) | 12 |" in out


# ---- errors ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("argv, message", [
    (["train", "/no/such/folder", "--out", "x"], "/no/such/folder"),
    (["evaluate", "/no/such/run", "/no/such/folder"], "no checkpoint"),
    (["train", "/no/such/folder", "--out", "x", "--set", "hidden_size=3"], "unknown UniAD option(s) ['hidden_size']"),
    (["bench-quality", "/no/such/folder", "--set", "hidden_dim"], "--set takes KEY=VALUE"),
    (["train", "/no/such/folder", "--out", "x", "--set", "schedule=weekly"], "unknown schedule 'weekly'"),
    (["evaluate", "/no/such/run", "/no/such/folder", "--seed", "3"], "options come from its checkpoint"),
    (["bench-speed", "--threads", "0"], "--threads must be at least 1"),
    (["train", "/no/such/folder", "--out", "x", "--epochs", "0"], "epochs and batch_size must be at least 1"),
])
def test_user_errors_are_one_line_with_exit_status_2(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    assert message in one_line_error(capsys, argv[0])
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("command", ["train", "evaluate", "predict", "bench-quality", "demo", "bench-speed", "sweep"])
def test_device_cuda_without_cuda_is_one_line_and_exit_2(command, capsys, monkeypatch, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.chdir(tmp_path)
    args = {"train": ["d", "--out", "r"], "evaluate": ["r", "d"], "predict": ["r", "i.png", "--out", "o"],
            "bench-quality": ["d"], "sweep": ["d", "--variants", "base"]}.get(command, [])
    assert main([command, *args, "--device", "cuda"]) == 2
    assert "--device cuda" in one_line_error(capsys, command)


def test_a_runtime_error_inside_a_command_keeps_its_traceback(data_root, tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("a bug, not a user error")

    monkeypatch.setattr(UniAD, "fit", broken)
    with pytest.raises(RuntimeError, match="a bug"):
        main(["train", str(data_root), "--out", str(tmp_path / "run"), "--quiet", *SMALL])
    monkeypatch.setattr("uniad_mini.app.actions.run_protocol", broken)
    with pytest.raises(RuntimeError, match="a bug"):
        main(["bench-quality", str(data_root), "--quiet"])


def test_ctrl_c_exits_130_with_one_line_and_no_results(run, data_root, tmp_path, monkeypatch, capsys):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    copy = tmp_path / "run"
    copy.mkdir()
    (copy / "model.pt").write_bytes((run / "model.pt").read_bytes())
    monkeypatch.setattr(UniAD, "evaluate", interrupted)
    assert main(["evaluate", str(copy), str(data_root), "--quiet"]) == 130
    assert capsys.readouterr().err.strip() == "uniad-mini evaluate: interrupted"
    assert list(copy.iterdir()) == [copy / "model.pt"]


# ---- help ------------------------------------------------------------------------------------------


def test_help_lists_every_subcommand(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    out = capsys.readouterr().out
    assert exit_.value.code == 0
    assert all(f"\n    {name}" in out for name in SUBCOMMANDS)
    sub = next(a for a in parser()._actions if a.dest == "command")
    assert list(sub.choices) == SUBCOMMANDS  # nothing runnable is missing from the list, nothing extra


@pytest.mark.parametrize("command", SUBCOMMANDS)
def test_every_subcommand_has_a_help(command, capsys):
    if command == "bench-kernel":
        pytest.importorskip("triton")
    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    out = capsys.readouterr().out
    assert exit_.value.code == 0 and "usage:" in out
    if command not in ("bench-kernel", "course"):  # bench-kernel: the benchmark's own options; course: none
        recipes = "--recipe {" + ",".join(sorted(RECIPES)) + "}"  # the choices come from the model, not a copy
        for common in ("--set KEY=VALUE", "--seed", "--threads", "--quiet", "--device {cpu,cuda,auto}", recipes):
            assert common in out


# ---- the environment -------------------------------------------------------------------------------


def test_data_root_comes_from_the_environment_first(tmp_path, monkeypatch):
    monkeypatch.setenv("UNIAD_DATA", str(tmp_path))
    assert default_data_root() == tmp_path
    monkeypatch.setenv("UNIAD_DATA", str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="UNIAD_DATA=.*missing is not a folder"):
        default_data_root()


@pytest.mark.parametrize("value, expected", [("1", True), ("Yes", True), (" on ", True), ("0", False),
                                             ("false", False), ("", False), (None, "default")])
def test_env_flag_reads_true_and_false_words(value, expected, monkeypatch):
    if value is None:
        monkeypatch.delenv("UNIAD_TEST_FLAG", raising=False)
        assert env_flag("UNIAD_TEST_FLAG") is False and env_flag("UNIAD_TEST_FLAG", default=True) is True
    else:
        monkeypatch.setenv("UNIAD_TEST_FLAG", value)
        assert env_flag("UNIAD_TEST_FLAG") is expected


def test_env_flag_rejects_other_words(monkeypatch):
    monkeypatch.setenv("UNIAD_TEST_FLAG", "maybe")
    with pytest.raises(ValueError, match="UNIAD_TEST_FLAG='maybe' is not a true/false value"):
        env_flag("UNIAD_TEST_FLAG")


def test_train_holds_out_and_calibrates_by_default_so_predict_decides(data_root, run, tmp_path):
    ckpt = torch.load(run / "model.pt", weights_only=True)
    assert ckpt["train_state"]["held_out"]["share"] == 0.2 and ckpt["calibration"] is not None
    assert main(["predict", str(run), str(data_root), "--out", str(tmp_path / "p"), "--quiet"]) == 0
    with open(tmp_path / "p" / "predictions.csv", newline="") as f:
        decisions = [row["decision"] for row in csv.DictReader(f)]
    assert decisions and all(d in ("anomalous", "normal") for d in decisions), decisions[:3]


def test_train_with_holdout_0_trains_on_everything_and_sets_no_thresholds(data_root, tmp_path, capsys):
    out = tmp_path / "all"
    assert main(["train", str(data_root), "--out", str(out), "--epochs", "1", "--quiet", "--holdout", "0", *SMALL]) == 0
    ckpt = torch.load(out / "model.pt", weights_only=True)
    assert "held_out" not in ckpt["train_state"] and "calibration" not in ckpt
    device = "cuda" if torch.cuda.is_available() else "cpu"  # --device auto (the default) says what it took
    said = capsys.readouterr().out
    assert "trained 1 epochs on 6 images of cap, carpet, mesh in" in said and f"process(es) on {device};" in said
