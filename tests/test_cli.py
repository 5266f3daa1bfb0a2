"""`python -m experiments.train`: the quick preset end to end, and refusals that write nothing."""
import json
import math
import os
import resource
import shutil
import subprocess
import sys

import jax.numpy as jnp
import matplotlib.image
import numpy as np
import pytest

from conftest import make_idx_dir
from dcgan_jax import outputs
from experiments.train import main

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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


# --- out of memory ------------------------------------------------------------------------------

OUT_OF_MEMORY = ("error: out of memory on the cpu device (RESOURCE_EXHAUSTED: Out of memory allocating "
                 f"{2**60} bytes): ")


@pytest.fixture
def memory_exhausted_at_start(monkeypatch):
    """XLA's own allocation failure, raised where the start-up's first allocation fails: after
    everything a run's start writes (config.json is its last file), before any checkpoint."""
    write_config = outputs.write_config

    def write_then_exhaust(*args, **kwargs):
        write_config(*args, **kwargs)
        jnp.zeros(2**60, jnp.uint8).block_until_ready()  # more bytes than any address space holds
    monkeypatch.setattr(outputs, "write_config", write_then_exhaust)


@pytest.mark.filterwarnings("ignore:.*not the genuine MNIST")
@pytest.mark.parametrize("before", ["nothing", "an old run", "an empty folder"])
def test_out_of_memory_names_the_size_flags_and_leaves_no_run_dir(quick_run, tmp_path, capsys,
                                                                  memory_exhausted_at_start, before):
    _, _, data = quick_run
    out = tmp_path / "run"
    if before == "an old run":
        outputs.prepare_run_dir(str(out))
        (out / "config.json").write_text("{}")
        old = _relative(out)
    elif before == "an empty folder":
        out.mkdir()
    flags = ["--overwrite"] if before == "an old run" else []
    assert main(["--preset", "quick", "--data-dir", data, "--out", str(out), "--no-progress"] + flags) == 1
    assert capsys.readouterr().err == OUT_OF_MEMORY + "reduce --batch-size, --num-samples or --latent-dim\n"
    if before == "an empty folder":  # the user's: kept, as empty as it was
        assert os.listdir(out) == []
    else:
        assert not out.exists()
    if before == "an old run":  # moved aside by --overwrite, untouched (locked while moved)
        moved = _relative(tmp_path / "run.old-1")
        assert moved.pop(outputs.LOCK) and moved == old


def _relative(path):
    return {os.path.relpath(name, path): content for name, content in _snapshot(path).items()}


@pytest.mark.filterwarnings("ignore:.*not the genuine MNIST")
def test_out_of_memory_on_resume_keeps_the_run(quick_run, tmp_path, capsys, memory_exhausted_at_start):
    _, finished, _ = quick_run
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    before = _snapshot(run)
    assert main(["--resume", str(run), "--epochs", "3", "--no-progress"]) == 1
    assert capsys.readouterr().err == (OUT_OF_MEMORY + f"{run} is kept; its --batch-size, --num-samples or "
                                       f"--latent-dim need more memory than there is\n")
    after = _snapshot(run)
    assert json.loads(after.pop(os.path.join(run, "config.json")))["epochs"] == 3  # written by the start
    before.pop(os.path.join(run, "config.json"))
    assert after == before
    outputs.check_resumable(str(run))


CAPPED = """
import resource, runpy, sys
resource.setrlimit(resource.RLIMIT_AS, (8 << 30, 8 << 30))
sys.argv = ["experiments.train"] + sys.argv[1:]
runpy.run_module("experiments.train", run_name="__main__", alter_sys=True)
"""


@pytest.mark.slow
def test_a_batch_too_large_for_memory_ends_with_one_line_and_no_run_dir(tmp_path):
    """A real allocation failure: the process's address space is capped at 8 GiB (so nothing can
    swap), and a batch of 8,000 needs tens of GB."""
    data = make_idx_dir(tmp_path / "mnist", n_train=8_000, n_test=4, compress=False)
    out = tmp_path / "run"
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONWARNINGS="ignore", DCGAN_JAX_COMPILE_CACHE="off")
    proc = subprocess.run([sys.executable, "-c", CAPPED, "--preset", "quick", "--batch-size", "8000",
                           "--steps-per-epoch", "1", "--data-dir", data, "--out", str(out), "--no-progress"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.startswith("error: out of memory on the cpu device ("), proc.stderr
    assert proc.stderr.endswith("): reduce --batch-size, --num-samples or --latent-dim\n"), proc.stderr
    assert proc.stderr.count("\n") == 1 and not out.exists()
