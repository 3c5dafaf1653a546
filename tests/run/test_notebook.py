"""docs/notebooks/quickstart.ipynb runs top to bottom in a real Jupyter kernel, at a smaller size than it ships."""

import os
import re

import nbformat
import pytest
from nbclient import NotebookClient
from repo_paths import ROOT

NOTEBOOK = os.path.join(ROOT, "docs", "notebooks", "quickstart.ipynb")


def test_the_notebook_is_stored_without_outputs():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code and all(not cell.outputs and cell.execution_count is None for cell in code)


@pytest.mark.slow
def test_the_notebook_trains_loads_and_shows_the_run(tmp_path):
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    sizes = [cell for cell in notebook.cells if cell.cell_type == "code" and cell.source.startswith("EPOCHS =")]
    assert len(sizes) == 1
    sizes[0].source = f'EPOCHS = 2\nSTEPS_PER_EPOCH = 3\nIMAGE_SIZE = 16\nWORKDIR = "{tmp_path / "run"}"'
    client = NotebookClient(notebook, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": os.path.join(ROOT, "docs", "notebooks")}})
    client.execute()
    outputs = {index: cell.outputs for index, cell in enumerate(notebook.cells) if cell.cell_type == "code"}
    text = "\n".join(output.get("text", "") + str(output.get("data", {}).get("text/plain", ""))
                     for cell_outputs in outputs.values() for output in cell_outputs)
    assert re.search(r"^2 \(16, 16, 3\) \('0', '1', .*'9'\)$", text, re.MULTILINE)  # epoch, shape, class names
    assert re.search(r"test accuracy 0\.\d{3} on 450 digits", text)
    images = [output for cell_outputs in outputs.values() for output in cell_outputs
              if "image/png" in output.get("data", {})]
    assert len(images) == 3  # the curves, the worst mistakes, the feature maps
    assert "(16, 16, 32)" in text  # the feature map of block1_conv1
    assert os.path.isdir(tmp_path / "run" / "checkpoints" / "epoch_2")
