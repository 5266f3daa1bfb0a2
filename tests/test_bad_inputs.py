"""Every bad input to `python -m experiments.train`: one clear line on stderr, a non-zero exit, and
nothing that existed overwritten or lost. One test per case of the reliability issue."""
import gzip
import json
import os
import shutil

import numpy as np
import pytest

from conftest import make_idx_dir, write_idx
from dcgan_jax.checkpoints import RunCheckpoints
from experiments.train import main

pytestmark = pytest.mark.filterwarnings("ignore:.*not the genuine MNIST")
# The run of test_resume.py (same data path too), so this process compiles its steps once.
TINY = ["--preset", "quick", "--batch-size", "4", "--steps-per-epoch", "3", "--epochs", "3", "--no-progress"]


def snapshot(path):
    """Every file's bytes, but the lock file's (it holds the last holder's pid)."""
    return {os.path.relpath(os.path.join(d, f), path): open(os.path.join(d, f), "rb").read()
            for d, _, files in os.walk(path) for f in files if f != ".dcgan_jax_lock"}


def run_cli(argv, capsys):
    """(exit status, the stderr line) of main(argv); argparse's exits count too."""
    try:
        code = main(argv)
    except SystemExit as e:
        code = e.code
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(err) == 1, err
    return code, err[0]


def refused(argv, capsys, out, match):
    """Run a bad command for a new run dir `out`: it must fail with `match` and create nothing."""
    code, line = run_cli(argv + ["--out", str(out)], capsys)
    assert code != 0 and match in line, line
    assert not os.path.exists(out)
    return line


# --- data -------------------------------------------------------------------------------------

@pytest.fixture
def data(tmp_path):
    return make_idx_dir(tmp_path / "mnist", n_train=16, n_test=4, compress=False)


def images_file(data):
    return os.path.join(data, "train-images-idx3-ubyte")


def test_missing_data_dir(tmp_path, capsys):
    refused(TINY + ["--data-dir", str(tmp_path / "nowhere")], capsys, tmp_path / "run",
            f"data dir '{tmp_path / 'nowhere'}' does not exist")


def test_truncated_idx_file(data, tmp_path, capsys):
    with open(images_file(data), "r+b") as f:
        f.truncate(16 + 5 * 784 + 100)
    refused(TINY + ["--data-dir", data], capsys, tmp_path / "run",
            f"{images_file(data)}: truncated: header says 16x28x28")


def test_wrong_magic_number(data, tmp_path, capsys):
    write_idx(images_file(data), np.zeros((16, 28, 28)), 2049, compress=False)
    refused(TINY + ["--data-dir", data], capsys, tmp_path / "run", "wrong magic number 2049 (expected 2051")


def test_images_labels_count_mismatch(data, tmp_path, capsys):
    write_idx(os.path.join(data, "train-labels-idx1-ubyte"), np.zeros(15), 2049, compress=False)
    refused(TINY + ["--data-dir", data], capsys, tmp_path / "run", "holds 16 images but")


def test_images_not_28x28(data, tmp_path, capsys):
    write_idx(images_file(data), np.zeros((16, 32, 32)), 2051, compress=False)
    refused(TINY + ["--data-dir", data], capsys, tmp_path / "run", "images are 32x32; the models need 28x28")


def test_no_images(data, tmp_path, capsys):
    write_idx(images_file(data), np.zeros((0, 28, 28)), 2051, compress=False)
    refused(TINY + ["--data-dir", data], capsys, tmp_path / "run", f"{images_file(data)}: holds no images")


def test_a_header_whose_size_overflows_64_bits(data, tmp_path, capsys):
    header = b"".join(n.to_bytes(4, "big") for n in (2051, 2 ** 31, 2 ** 31, 4))   # magic, then 3 dims
    open(images_file(data), "wb").write(header)
    refused(TINY + ["--data-dir", data], capsys, tmp_path / "run",
            f"truncated: header says 2147483648x2147483648x4 ({16 + 2 ** 64} bytes), file holds 16 bytes")


