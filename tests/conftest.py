"""Shared test settings.

Without a CUDA GPU the Triton kernels run in Triton's interpreter, and Triton reads TRITON_INTERPRET when a
kernel module is imported: set here, before any test module imports `uniad_mini.kernels` (some import it
for other reasons, e.g. the course's by-hand guard), so that the kernel tests never meet kernels compiled
for a GPU that is not there.

Tests sit in one folder per layer of the package (core, kernels, shortcut, bench, course, app) and project/
for the whole of it; what several of them share is in helpers/ (put on the import path here), and the
scripts that reproduce the docs' numbers are in docs/scripts/ (also on the path: a test reuses one's oracle).

Hypothesis runs with a bounded profile: a fixed number of examples, no shrinking phase, no deadline,
so a failure in CI stays short. Choose another with HYPOTHESIS_PROFILE=dev (more examples, shrinking).
"""
import os
import shutil
import sys
from pathlib import Path

sys.path[:0] = [str(Path(__file__).parent / "helpers"), str(Path(__file__).parents[1] / "docs" / "scripts")]

if shutil.which("nvidia-smi") is None:  # no GPU: decided without importing torch, before triton is imported
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
from hypothesis import Phase, settings  # noqa: E402

settings.register_profile(
    "ci",
    max_examples=25,
    deadline=None,
    derandomize=True,
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
    print_blob=True,
)
settings.register_profile("dev", max_examples=200, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real images beside the project (read-only, never copied in): skip, saying why, when absent."""
    from uniad_mini.data import default_data_root

    root = default_data_root()
    if root is None or not (root / "bottle").is_dir():
        pytest.skip(f"real data not found (looked at {root or '../shared/data'}; set UNIAD_DATA to an MVTec-layout folder)")
    return root


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models on one thread: more threads only fight over the cores. Restores the count afterwards."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: over a minute on 2 cores; run with `python -m pytest -q -m slow`")


def pytest_collection_modifyitems(config, items):
    """Without `-m`, slow tests are left out, so that the default run stays under 5 minutes on 2 cores."""
    if config.getoption("markexpr"):
        return
    slow = [item for item in items if item.get_closest_marker("slow")]
    if slow:
        config.hook.pytest_deselected(items=slow)
        items[:] = [item for item in items if not item.get_closest_marker("slow")]


# ---- the course: a student copy and a solution copy of this project, made once per test module ----------------

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def student(tmp_path_factory):
    """(the stripped student copy, what `strip` reported)."""
    from uniad_mini.course import stripping

    out = tmp_path_factory.mktemp("course") / "student"
    return out, stripping.strip(ROOT, out)


@pytest.fixture(scope="module")
def solution(tmp_path_factory):
    """A copy with the solutions in (`--keep-solutions`): what full marks look like."""
    from uniad_mini.course import stripping

    out = tmp_path_factory.mktemp("course") / "solution"
    stripping.strip(ROOT, out, keep_solutions=True)
    return out

