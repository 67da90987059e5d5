"""Interruption loses nothing: the run rows of docs/reliability.md, and determinism and resume measured.

A refused run prints one line and exits 2, Ctrl-C exits 130 with the line that says how to continue; the run
folder afterwards holds the previous complete checkpoint / results.json byte for byte, or the new one, never
half of one, and no lock of a process that has ended. A run killed at any step and resumed with --resume ends
with the weights of an uninterrupted run, bit for bit (CPU, fp32, one thread). The two tests that kill a real
`uniad-mini train` subprocess are marked slow.
"""
import errno
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import uniad_mini.training as training
from reliability_helpers import (FAST, SETS, assert_same_weights, ckpt, copy_run, one_line_error, run,  # noqa: F401
                                 snapshot, synth, train_cli)
from uniad_mini.app.cli import main
from uniad_mini.app.runs import LOCK_NAME
from uniad_mini.synthetic import write_mvtec


ROWS = ["out_is_not_writable", "out_is_a_file", "train_over_a_finished_run_refuses_without_resume",
        "disk_full_while_saving_a_checkpoint", "disk_full_while_writing_results",
        "second_run_on_the_same_out_refuses", "stale_lock_of_a_dead_process_is_taken_over",
        "ctrl_c_in_training_keeps_the_last_epoch_and_resumes_exactly", "ctrl_c_before_the_first_epoch_ends",
        "ctrl_c_in_evaluation_leaves_no_partial_results",
        "sigkill_of_a_real_train_process_resumes_to_the_uninterrupted_weights",
        "sigint_of_a_real_train_process_says_how_to_resume_and_exits_130"]  # test_<row> each, docs/reliability.md


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_thread):
    yield


# --------------------------------------------------------------------------------------------------
# Runs


def test_out_is_not_writable(synth, tmp_path, capsys):
    (tmp_path / "a_file").write_text("x")
    assert train_cli(synth, tmp_path / "a_file" / "run") == 2
    assert "a_file/run is not writable" in one_line_error(capsys, "train")
    assert (tmp_path / "a_file").read_text() == "x"


def test_out_is_a_file(synth, tmp_path, capsys):
    (tmp_path / "run").write_text("x")
    assert train_cli(synth, tmp_path / "run") == 2
    assert "is a file, not a folder" in one_line_error(capsys, "train") and (tmp_path / "run").read_text() == "x"


def test_train_over_a_finished_run_refuses_without_resume(run, synth, tmp_path, capsys):
    out = copy_run(run, tmp_path / "run")
    before = snapshot(out)
    assert train_cli(synth, out) == 2
    assert "already holds a trained model; continue it with --resume" in one_line_error(capsys, "train")
    assert snapshot(out) == before


def _disk_full(real):
    """A writer that puts half its bytes on disk, then fails the way a full disk does."""

    def write(obj, path, *args, **kwargs):
        Path(path).write_bytes(b"half a file")
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    return write


def test_disk_full_while_saving_a_checkpoint(run, synth, tmp_path, capsys, monkeypatch):
    out = copy_run(run, tmp_path / "run")
    before = snapshot(out)
    monkeypatch.setattr(torch, "save", _disk_full(torch.save))
    assert main(["train", str(synth), "--out", str(out), "--epochs", "2", *FAST, "--resume"]) == 2
    assert "no space left on the disk writing" in one_line_error(capsys, "train")
    assert snapshot(out) == before  # the epoch-1 checkpoint, no model.pt.tmp, no lock


def test_disk_full_while_writing_results(run, synth, tmp_path, capsys, monkeypatch):
    out = copy_run(run, tmp_path / "run")
    before = snapshot(out)

    def full(self, data, *args, **kwargs):
        with open(self, "w") as f:
            f.write(data[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device", str(self))

    monkeypatch.setattr(Path, "write_text", full)
    assert main(["evaluate", str(out), str(synth), *FAST, "--no-pictures"]) == 2
    assert "no space left on the disk" in one_line_error(capsys, "evaluate")
    assert snapshot(out) == before  # the earlier results.json, no results.json.tmp


def test_second_run_on_the_same_out_refuses(synth, tmp_path, capsys):
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])  # a live process: the holder
    try:
        out = tmp_path / "run"
        out.mkdir()
        (out / LOCK_NAME).write_text(f"{other.pid} {socket.gethostname()} 2026-12-01T00:00:00\n")
        before = snapshot(out)
        assert train_cli(synth, out) == 2
        assert f"is in use by another run (pid {other.pid}" in one_line_error(capsys, "train")
        assert snapshot(out) == before  # the holder's lock untouched, nothing else written
    finally:
        other.kill()
        other.wait()


