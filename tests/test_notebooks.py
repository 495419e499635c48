"""The notebooks execute top to bottom in demo mode, and their results are there: the tables and figures."""

import base64
import json
from pathlib import Path

import nbformat
import pytest

import notebooks


def outputs_of(notebook, kind):
    """All outputs of code cells carrying MIME type `kind` (e.g. "image/png", "text/html")."""
    return [
        output["data"][kind]
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.get("outputs", [])
        if kind in output.get("data", {})
    ]


def stream_text(notebook):
    """Everything the code cells printed."""
    return "".join(
        output.get("text", "")
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.get("outputs", [])
        if output.get("output_type") == "stream"
    )


def execute_copy(name, workdir):
    """Execute a copy of the repository's notebook `name` in `workdir`; returns the executed notebook."""
    copy = workdir / name
    copy.write_text(Path(notebooks.REPO_ROOT, name).read_text())
    notebooks.execute_notebook(str(copy), str(workdir), save=True)
    return nbformat.read(str(copy), as_version=4)


def check_training_outputs(notebook, workdir):
    """The results table names every recipe's run, both figures are saved and shown, cleaning and the two
    replicas are reported, and the restored run continued the two-epoch history instead of duplicating it."""
    tables = outputs_of(notebook, "text/html")
    assert any("best accuracy on val.bin" in table for table in tables)
    for run in ("v1_w0.5_s2", "v1_w0.5_s1", "v2_w0.5_s2", "v2_w0.5_s1", "cosface", "topk", "mixed", "mirrored"):
        assert any(run in table for table in tables), run
    for name in ("training_history.png", "lr_schedule.png"):
        assert (workdir / name).stat().st_size > 10_000
    pngs = [base64.b64decode(image) for image in outputs_of(notebook, "image/png")]
    assert len(pngs) >= 2 and all(png.startswith(b"\x89PNG") for png in pngs)
    printed = stream_text(notebook)
    assert "classes after cleaning" in printed and "replicas: 2" in printed
    history = json.loads((workdir / "checkpoints" / "ghostnetv1_w0.5_s2_hist.json").read_text())
    assert len(history["lr"]) == 2


def check_evaluation_outputs(notebook, workdir):
    """The tables of the three models and of the IJB ROC, the figures, and the two-image verification."""
    tables = "".join(outputs_of(notebook, "text/html"))
    for model in ("best", "after epoch 1", "untrained"):
        assert model in tables
    assert "accuracy_mean" in tables and "AUC" in tables
    for name in ("ijb_roc.png", "history.png", "embedding_norms.png"):
        assert (workdir / name).stat().st_size > 5_000
    printed = stream_text(notebook)
    assert "A vs A'" in printed and "A vs B" in printed and "at FAR 1e-2" in printed
    assert len(outputs_of(notebook, "image/png")) >= 4


@pytest.mark.slow
@pytest.mark.timeout(1800)  # 7 min on 2 AVX-512 cores, 16 min on 2 AVX2-only ones: above the 900 s default
def test_both_notebooks_run_in_one_working_folder(tmp_path):
    """As `python notebooks.py` runs them: the training notebook's every recipe, then the evaluation notebook on
    the models it trained."""
    check_training_outputs(execute_copy("training_scripts.ipynb", tmp_path), tmp_path)
    check_evaluation_outputs(execute_copy("evaluation.ipynb", tmp_path), tmp_path)


@pytest.mark.extended
def test_evaluation_notebook_trains_its_model_when_run_alone(tmp_path):
    """Without the training notebook's files, the evaluation notebook trains its small model first."""
    check_evaluation_outputs(execute_copy("evaluation.ipynb", tmp_path), tmp_path)


def test_notebooks_start_with_the_demo_switch(tmp_path):
    for name in notebooks.NOTEBOOKS:
        notebooks.check_demo_mode(nbformat.read(f"{notebooks.REPO_ROOT}/{name}", as_version=4), name)
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("DEMO = False")])
    with pytest.raises(ValueError, match="DEMO = True"):
        notebooks.check_demo_mode(notebook, "x.ipynb")
