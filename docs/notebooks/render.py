"""Execute the notebooks and publish each as Markdown + PNGs: docs/notebooks/NAME.md and NAME_files/*.png.

    python docs/notebooks/render.py                      # every notebook, full setting (real images if present)
    python docs/notebooks/render.py 04_fig5a_on_real_images --fast    # one, in the CI setting

The source notebooks stay stripped (tests/project/test_notebooks.py); a reader on a code host reads these instead.
Each rendered file opens with the command, the data the run used (the notebook's own "data:" line), the
date, the machine and the wall time, and records the sha256 of its source's cells (`source_hash`), so that
tests/project/test_notebooks.py fails when a source changed after it was rendered. Outputs of cells tagged
`licensed-derived` (maps of the licensed test photos) are withheld when the run read the real images.
Runs one notebook at a time with one torch thread (OMP_NUM_THREADS=1). The notebooks, in reading order: 01 the forward
pass, 02 and 03 the identical shortcut (a linear layer; the other reconstructors), 04 the paper's Fig. 5a, 05 UniAD's
three fixes; each one's full setting runs in under 15 minutes on one core.
"""
from __future__ import annotations

import argparse
import base64
import datetime
import hashlib
import json
import os
import platform
import re
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS, OUT = ROOT / "notebooks", ROOT / "docs" / "notebooks"
HASH_LINE = "source-sha256: "
WITHHELD_TAG = "licensed-derived"


def source_hash(nb) -> str:
    """sha256 of the notebook's cells as (type, source) pairs: what a reader sees, not its outputs or metadata."""
    cells = [[c["cell_type"], c["source"]] for c in nb["cells"]]
    return hashlib.sha256(json.dumps(cells, ensure_ascii=False).encode()).hexdigest()


def execute(path: Path, fast: bool):
    """The executed notebook and its wall time in seconds, run in notebooks/ as the tests run it."""
    import nbformat
    from nbclient import NotebookClient

    # the inline backend, so that every figure a cell draws becomes a PNG output (Agg would show none)
    os.environ.update(MPLBACKEND="module://matplotlib_inline.backend_inline", OMP_NUM_THREADS="1",
                      UNIAD_NOTEBOOK_FAST="1" if fast else "0")
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    nb = nbformat.read(path, as_version=4)
    start = time.perf_counter()
    NotebookClient(nb, timeout=3600, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()
    return nb, time.perf_counter() - start


def output_text(out) -> str:
    if out.output_type == "stream":
        return out.text
    return out.get("data", {}).get("text/plain", "") if "image/png" not in out.get("data", {}) else ""


def to_markdown(nb, name: str, header: list[str], withhold: bool) -> tuple[str, dict]:
    """Markdown of an executed notebook and its PNGs {file name: bytes}."""
    lines, pngs = header, {}
    for n, cell in enumerate(nb.cells):
        if cell.cell_type == "markdown":
            lines += [cell.source, ""]
            continue
        lines += ["```python", cell.source, "```", ""]
        if withhold and WITHHELD_TAG in cell.metadata.get("tags", []):
            text = "".join(output_text(o) for o in cell.outputs if o.output_type == "stream")
            lines += (["```text", text.rstrip(), "```", ""] if text.strip() else []) + [
                "*(figure withheld: it shows maps of licensed test images; run the notebook to see it)*", ""]
            continue
        text = "".join(output_text(o) for o in cell.outputs)
        if text.strip():
            lines += ["```text", text.rstrip(), "```", ""]
        for k, out in enumerate(o for o in cell.outputs if "image/png" in o.get("data", {})):
            file = f"{name}_files/cell{n:02d}_{k}.png"
            pngs[file] = base64.b64decode(out["data"]["image/png"])
            lines += [f"![cell {n} figure {k}]({file})", ""]
    return "\n".join(lines), pngs


def render(name: str, fast: bool, command: str) -> Path:
    import nbformat
    import torch

    path = NOTEBOOKS / f"{name}.ipynb"
    digest = source_hash(nbformat.read(path, as_version=4))
    nb, seconds = execute(path, fast)
    text = "".join(output_text(o) for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    data = next((line[len("data: "):] for line in text.splitlines() if line.startswith("data: ")), "(not printed)")
    header = [f"# {name} (executed)", "",
              f"Rendered from [`notebooks/{name}.ipynb`](../../notebooks/{name}.ipynb) by `{command}` on "
              f"{datetime.date.today().isoformat()}: setting {'FAST (CI)' if fast else 'full'}; data: {data}; "
              f"machine: {os.cpu_count()}-core CPU ({platform.machine()}), torch {torch.__version__}, one torch "
              f"thread; executed in {seconds:.0f} s (the cores were shared with other jobs, so times are upper bounds).",
              "", f"<!-- {HASH_LINE}{digest} -->", ""]
    md, pngs = to_markdown(nb, name, header, withhold=data.startswith("real images"))
    for old in (OUT / f"{name}_files").glob("*.png"):
        old.unlink()
    (OUT / f"{name}_files").mkdir(parents=True, exist_ok=True)
    for file, png in pngs.items():
        (OUT / file).write_bytes(png)
    target = OUT / f"{name}.md"
    target.write_text(md + "\n")
    return target


def recorded_hash(markdown: str) -> str | None:
    """The source hash a rendered file records, or None."""
    m = re.search(re.escape(HASH_LINE) + r"([0-9a-f]{64})", markdown)
    return m.group(1) if m else None


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("names", nargs="*", help="notebook names without .ipynb (default: all)")
    p.add_argument("--fast", action="store_true", help="the CI setting (UNIAD_NOTEBOOK_FAST=1)")
    args = p.parse_args(argv)
    names = args.names or sorted(q.stem for q in NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
    for name in names:
        command = "python docs/notebooks/render.py " + name + (" --fast" if args.fast else "")
        print(f"rendering {name} ...", flush=True)
        print("wrote", render(name, args.fast, command).relative_to(ROOT), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
