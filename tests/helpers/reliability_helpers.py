"""What the reliability tests share (tests/app/test_reliability.py, tests/app/test_reliability_runs.py): bad inputs are
built in tmp_path from these pieces, and every check of "nothing lost" compares `snapshot`s of a folder."""
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from uniad_mini.app.cli import main
from uniad_mini.synthetic import write_mvtec

TINY = dict(hidden_dim=32, heads=2, layers=1, ffn_dim=64, precision="fp32")  # fp32: weights compared bit for bit
SETS = [f"--set={k}={v}" for k, v in TINY.items()]
FAST = ["--quiet", "--threads", "1"]
SIZE = 32


def save(path: Path, image, **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    (image if isinstance(image, Image.Image) else Image.fromarray(image)).save(path, **kwargs)
    return path


def noise(seed=0, size=(SIZE, SIZE), channels=3):
    shape = (size[1], size[0], channels) if channels > 1 else (size[1], size[0])
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def good_tree(root: Path, cls="widget", defect="crack", image="000.png") -> Path:
    """A valid class: two normal training images, one normal and one defective test image with its mask."""
    for k in range(2):
        save(root / cls / "train" / "good" / f"{k:03d}.png", noise(k))
    save(root / cls / "test" / "good" / "000.png", noise(10))
    save(root / cls / "test" / defect / image, noise(11))
    mask = np.zeros((SIZE, SIZE), np.uint8)
    mask[4:12, 6:14] = 255
    save(root / cls / "ground_truth" / defect / (Path(image).stem + "_mask.png"), mask)
    return root


def truncated(path: Path, fmt: str) -> None:
    save(path, noise(5, (64, 64)), format=fmt)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def snapshot(folder: Path) -> dict:
    """{relative path: bytes} of everything under `folder` ({} when it does not exist)."""
    if not folder.exists():
        return {}
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def one_line_error(capsys, command: str) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"uniad-mini {command}: error: "), err
    assert "\n" not in err and "Traceback" not in err, err
    return err


def train_cli(root, out, *extra) -> int:
    return main(["train", str(root), "--out", str(out), "--epochs", "1", *FAST, *SETS, *extra])


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    """The embedded synthetic data set written as MVTec-layout PNGs: 6 training and 9 test images."""
    return write_mvtec(tmp_path_factory.mktemp("synth"), n_train=2, n_test_good=1, n_test_bad=2)


@pytest.fixture(scope="module")
def run(synth, tmp_path_factory):
    """A trained run folder (1 epoch of the tiny model); tests copy it before changing anything."""
    out = tmp_path_factory.mktemp("trained") / "run"
    assert train_cli(synth, out) == 0
    return out


def copy_run(run: Path, dest: Path, results: bool = True) -> Path:
    """The trained run, with an earlier results.json that a refused command must leave as it is."""
    dest.mkdir(parents=True)
    shutil.copy(run / "model.pt", dest / "model.pt")
    if results:
        (dest / "results.json").write_text('{"format": 1, "results": "an earlier evaluation"}')
    return dest


def ckpt(run):
    return torch.load(run / "model.pt", weights_only=True)


def assert_same_weights(a: Path, b: Path):
    wa, wb = ckpt(a), ckpt(b)
    assert wa["train_state"]["history"] == wb["train_state"]["history"]
    for name, value in wa["transformer"].items():
        assert torch.equal(value, wb["transformer"][name]), name
    assert torch.equal(wa["feature_mean"], wb["feature_mean"]) and torch.equal(wa["feature_std"], wb["feature_std"])
