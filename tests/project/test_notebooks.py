"""Every notebook runs top to bottom in its fast setting (UNIAD_NOTEBOOK_FAST=1: a few synthetic images, a few
epochs), in notebooks/ as its working directory; the notebooks are stored the way a reader should get them
(stripped); and each has an executed copy in docs/notebooks/ rendered from its current cells.

Run and publish one in its full setting (real images in ../shared/data when present) with
`python docs/notebooks/render.py 04_fig5a_on_real_images`.
"""
import importlib.util
import os
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = ROOT / "notebooks"
PATHS = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))


def _render_module():
    spec = importlib.util.spec_from_file_location("render", ROOT / "docs" / "notebooks" / "render.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _fast_kernel_env(monkeypatch):
    monkeypatch.setenv("UNIAD_NOTEBOOK_FAST", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # tiny runs: threads only fight other jobs for the cores
    paths = [str(ROOT), os.environ.get("PYTHONPATH")]  # the kernel imports this checkout's uniad_mini
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in paths if p))


READING_ORDER = ("01_forward_pass_walkthrough", "02_identical_shortcut_linear", "03_identical_shortcut_models",
                 "04_fig5a_on_real_images", "05_uniad_three_fixes")


def test_the_notebooks_are_there_in_reading_order():
    assert tuple(p.stem for p in PATHS) == READING_ORDER


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

    _fast_kernel_env(monkeypatch)
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert "setting: FAST (CI)" in text and "embedded synthetic data" in text


@pytest.mark.parametrize("path", PATHS, ids=lambda p: p.stem)
def test_the_rendered_copy_is_of_the_current_source(path):
    """docs/notebooks/NAME.md records the sha256 of the cells it was executed from; a source edited since then
    needs `python docs/notebooks/render.py NAME`."""
    render = _render_module()
    rendered = ROOT / "docs" / "notebooks" / f"{path.stem}.md"
    assert rendered.is_file(), f"no executed copy: python docs/notebooks/render.py {path.stem}"
    text = rendered.read_text()
    assert render.recorded_hash(text) == render.source_hash(nbformat.read(path, as_version=4)), (
        f"{path.name} changed after it was rendered: python docs/notebooks/render.py {path.stem}")
    for link in (line[line.index("](") + 2 : -1] for line in text.splitlines() if line.startswith("![")):
        assert (rendered.parent / link).is_file(), link
    assert "setting full" in text or "setting FAST" in text


def test_the_source_hash_changes_with_any_cell_and_not_with_outputs():
    render = _render_module()
    nb = nbformat.read(PATHS[0], as_version=4)
    digest = render.source_hash(nb)
    nb.cells[1].outputs = [] if nb.cells[1].cell_type == "code" else None
    nb.cells[2].outputs = [nbformat.v4.new_output("stream", text="x")]
    assert render.source_hash(nb) == digest
    nb.cells[-1].source += " "
    assert render.source_hash(nb) != digest


def test_the_walkthrough_exercise_without_the_neighbor_mask_runs(monkeypatch):
    """Notebook 01's exercise, UniAD(neighbor_size=None), through the walk-through cells (before training)."""
    pytest.importorskip("ipykernel")
    from nbclient import NotebookClient

    _fast_kernel_env(monkeypatch)
    nb = nbformat.read(NOTEBOOKS / "01_forward_pass_walkthrough.ipynb", as_version=4)
    first = nb.cells[1].source
    assert "model = UniAD(fast=False).eval()" in first
    nb.cells[1].source = first.replace("model = UniAD(fast=False).eval()", "model = UniAD(fast=False, neighbor_size=None).eval()")
    nb.cells = nb.cells[: next(i for i, c in enumerate(nb.cells) if "model.fit(" in c.source)]
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert "neighbor mask None" in text and "blocked per query: 0 to 0" in text
    assert "the same as model.predict(images)" in text