def test_corrupt_gzip(tmp_path, capsys):
    data = make_idx_dir(tmp_path / "mnist", n_train=16, n_test=4)
    path = os.path.join(data, "train-images-idx3-ubyte.gz")
    raw = open(path, "rb").read()
    open(path, "wb").write(raw[: len(raw) // 2])
    with pytest.raises((EOFError, OSError)):
        gzip.decompress(open(path, "rb").read())
    refused(TINY + ["--data-dir", data], capsys, tmp_path / "run", "cannot read/decompress")


# --- flags ------------------------------------------------------------------------------------

@pytest.mark.parametrize("flags, match", [
    (["--batch-size", "0"], "batch_size=0: must be a positive integer"),
    (["--batch-size", "-4"], "batch_size=-4: must be a positive integer"),
    (["--batch-size", "32"], "batch_size=32: larger than the dataset (16 training images)"),
    (["--epochs", "0"], "epochs=0: must be a positive integer"),
    (["--epochs", "-1"], "epochs=-1: must be a positive integer"),
    (["--preset", "huge"], "argument --preset: invalid choice: 'huge'"),
    (["--order", "sideways"], "argument --order: invalid choice: 'sideways'"),
    (["--dtype", "float16"], "argument --dtype: invalid choice: 'float16'"),
    (["--checkpoint-every", "0"], "checkpoint_every=0: must be a positive integer"),
    (["--keep", "0"], "keep=0: must be a positive integer"),
    (["--checkpoint-every-steps", "-1"], "checkpoint_every_steps=-1: must be a non-negative integer"),
    (["--checkpoint-every-steps", "2", "--loop", "scan"],
     "checkpoint_every_steps=2 needs loop 'steps': a scanned epoch runs as one program"),
    (["--beta2", "1.5"], "beta2=1.5: must lie in [0, 1)"),
    (["--seed", str(2 ** 32)], "seed=4294967296: must lie in [0, 2**32)"),   # a key holds 32 bits of it
    (["--seed", "-1"], "seed=-1: must lie in [0, 2**32)"),
])
def test_bad_flag_values(flags, match, data, tmp_path, capsys):
    line = refused(TINY + ["--data-dir", data] + flags, capsys, tmp_path / "run", match)
    assert "Traceback" not in line


def test_bad_cpu_memory_reuse_from_the_environment(data, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("DCGAN_JAX_CPU_MEMORY_REUSE", "yes")  # argparse checks choices of flags only
    refused(TINY + ["--data-dir", data], capsys, tmp_path / "run",
            "DCGAN_JAX_CPU_MEMORY_REUSE='yes': expected 'on' or 'off'")
    from experiments import compare_frameworks   # the other script that tunes memory
    assert compare_frameworks.main(["--data-dir", data, "--out", str(tmp_path / "compare")]) == 2
    assert capsys.readouterr().err.strip() == "error: DCGAN_JAX_CPU_MEMORY_REUSE='yes': expected 'on' or 'off'"
    assert not (tmp_path / "compare").exists()


def test_compare_frameworks_refuses_before_training(data, tmp_path, capsys):
    from experiments import compare_frameworks
    out = tmp_path / "compare"
    os.makedirs(out / "jax_seed0")
    (out / "jax_seed0" / "notes.txt").write_text("mine")
    assert compare_frameworks.main(["--data-dir", data, "--out", str(out)]) == 1
    assert "exists and is not empty: pass --overwrite" in capsys.readouterr().err
    assert snapshot(out) == {os.path.join("jax_seed0", "notes.txt"): b"mine"}
    for flags, match in ((["--epochs", "1"], "epochs=1: the epoch times are those after the first"),
                         (["--torch-device", "tpu"], "--torch-device tpu: "),
                         (["--torch-device", "cuda:99"], "--torch-device cuda:99: ")):
        assert compare_frameworks.main(["--data-dir", data, "--out", str(tmp_path / "new"), "--steps-per-epoch", "1",
                                        *flags]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: {match}") and "Traceback" not in err, err
        assert not (tmp_path / "new").exists()


# --- run directories and checkpoints ----------------------------------------------------------

@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A finished 3-epoch run with checkpoints of epochs 1, 2, 3 (shared: copy before changing)."""
    data = make_idx_dir(tmp_path_factory.getbasetemp() / "mnist_16", n_train=16, n_test=4)
    out = str(tmp_path_factory.mktemp("bad_inputs") / "run")
    assert main(TINY + ["--data-dir", data, "--out", out]) == 0
    return data, out


def copy_of(run, tmp_path):
    return shutil.copytree(run, tmp_path / "run")


@pytest.mark.slow  # trains finished_run
def test_run_dir_exists_and_is_not_empty(finished_run, tmp_path, capsys):
    data, run = finished_run
    before = snapshot(run)
    code, line = run_cli(TINY + ["--data-dir", data, "--out", run], capsys)
    assert code == 1 and f"run dir '{run}' exists and is not empty; pass --resume" in line
    assert snapshot(run) == before


def test_overwrite_replaces_run_directories_only(data, tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    code, line = run_cli(TINY + ["--data-dir", data, "--out", str(mine), "--overwrite"], capsys)
    assert code == 1 and "not a run directory made by dcgan_jax" in line
    assert snapshot(mine) == {"thesis.tex": b"years of work"}
    # The reproduction: a config.json does not make a folder ours.
    (mine / "config.json").write_text('{"model_type": "x"}')
    code, line = run_cli(TINY + ["--data-dir", data, "--out", str(mine), "--overwrite"], capsys)
    assert code == 1 and "not provably one; remove it yourself" in line
    assert snapshot(mine) == {"thesis.tex": b"years of work", "config.json": b'{"model_type": "x"}'}


@pytest.mark.slow  # trains finished_run
def test_overwrite_refuses_a_run_dir_holding_the_data(finished_run, tmp_path, capsys):
    data, run = finished_run
    run = copy_of(run, tmp_path)
    inside = shutil.copytree(data, run / "mnist")
    before = snapshot(run)
    code, line = run_cli(TINY + ["--data-dir", str(inside), "--out", str(run), "--overwrite"], capsys)
    assert code == 1 and f"'{inside}'" in line and "--overwrite" in line, line  # run.fit's or prepare_run_dir's
    assert snapshot(run) == before


@pytest.mark.parametrize("edit, match", [
    (lambda c: dict(c, lr="abc"), "lr='abc': must be a number"),
    (lambda c: dict(c, beta1=None), "beta1=None: must be a number"),
    (lambda c: dict(c, epochs=True), "epochs=True: must be an integer"),
    (lambda c: [c], "a JSON list, not an object of config fields"),
])
@pytest.mark.slow  # trains finished_run
def test_hand_edited_config_json_of_wrong_types(finished_run, tmp_path, capsys, edit, match):
    _, run = finished_run
    run = copy_of(run, tmp_path)
    path = run / "config.json"
    path.write_text(json.dumps(edit(json.loads(path.read_text()))))
    before = snapshot(run)
    code, line = run_cli(["--resume", str(run), "--no-progress"], capsys)
    assert code == 1 and f"{path}" in line and match in line, line
    assert snapshot(run) == before


@pytest.mark.slow  # trains finished_run
def test_resume_cannot_shorten_a_run(finished_run, capsys):
    _, run = finished_run
    before = snapshot(run)
    code, line = run_cli(["--resume", run, "--epochs", "2", "--no-progress"], capsys)
    assert code == 2 and f"epochs=2: {run} has trained and checkpointed 3 epochs" in line
    assert snapshot(run) == before


def test_resume_of_a_file(tmp_path, capsys):
    (tmp_path / "run").write_text("")
    code, line = run_cli(["--resume", str(tmp_path / "run")], capsys)
    assert code == 1 and "is not a folder: nothing to resume" in line


def test_output_dir_not_writable(data, tmp_path, capsys):
    parent = tmp_path / "locked"
    parent.mkdir()
    parent.chmod(0o555)
    try:
        # root ignores permission bits; sysfs refuses new folders to everyone
        out = parent / "run" if not os.access(parent, os.W_OK) or os.geteuid() != 0 else "/sys/dcgan_run"
        refused(TINY + ["--data-dir", data], capsys, out, "is not writable")
    finally:
        parent.chmod(0o755)


@pytest.mark.slow  # trains finished_run
def test_latent_size_mismatch_with_checkpoint(finished_run, capsys):
    data, run = finished_run
    before = snapshot(run)
    code, line = run_cli(["--resume", run, "--epochs", "4", "--latent-dim", "20", "--no-progress"], capsys)
    assert code == 2  # a resume conflict is a config error
    assert f"{run}/checkpoints/3: latent_dim=20 but the run was made with latent_dim=10" in line
    assert snapshot(run) == before


@pytest.mark.slow  # trains finished_run
def test_checkpoint_of_another_latent_size(finished_run):
    """Below the CLI: restoring arrays of another shape names the first one that differs."""
    from dcgan_jax import preset
    from dcgan_jax.checkpoints import CheckpointError
    from dcgan_jax.parallel import DataParallel
    data, run = finished_run
    config = preset("quick", batch_size=4, steps_per_epoch=3, epochs=3, data_dir=data)
    ckpts = RunCheckpoints(run)
    try:
        with pytest.raises(CheckpointError, match=r"g_params.layer1_0.conv.kernel has shape \(4, 4, 10, 256\), "
                                                  r"this config needs \(4, 4, 20, 256\)"):
            ckpts._check_shapes(ckpts.manager, 3, DataParallel().abstract(_abstract_state(config.replace(latent_dim=20))), run)
    finally:
        ckpts.close()


def _abstract_state(config):
    import jax
    from dcgan_jax import create_train_state
    return jax.eval_shape(lambda: create_train_state(config, jax.random.key(0)))


def corrupt(run, epoch):
    """Truncate the largest array file of a checkpoint (a torn write or a full disk)."""
    files = [os.path.join(d, f) for d, _, fs in os.walk(os.path.join(run, "checkpoints", str(epoch), "state"))
             for f in fs]
    victim = max(files, key=os.path.getsize)
    with open(victim, "r+b") as f:
        f.truncate(os.path.getsize(victim) // 2)


@pytest.mark.slow  # trains finished_run
def test_corrupt_checkpoint_falls_back_to_the_previous_one(finished_run, tmp_path, capsys):
    _, run = finished_run
    run = copy_of(run, tmp_path)
    for name in ("generator.msgpack", "discriminator.msgpack", "losses.png"):  # killed before its final files
        os.remove(run / name)
    corrupt(run, 3)
    assert main(["--resume", str(run), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "warning: checkpoint of epoch 3 is corrupt (state/" in out and "differ from their sha256 at save" in out
    assert "moved to corrupt_checkpoints/epoch_3, falling back to the previous one" in out
    assert "after epoch 2" in out and "epoch   3/3" in out
    assert os.path.isdir(run / "corrupt_checkpoints" / "epoch_3" / "state")  # kept, not deleted
    assert RunCheckpoints(run).epochs() == [1, 2, 3]
    assert [int(line.split(",")[0].split(":")[1]) for line in open(run / "metrics.jsonl")] == [1, 2, 3]


@pytest.mark.slow  # trains finished_run
def test_no_intact_checkpoint_left(finished_run, tmp_path, capsys):
    _, run = finished_run
    run = copy_of(run, tmp_path)
    for epoch in (1, 2, 3):
        corrupt(run, epoch)
    code, line = run_cli(["--resume", str(run), "--no-progress"], capsys)
    assert code == 1 and "no intact checkpoint left (corrupt: epoch 3, epoch 2, epoch 1;" in line
    assert sorted(os.listdir(run / "corrupt_checkpoints")) == ["epoch_1", "epoch_2", "epoch_3"]
    # Asked again, it must not start the finished run again over its files.
    before = snapshot(run)
    code, line = run_cli(["--resume", str(run), "--no-progress"], capsys)
    assert code == 1 and "no intact checkpoint left (the corrupt ones are in corrupt_checkpoints/)" in line
    assert snapshot(run) == before


@pytest.mark.slow  # trains finished_run
def test_a_finished_run_is_never_trained_again(finished_run, tmp_path, capsys):
    """Its final weights exist: whatever state checkpoints/ is in, --resume changes no file, and
    once its newest checkpoint is gone it refuses (it would retrain from an earlier one)."""
    import shutil
    _, run = finished_run
    run = copy_of(run, tmp_path)
    before = snapshot(run)
    assert main(["--resume", str(run), "--no-progress"]) == 0 and snapshot(run) == before
    shutil.rmtree(run / "checkpoints" / "3")
    before = snapshot(run)
    code, line = run_cli(["--resume", str(run), "--no-progress"], capsys)
    assert code == 1 and "finished 3 epochs" in line and "newest intact checkpoint is epoch 2" in line
    assert snapshot(run) == before
    shutil.rmtree(run / "checkpoints")
    code, line = run_cli(["--resume", str(run), "--no-progress"], capsys)
    assert code == 1 and "newest intact checkpoint is none" in line
    assert snapshot(run) == {k: v for k, v in before.items() if not k.startswith("checkpoints")}


def test_resume_of_a_missing_run_dir(tmp_path, capsys):
    code, line = run_cli(["--resume", str(tmp_path / "never")], capsys)
    assert code == 1 and "does not exist: nothing to resume" in line


@pytest.mark.slow  # trains finished_run
def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(finished_run, tmp_path, capsys, monkeypatch):
    """A state that turned NaN during epoch 2 (here: D's weights poisoned as epoch 2 starts)."""
    import jax
    from dcgan_jax import run
    real_epoch, calls = run.train_epoch, []

    def poisoned(state, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            state = state.replace(d_params=jax.tree.map(lambda p: p * np.nan, state.d_params))
        return real_epoch(state, *args, **kwargs)
    monkeypatch.setattr(run, "train_epoch", poisoned)
    data, _ = finished_run
    out = tmp_path / "run"
    code, line = run_cli(TINY + ["--data-dir", data, "--out", str(out)], capsys)
    steps_per_epoch = 3
    assert code == 3
    assert (f"training diverged: loss_d is nan at step {steps_per_epoch + 1} (epoch 2, step 1 of 3); "
            f"stopped without saving epoch 2; last good checkpoint: epoch 1 ({out}/checkpoints/1)") in line
    assert RunCheckpoints(out).epochs() == [1]
    assert len(open(out / "metrics.jsonl").readlines()) == 1
    assert not (out / "generator.msgpack").exists()


@pytest.mark.slow  # trains finished_run
def test_resume_with_other_data(finished_run, tmp_path, capsys):
    _, run = finished_run
    other = make_idx_dir(tmp_path / "mnist20", n_train=20, n_test=4)
    before = snapshot(run)
    code, line = run_cli(["--resume", run, "--data-dir", other, "--epochs", "4"], capsys)
    assert code == 1 and f"{run}/checkpoints/3: made with 16 training images, this data has 20" in line
    same_size = make_idx_dir(tmp_path / "mnist16", n_train=16, n_test=4, seed=1)   # other images
    code, line = run_cli(["--resume", run, "--data-dir", same_size, "--epochs", "4"], capsys)
    assert code == 1 and f"{run}/checkpoints/3: made with other training images than idx:{same_size}" in line
    assert snapshot(run) == before


@pytest.mark.parametrize("flags,message", [
    (["--out", ""], "--out '': an empty path names no run directory"),
    (["--resume", ""], "--resume '': an empty path names no run directory"),
    (["--epochs", str(10 ** 11), "--out", "RUN"], "epochs=100000000000: must be at most 100,000"),
    (["--num-samples", str(10 ** 8), "--out", "RUN"], "num_samples=100000000: must be at most 10,000"),
    (["--latent-dim", str(10 ** 8), "--out", "RUN"], "latent_dim=100000000: must be at most 10,000"),
    (["--lr", "inf", "--out", "RUN"], "lr=inf: must be a finite number"),
    (["--lr", "nan", "--out", "RUN"], "lr=nan: must be a finite number"),
])
def test_flags_that_cannot_work_exit_2_before_anything_is_made(flags, message, tmp_path, capsys):
    """Refused at once: an empty path (it named the current folder or a fresh default run), a run
    that would take years or exhaust memory, a non-finite learning rate."""
    flags = [str(tmp_path / "run") if f == "RUN" else f for f in flags]
    code, line = run_cli(flags, capsys)
    assert code == 2 and message in line, line
    assert os.listdir(tmp_path) == []


def test_distributed_without_a_cluster_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("jax.distributed.initialize",
                        lambda **kw: (_ for _ in ()).throw(ValueError("coordinator_address should be defined.")))
    code, line = run_cli(["--distributed", "--out", str(tmp_path / "run")], capsys)
    assert code == 2 and "--distributed: coordinator_address should be defined." in line


def test_a_config_json_of_an_empty_object_is_not_resumed(tmp_path, capsys):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.json").write_text("{}")
    code, line = run_cli(["--resume", str(tmp_path / "run")], capsys)
    assert code == 1 and "holds no config (an empty object)" in line
