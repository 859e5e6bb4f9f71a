"""Every notebook in notebooks/ runs top to bottom without an error.

Each one runs in a fresh kernel of this interpreter, in a temporary working directory
(the notebooks make their own data, or find ../shared/data from the repository).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOKS_DIR = Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOKS = sorted(NOTEBOOKS_DIR.glob("*.ipynb"))

#: Seconds one cell may take; a whole notebook takes well under a minute on 2 cores.
CELL_TIMEOUT_S = 300


def test_there_are_notebooks_and_they_are_stored_without_outputs():
    assert len(NOTEBOOKS) >= 4
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert code, path.name
        # Outputs bloat the repository and go stale; the tests below regenerate them.
        assert all(not c.outputs and c.execution_count is None for c in code), path.name


@pytest.mark.slow
@pytest.mark.notebook
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs(path, tmp_path, monkeypatch):
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import KernelManager

    nb = nbformat.read(path, as_version=4)
    # ipykernel's own "python3" spec, whatever kernelspecs are installed: its kernel runs
    # this interpreter, so it sees the same lcstore.
    specs = KernelSpecManager(kernel_dirs=[])
    km = KernelManager(kernel_name="python3", kernel_spec_manager=specs)
    assert Path(km.kernel_spec.argv[0]).resolve() == Path(sys.executable).resolve()
    monkeypatch.setenv("MPLBACKEND", "Agg")  # the kernel inherits it: no figures to render
    client = nbclient.NotebookClient(
        nb,
        km=km,
        timeout=CELL_TIMEOUT_S,
        kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},
    )
    client.execute()
    errors = [
        output
        for cell in nb.cells
        if cell.cell_type == "code"
        for output in cell.outputs
        if output.output_type == "error"
    ]
    assert not errors
