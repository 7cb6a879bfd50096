"""notebooks/hw2.ipynb, run top to bottom as "Run all" runs it, with its switch on the generated set."""

import os

import nbformat
import numpy as np
from nbclient import NotebookClient

from helpers import REPO

NOTEBOOK = REPO / "notebooks" / "hw2.ipynb"
SWITCH = "DEMO = False"


def test_the_notebook_runs_all_on_the_generated_set(tmp_path, monkeypatch):
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    settings = next(cell for cell in notebook.cells if cell.cell_type == "code")
    assert settings.source.count(SWITCH) == 1, "the first code cell holds the one switch"
    settings.source = settings.source.replace(SWITCH, "DEMO = True")
    monkeypatch.setenv("CI", "true")  # its TensorBoard cell starts no server
    # The kernel imports this checkout's timit_lit, installed or not.
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    # A failing cell raises CellExecutionError, with the cell and its traceback. (A cell's time limit
    # is wall time: generous, for a machine that other work shares.)
    NotebookClient(notebook, timeout=1800, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()

    outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs]
    text = "".join(output.get("text", "") for output in outputs if output.output_type == "stream")
    # What the student is shown: the curves of both runs and the confusion matrix, as images.
    assert sum("image/png" in output.get("data", {}) for output in outputs) == 3
    assert "generated data, not speech" in text and "best val/acc 0." in text and "recurrent: test/acc 0." in text
    assert "prediction.csv comes from generated data: not a submission" in text
    # Two runs, and the submission file of every test row.
    assert sorted(p.name for p in (tmp_path / "lightning_logs").iterdir()) == ["version_0", "version_1"]
    lines = (tmp_path / "prediction.csv").read_text().splitlines()
    rows = len(np.load(tmp_path / "demo_timit_11" / "test_11.npy", mmap_mode="r"))
    assert lines[0] == "Id,Class" and [line.split(",")[0] for line in lines[1:]] == [str(i) for i in range(rows)]
