"""notebooks/explore_run.ipynb executed with nbclient on a tiny training run."""

from __future__ import annotations

import nbformat
import pytest
from nbclient import NotebookClient

pytestmark = pytest.mark.slow


def test_explore_run_notebook_executes(trained_project, monkeypatch):
    notebooks = trained_project.path / "notebooks"
    monkeypatch.setenv("KEDRO_ENV", "test")  # the kernel inherits the environment
    notebook = nbformat.read(notebooks / "explore_run.ipynb", as_version=4)
    client = NotebookClient(notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(notebooks)}})  # fmt: skip
    client.execute()  # raises CellExecutionError, with the cell and traceback, if a cell fails

    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    html = "".join(o.get("data", {}).get("text/html", "") for o in outputs)
    figures = [o for o in outputs if "image/png" in o.get("data", {})]
    assert "env test" in text and "answered correctly" in text
    assert "easy_vqa/train/" in html  # the sample table
    assert "predicted_answer" in html and "predicted_top_answers" in html  # predictions on test images
    assert len(figures) >= 3  # sample images, predictions on test images, training curves
    assert f"runs:/{trained_project.run_id}/model" in text
    assert "no controller trace" in text or "controller/lr_scale" in html  # the trace table (the default runs the calibrated outer loop)
    assert not (notebooks / "mlflow.db").exists()  # the notebook used the project's MLflow store
