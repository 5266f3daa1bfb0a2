"""The course notebook experiments/tutorial.ipynb: its paired script matches it cell for cell, and
it runs top to bottom with QUICK=1 on tiny IDX files, producing what its text says it shows."""
import json
import os

import numpy as np
import pytest

from conftest import make_idx_dir
from dcgan_jax.outputs import image_grid

nbformat = pytest.importorskip("nbformat", reason="the [notebook] extra is not installed")
jupytext = pytest.importorskip("jupytext", reason="the [notebook] extra is not installed")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXPERIMENTS = os.path.join(REPO, "experiments")
NOTEBOOK = os.path.join(EXPERIMENTS, "tutorial.ipynb")
SCRIPT = os.path.join(EXPERIMENTS, "tutorial.py")

# Appended to the notebook for the test: what it computed, as one JSON line.
REPORT_CELL = """
import json
print(json.dumps({
    "epochs": EPOCHS, "steps": STEPS,
    "loss_g": history["loss_g"].tolist(), "loss_d": history["loss_d"].tolist(),
    "real_grid": list(real_grid.shape), "epoch_grids": [list(g.shape) for g in epoch_grids],
    "g_params": g_param_count, "d_params": d_param_count, "reloaded_equal": bool(same),
    "files": sorted(os.listdir(OUT_DIR)),
    "latent": {f"{mode} {c:g}": [float(d) for d in distances] for (mode, c), distances in latent_results.items()},
    "tutorial_scores": None if tutorial_scores is None else
        {k: np.asarray(v).tolist() for k, v in tutorial_scores.items()},
}))
"""


def _cells(notebook):
    return [(cell.cell_type, cell.source.strip()) for cell in notebook.cells]


def test_notebook_and_script_in_sync():
    """Edit either file, then `jupytext --sync experiments/tutorial.ipynb`."""
    assert _cells(nbformat.read(NOTEBOOK, as_version=4)) == _cells(jupytext.read(SCRIPT))


@pytest.mark.slow
def test_notebook_runs_quick(tmp_path, monkeypatch):
    nbclient = pytest.importorskip("nbclient", reason="the [notebook] extra is not installed")
    monkeypatch.setenv("QUICK", "1")
    monkeypatch.setenv("DATA_DIR", make_idx_dir(tmp_path / "mnist", n_train=64))
    monkeypatch.setenv("OUT_DIR", str(tmp_path / "run"))
    # The tutorial author's file only where the environment names it; otherwise the cell skips.
    monkeypatch.setenv("PARITY_TUTORIAL_PTH", os.environ.get("PARITY_TUTORIAL_PTH", str(tmp_path / "absent.pth")))
    # The kernel imports this checkout's packages, whatever else is installed.
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [REPO, os.environ.get("PYTHONPATH")])))
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    notebook.cells.append(nbformat.v4.new_code_cell(REPORT_CELL))
    nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": EXPERIMENTS}}).execute()
    stdout = [o.text for o in notebook.cells[-1].outputs if o.output_type == "stream" and o.name == "stdout"]
    result = json.loads("".join(stdout))

    steps = result["epochs"] * result["steps"]
    assert result["epochs"] == 2 and result["steps"] == 4
    for name in ("loss_g", "loss_d"):
        assert len(result[name]) == steps and np.isfinite(result[name]).all(), name
    # The tutorial's parameter counts (its summary table), BatchNorm statistics not included.
    assert (result["g_params"], result["d_params"]) == (3_050_945, 314_594)

    grid = list(image_grid(np.zeros((16, 28, 28, 1))).shape)   # a 4 x 4 grid of 28 x 28 digits
    assert result["real_grid"] == grid
    assert result["epoch_grids"] == [grid] * result["epochs"]
    figures = [o for cell in notebook.cells for o in cell.get("outputs", [])
               if o.output_type == "display_data" and "image/png" in o.data]
    assert len(figures) == 1 + result["epochs"] + 2   # real digits, one grid per epoch, losses, latent

    assert result["reloaded_equal"]
    assert {"config.json", "generator.msgpack", "discriminator.msgpack",
            "Generator_epoch_1.png", "Generator_epoch_2.png"} <= set(result["files"])

    # The latent-scale answer: max|G(cz) - G(sign(c) z)| is BatchNorm's eps in train mode (which
    # removes |c|), the whole Tanh range in eval mode (which does not).
    latent = result["latent"]
    assert max(latent[f"train mode {c}"][1] for c in ("1", "-10000", "50000")) < 1e-2
    assert min(latent[f"eval mode {c}"][1] for c in ("-10000", "50000")) > 0.5

    if result["tutorial_scores"] is None:
        assert any("skipped:" in o.get("text", "") for cell in notebook.cells for o in cell.get("outputs", []))
    else:
        scores = np.concatenate(list(result["tutorial_scores"].values()))
        assert ((scores >= 0) & (scores <= 1)).all()
