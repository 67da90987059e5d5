"""Every notebook runs top to bottom in its fast setting (UNIAD_NOTEBOOK_FAST=1: a few synthetic images, a few
epochs), in notebooks/ as its working directory; and the notebooks are stored the way a reader should get them.

Run one by hand in its full setting (real images in ../shared/data when present) with
`jupyter nbconvert --to notebook --execute notebooks/02_shortcut_on_real_images.ipynb`.
"""
import os
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
PATHS = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))


def test_the_notebooks_are_there_in_reading_order():
    assert [p.name[:2] for p in PATHS] == ["01", "02", "03", "04"]


@pytest.mark.parametrize("path", PATHS, ids=lambda p: p.stem)
def test_notebook_is_stored_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"{path.name}: strip its outputs first"


@pytest.mark.parametrize("path", PATHS, ids=lambda p: p.stem)
def test_notebook_opens_with_what_you_learn_and_closes_with_a_summary_and_an_exercise(path):
    nb = nbformat.read(path, as_version=4)
    assert nb.cells[0].cell_type == "markdown" and "What you will learn" in nb.cells[0].source
    assert nb.cells[-1].cell_type == "markdown"
    assert "## Summary" in nb.cells[-1].source and "**Exercise.**" in nb.cells[-1].source


@pytest.mark.parametrize("path", PATHS, ids=lambda p: p.stem)
def test_notebook_runs_top_to_bottom_in_the_fast_setting(path, monkeypatch):
    pytest.importorskip("ipykernel")
    pytest.importorskip("matplotlib")
    from nbclient import NotebookClient

    monkeypatch.setenv("UNIAD_NOTEBOOK_FAST", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # tiny runs: threads only fight other jobs for the cores
    paths = [str(NOTEBOOKS.parent), os.environ.get("PYTHONPATH")]  # the kernel imports this checkout's uniad_mini
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in paths if p))
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert "setting: FAST (CI)" in text and "embedded synthetic data" in text
