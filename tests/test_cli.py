"""`python -m experiments.train`: the quick preset end to end, and refusals that write nothing."""
import json
import math
import os

import matplotlib.image
import numpy as np
import pytest

from conftest import make_idx_dir
from experiments.train import main


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    data = make_idx_dir(root / "mnist", n_train=64, n_test=8)
    out = str(root / "run")
    with pytest.warns(UserWarning, match="not the genuine MNIST"):
        code = main(["--preset", "quick", "--data-dir", data, "--out", out, "--no-progress"])
    return code, out, data


def test_quick_preset_writes_a_complete_run_dir(quick_run):
    code, out, _ = quick_run
    assert code == 0
    config = json.load(open(os.path.join(out, "config.json")))
    assert config["batch_size"] == 16 and config["epochs"] == 2 and config["steps_per_epoch"] == 4
    records = [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))]
    assert [r["epoch"] for r in records] == [1, 2]
    for r in records:
        assert set(r) == {"epoch", "loss_d", "loss_g", "d_real", "d_fake", "lr", "seconds"}
        assert all(math.isfinite(r[k]) for k in ("loss_d", "loss_g", "d_real", "d_fake"))
        assert r["lr"] == pytest.approx(2e-4)
    steps = np.load(os.path.join(out, "step_metrics.npz"))
    assert steps["loss_g"].shape == (8,)
    # epoch means in metrics.jsonl are the means of the per-step values
    assert records[1]["loss_d"] == pytest.approx(float(steps["loss_d"][4:].mean()), rel=1e-6)
    for png in ("samples/epoch_001.png", "samples/epoch_002.png", "losses.png"):
        image = matplotlib.image.imread(os.path.join(out, png))
        assert image.ndim == 3 and min(image.shape[:2]) > 50
    from dcgan_jax.outputs import load_variables
    config, g_vars, d_vars = load_variables(out)
    assert g_vars["params"]["layer4_3"]["kernel"].shape == (3, 3, 64, 1)
    assert set(d_vars) == {"params", "batch_stats"}


def _snapshot(path):
    return {os.path.join(d, f): open(os.path.join(d, f), "rb").read()
            for d, _, files in os.walk(path) for f in files}


@pytest.mark.filterwarnings("ignore:.*not the genuine MNIST")
def test_refuses_to_overwrite_a_run_dir(quick_run, capsys):
    _, out, data = quick_run
    before = _snapshot(out)
    assert main(["--preset", "quick", "--data-dir", data, "--out", out]) != 0
    assert "not empty" in capsys.readouterr().err
    assert _snapshot(out) == before


@pytest.mark.filterwarnings("ignore:.*not the genuine MNIST")
@pytest.mark.parametrize("flags, message", [
    (["--batch-size", "0"], "batch_size=0: must be a positive integer"),
    (["--batch-size", "1000"], "batch_size=1000: larger than the dataset"),
    (["--data-dir", "/nonexistent/mnist"], "does not exist"),
])
def test_bad_input_fails_clearly_and_writes_nothing(quick_run, tmp_path, capsys, flags, message):
    _, _, data = quick_run
    out = tmp_path / "run"
    code = main(["--preset", "quick", "--data-dir", data, "--out", str(out)] + flags)
    assert code != 0
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_unknown_choice_is_rejected_by_the_parser(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--order", "sideways"])
    assert exit_.value.code == 2 and "invalid choice: 'sideways'" in capsys.readouterr().err
