"""docs/tutorial.py (jupytext) executes from top to bottom in Jupyter's ``python3`` kernel, and
docs/tutorial.ipynb holds the same cells with their outputs (regenerate it with
``python tests/test_tutorial.py``)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

jupytext = pytest.importorskip("jupytext", reason="jupytext (the test extra) is not installed")
nbclient = pytest.importorskip("nbclient", reason="nbclient (the test extra) is not installed")

DOCS = Path(__file__).resolve().parents[1] / "docs"
SOURCE, NOTEBOOK = DOCS / "tutorial.py", DOCS / "tutorial.ipynb"


def _kernel() -> str:
    from jupyter_client.kernelspec import KernelSpecManager

    if "python3" not in KernelSpecManager().find_kernel_specs():
        pytest.skip("Jupyter's python3 kernel is absent (ipykernel, in the test extra, "
                    "installs it: bash scripts/setup.sh test)")
    return "python3"


def execute(cwd: Path):
    """The tutorial, executed with ``cwd`` as working directory (its run folder goes there)."""
    nb = jupytext.read(SOURCE)
    nbclient.NotebookClient(nb, timeout=600, kernel_name=_kernel(),
                            resources={"metadata": {"path": str(cwd)}}).execute()
    return nb


def _text(cell) -> str:
    return "".join(o.get("text", "") for o in cell.get("outputs", []) if o.get("name") == "stdout")


def test_the_committed_notebook_has_the_sources_cells_and_outputs():
    import nbformat

    committed = nbformat.read(NOTEBOOK, as_version=4)
    source = jupytext.read(SOURCE)
    assert [(c.cell_type, c.source) for c in committed.cells] == \
        [(c.cell_type, c.source) for c in source.cells], "run python tests/test_tutorial.py"
    code = [c for c in committed.cells if c.cell_type == "code"]
    assert all(c.get("execution_count") for c in code)
    assert not any(o.get("output_type") == "error" for c in code for o in c.outputs)


def test_the_tutorial_executes(tmp_path):
    from leela_interp.puzzles.puzzle_set import PuzzleSet

    nb = execute(tmp_path)
    out = "\n".join(_text(c) for c in nb.cells if c.cell_type == "code")
    n = len(PuzzleSet.load(tmp_path / "tutorial_run" / "puzzles.h5"))
    assert f"{n} puzzles; first:" in out
    assert "puzzles  [" in out and "ordinary [" in out  # the experiment printed both
    assert (tmp_path / "tutorial_run" / "patching.h5").exists()


if __name__ == "__main__":  # regenerate docs/tutorial.ipynb
    import tempfile

    import nbformat

    with tempfile.TemporaryDirectory() as tmp:
        nbformat.write(execute(Path(tmp)), NOTEBOOK)
    print("wrote", NOTEBOOK, file=sys.stderr)