def test_stale_lock_of_a_dead_process_is_taken_over(synth, tmp_path, capsys):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    out = tmp_path / "run"
    out.mkdir()
    (out / LOCK_NAME).write_text(f"{dead.pid} {socket.gethostname()} 2026-12-01T00:00:00\n")
    assert train_cli(synth, out) == 0
    assert f"taking over the stale lock {out / LOCK_NAME} (its process {dead.pid} is gone)" in capsys.readouterr().err
    assert sorted(snapshot(out)) == ["model.pt"]  # trained; the lock released


def _interrupt_at(monkeypatch, step: int, exc=KeyboardInterrupt):
    """Raise `exc` inside the training step number `step` (1-based, counted over all epochs), on the plain
    and on the fast path (`Config.fast`) alike."""
    calls = []

    def stopping(real):
        def step_then_stop(*args, **kwargs):
            calls.append(1)
            if len(calls) == step:
                raise exc()
            return real(*args, **kwargs)
        return step_then_stop

    monkeypatch.setattr(training, "train_step", stopping(training.train_step))


BATCH1 = ["--set", "batch_size=1", "--holdout", "0"]  # 6 steps an epoch on all 6 synthetic training images


@pytest.fixture(scope="module")
def straight(synth, tmp_path_factory):
    """An uninterrupted 4-epoch run, 6 steps an epoch: what every interrupted and resumed run must equal."""
    out = tmp_path_factory.mktemp("straight") / "run"
    assert train_cli(synth, out, "--epochs", "4", *BATCH1) == 0
    return out


