from pathlib import Path

import nbformat
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "msm_timescales.ipynb"


def test_msm_notebook_executes_headlessly(monkeypatch, tmp_path):
    monkeypatch.setenv("TCBM_NOTEBOOK_LENGTH_PS", "150")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = "".join(o.get("text", "") for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs)
    assert "relative error" in outputs and "backmapped timescales" in outputs


def test_chignolin_notebook_executes_headlessly(monkeypatch, tmp_path):
    monkeypatch.setenv("TCBM_NOTEBOOK_LENGTH_PS", "40")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    notebook = nbformat.read(NOTEBOOK.parent / "chignolin_analysis.ipynb", as_version=4)
    NotebookClient(notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = "".join(o.get("text", "") for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs)
    assert "stereo_fraction" in outputs and "TYR2:chi1" in outputs and "MSM timescales" in outputs