def test_ctrl_c_in_training_keeps_the_last_epoch_and_resumes_exactly(synth, straight, tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    _interrupt_at(monkeypatch, 6 + 4)  # epoch 2, step 4 of 6
    assert train_cli(synth, out, "--epochs", "4", *BATCH1) == 130
    err = capsys.readouterr().err.strip()
    assert err == (f"uniad-mini train: interrupted; epoch 1 is complete in {out / 'model.pt'}; continue with: "
                   f"uniad-mini train {synth} --out {out} --resume --epochs 4")
    assert sorted(snapshot(out)) == ["model.pt"] and ckpt(out)["train_state"]["epoch"] == 1
    monkeypatch.undo()
    assert main(["train", str(synth), "--out", str(out), "--epochs", "4", *FAST, "--resume"]) == 0
    assert_same_weights(straight, out)


def test_ctrl_c_before_the_first_epoch_ends(synth, tmp_path, capsys, monkeypatch):
    _interrupt_at(monkeypatch, 2)
    assert train_cli(synth, tmp_path / "run", *BATCH1) == 130
    assert capsys.readouterr().err.strip().endswith("interrupted; no epoch was complete, nothing was saved; "
                                                    "start again without --resume")
    assert snapshot(tmp_path / "run") == {}


def test_ctrl_c_in_evaluation_leaves_no_partial_results(run, synth, tmp_path, capsys, monkeypatch):
    out = copy_run(run, tmp_path / "run")
    before = snapshot(out)
    import uniad_mini.evaluation as evaluation

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(evaluation.M, "anomaly_metrics", interrupted)  # halfway through the metrics
    assert main(["evaluate", str(out), str(synth), *FAST, "--no-pictures"]) == 130
    assert capsys.readouterr().err.strip() == "uniad-mini evaluate: interrupted"
    assert snapshot(out) == before


# --------------------------------------------------------------------------------------------------
# Determinism and resume, measured


def test_same_seed_same_data_gives_bit_identical_weights_and_auroc(synth, tmp_path):
    for name in ("a", "b"):
        assert train_cli(synth, tmp_path / name, "--epochs", "2", "--seed", "4") == 0
        assert main(["evaluate", str(tmp_path / name), str(synth), *FAST, "--no-pictures"]) == 0
    assert_same_weights(tmp_path / "a", tmp_path / "b")
    a, b = (json.loads((tmp_path / n / "results.json").read_text())["results"] for n in ("a", "b"))
    assert a == b  # every metric to the last digit


class Killed(BaseException):
    """What SIGKILL leaves in place of a process: nothing but the files already on disk."""


_draw = random.Random(2026)  # (epoch of 4, step of 6) drawn once, fixed so a failure replays: (2, 3), (4, 5), (4, 1)
DRAWS = [(_draw.randint(2, 4), _draw.randint(1, 5)) for _ in range(3)]


@pytest.mark.parametrize("epoch, step", DRAWS)
def test_killed_at_a_random_step_of_a_random_epoch_resumes_to_the_uninterrupted_weights(epoch, step, synth, straight,
                                                                                        tmp_path, monkeypatch):
    out = tmp_path / "run"
    _interrupt_at(monkeypatch, 6 * (epoch - 1) + step, Killed)
    with pytest.raises(Killed):
        train_cli(synth, out, "--epochs", "4", *BATCH1)
    monkeypatch.undo()
    assert ckpt(out)["train_state"]["epoch"] == epoch - 1  # the last complete epoch; the killed one is redone
    (out / LOCK_NAME).write_text("999999999 " + socket.gethostname())  # what SIGKILL leaves: a stale lock
    assert main(["train", str(synth), "--out", str(out), "--epochs", "4", *FAST, "--resume"]) == 0
    assert_same_weights(straight, out)


# ---- a real `uniad-mini train` process, killed -----------------------------------------------------

PROGRESS = re.compile(rb"epoch (\d+)/\d+ \[[#.]*\] (\d+)/(\d+)")


def cli(*args) -> list[str]:
    return [sys.executable, "-m", "uniad_mini", *map(str, args)]


def start_until(argv, epoch: int, step: int) -> subprocess.Popen:
    """Start `argv` and return once its progress bar shows `step` steps done in `epoch` (stderr is read)."""
    proc = subprocess.Popen(argv, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, env={**os.environ,
                            "OMP_NUM_THREADS": "1"})
    seen, deadline = b"", time.time() + 300
    while time.time() < deadline:
        chunk = os.read(proc.stderr.fileno(), 4096)
        assert chunk, f"the run ended before epoch {epoch} step {step}: {seen[-2000:]!r}"
        seen += chunk
        hits = [(int(e), int(s)) for e, s, _ in PROGRESS.findall(seen[-400:])]
        if hits and hits[-1] >= (epoch, step):
            return proc
    raise AssertionError("no progress in 300 s")


def real_train(synth, out, *extra):
    """`uniad-mini train` on 12 images, one a step; a resumed run takes its options from the checkpoint."""
    options = [] if "--resume" in extra else [*SETS, "--set", "batch_size=1", "--holdout", "0"]
    return cli("train", synth, "--out", out, "--epochs", 4, "--threads", 1, *options, *extra)


@pytest.mark.slow
def test_sigkill_of_a_real_train_process_resumes_to_the_uninterrupted_weights(tmp_path):
    synth = write_mvtec(tmp_path / "synth", n_train=4, n_test_good=1, n_test_bad=2)  # 12 steps an epoch
    straight, out = tmp_path / "straight", tmp_path / "run"
    subprocess.run(real_train(synth, straight, "--quiet"), check=True)
    epoch, step = random.Random().randint(2, 4), random.Random().randint(2, 8)
    proc = start_until(real_train(synth, out), epoch, step)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    assert ckpt(out)["train_state"]["epoch"] == epoch - 1, (epoch, step)
    assert (out / LOCK_NAME).exists()  # stale: taken over by the resumed run
    subprocess.run(real_train(synth, out, "--quiet", "--resume"), check=True)
    assert_same_weights(straight, out)


@pytest.mark.slow
def test_sigint_of_a_real_train_process_says_how_to_resume_and_exits_130(tmp_path):
    synth = write_mvtec(tmp_path / "synth", n_train=4, n_test_good=1, n_test_bad=2)
    out = tmp_path / "run"
    proc = start_until(real_train(synth, out), 2, 5)
    proc.send_signal(signal.SIGINT)
    rest = proc.stderr.read().decode()
    assert proc.wait() == 130
    last = rest.strip().splitlines()[-1]
    assert last.startswith("uniad-mini train: interrupted; epoch 1 is complete in") and "--resume" in last
    assert "Traceback" not in rest and sorted(snapshot(out)) == ["model.pt"]
    assert ckpt(out)["train_state"]["epoch"] == 1


