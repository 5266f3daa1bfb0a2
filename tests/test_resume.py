"""Exact resume: a run SIGKILLed mid-epoch and mid-save, then resumed, ends bit-identical to one
never interrupted (CPU); and two runs of the same seed and config give the same bits."""
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from conftest import make_idx_dir
from dcgan_jax import outputs, preset, run
from dcgan_jax.checkpoints import RunCheckpoints
from dcgan_jax.parallel import DataParallel
from dcgan_jax.run import fit, resume_config
from experiments.train import _interrupted, main

# slow: real training processes, killed and resumed
pytestmark = [pytest.mark.filterwarnings("ignore:.*not the genuine MNIST"), pytest.mark.slow]

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# 3 epochs of 3 steps of 4 images: small enough for three processes, long enough to be killed in.
RUN = dict(batch_size=4, steps_per_epoch=3, epochs=3)
RUN_FLAGS = [f"--{k.replace('_', '-')}={v}" for k, v in RUN.items()]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    # the path test_bad_inputs.py uses too: same config, so one compile serves both
    return make_idx_dir(tmp_path_factory.getbasetemp() / "mnist_16", n_train=16, n_test=4)


@pytest.fixture(scope="module")
def reference(data_dir, tmp_path_factory):
    """The uninterrupted run, in this process."""
    out = str(tmp_path_factory.mktemp("reference") / "run")
    fit(preset("quick", data_dir=data_dir, **RUN), out, progress=False, log=lambda _: None)
    return out


def final_meta(run_dir):
    ckpts = RunCheckpoints(run_dir)
    meta = ckpts.manager.restore(ckpts.epochs()[-1]).meta
    ckpts.close()
    return meta


def metrics_without_seconds(run_dir):
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return [{k: v for k, v in json.loads(line).items() if k != "seconds"} for line in f]


def read_bytes(run_dir, name):
    with open(os.path.join(run_dir, name), "rb") as f:
        return f.read()


@pytest.fixture(scope="module")
def compile_cache(tmp_path_factory):
    """JAX's persistent compilation cache, shared by this test's processes: each later process
    loads the executables the first compiled (the same executables, so the same bits)."""
    return str(tmp_path_factory.mktemp("jax_cache"))


def cli(args, cache):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([REPO, os.environ.get("PYTHONPATH", "")]),
               JAX_COMPILATION_CACHE_DIR=cache, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
    return subprocess.Popen([sys.executable, "-u", "-m", "experiments.train", "--no-progress", *args],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def kill_when(proc, ready, delay=0.0, timeout=300, sig=signal.SIGKILL):
    """Send `sig` to `proc` `delay` seconds after ready() holds; fail if it exits first."""
    deadline = time.monotonic() + timeout
    while not ready():
        assert proc.poll() is None, f"exited before the kill point:\n{proc.stdout.read()}"
        assert time.monotonic() < deadline, "kill point never reached"
        time.sleep(0.002)
    time.sleep(delay)
    proc.send_signal(sig)
    proc.wait()
    return proc.stdout.read()


def signal_after_line(proc, text, sig):
    """Send `sig` to `proc` as soon as it prints a line containing `text`; its whole output."""
    log = []
    for line in proc.stdout:
        log.append(line)
        if text in line:
            proc.send_signal(sig)
            break
    log.append(proc.stdout.read())
    proc.wait()
    return "".join(log)


def assert_same_run(out, reference):
    """The same final state, weights, per-epoch and per-step metrics (but the timings)."""
    assert final_meta(out)["state_sha256"] == final_meta(reference)["state_sha256"]
    for name in ("generator.msgpack", "discriminator.msgpack"):
        assert read_bytes(out, name) == read_bytes(reference, name)
    assert metrics_without_seconds(out) == metrics_without_seconds(reference)
    assert [r["epoch"] for r in metrics_without_seconds(out)] == [1, 2, 3]
    steps, ref_steps = np.load(os.path.join(out, "step_metrics.npz")), np.load(os.path.join(reference, "step_metrics.npz"))
    assert all(np.array_equal(steps[k], ref_steps[k]) for k in ref_steps.files)
    assert not os.path.exists(os.path.join(out, "mid_epoch_checkpoint"))   # superseded by the epochs' ends


def lines(run_dir):
    path = os.path.join(run_dir, "metrics.jsonl")
    return open(path).read().count("\n") if os.path.exists(path) else 0


def saving(run_dir, epoch):
    folder = os.path.join(run_dir, "checkpoints")
    return os.path.isdir(folder) and any(n.startswith(f"{epoch}.") and "tmp" in n for n in os.listdir(folder))


def test_killed_mid_epoch_and_mid_save_resumes_bit_identical(reference, data_dir, compile_cache, tmp_path, capsys):
    out = str(tmp_path / "run")
    # 0: Ctrl-C during the start-up's compilations (config.json is written before them).
    started = cli(["--preset", "quick", "--data-dir", data_dir, "--out", out, "--keep", "2", *RUN_FLAGS],
                  compile_cache)
    log = kill_when(started, lambda: os.path.exists(os.path.join(out, "config.json")), sig=signal.SIGINT)
    assert started.returncode == 130, log
    assert f"--resume {out} continues from epoch 1 (none was checkpointed)" in log, log
    assert "epochs 1..3" not in log, f"interrupted after the start-up\n{log}"

    # 1: resumed (so started again), killed during epoch 2's steps (epoch 1 is checkpointed and
    # logged; epoch 2 is not).
    first = cli(["--resume", out], compile_cache)
    log = kill_when(first, lambda: lines(out) == 1, delay=0.3)
    assert first.returncode == -signal.SIGKILL
    assert RunCheckpoints(out).epochs() == [1], log

    # 2: resumed, and killed while epoch 2's checkpoint is being written.
    second = cli(["--resume", out], compile_cache)
    log = kill_when(second, lambda: saving(out, 2))
    assert second.returncode == -signal.SIGKILL
    assert RunCheckpoints(out).epochs() == [1], f"a half-written checkpoint looks valid\n{log}"

    # 3: resumed, and SIGTERM once it trains: it lands in epoch 2's steps or its save, and the
    # state after the last step it completed is saved (or already was) before the one line.
    third = cli(["--resume", out], compile_cache)
    log = signal_after_line(third, "epochs 2..3", signal.SIGTERM)
    assert third.returncode == 143, log
    assert log.splitlines()[-1].startswith(f"error: interrupted; python -m experiments.train --resume {out} "
                                           f"continues after "), log

    # 4: resumed to the end.
    fourth = cli(["--resume", out], compile_cache)
    log = fourth.communicate()[0]
    assert fourth.returncode == 0, log
    assert "resuming" in log, log

    assert_same_run(out, reference)
    assert sorted(os.listdir(os.path.join(out, "checkpoints"))) == ["2", "3"]  # keep 2, no leftovers

    # A finished run is not trained again (in this process: nothing to compile).
    before = snapshot(out)
    assert main(["--resume", out, "--no-progress"]) == 0
    log = capsys.readouterr().out
    assert "already finished" in log and "epoch   " not in log
    assert snapshot(out) == before


def interrupted(*args):
    raise KeyboardInterrupt


class Killed(BaseException):
    """Stands for SIGKILL: no interrupt handling runs."""


def stop_after(monkeypatch, steps, exception):
    """fit's epochs raise `exception` right after the run's `steps`-th step."""
    original, done = run.train_epoch, []

    def train_epoch(*args, on_step, **kwargs):
        def counted(i, state, metrics):
            on_step(i, state, metrics)
            done.append(i)
            if len(done) == steps:
                raise exception
        return original(*args, on_step=counted, **kwargs)
    monkeypatch.setattr(run, "train_epoch", train_epoch)


def saved_positions(run_dir):
    ckpts = RunCheckpoints(run_dir)
    try:
        return ckpts.epochs(), ckpts.mid_epoch_steps()
    finally:
        ckpts.close()


def test_ctrl_c_mid_epoch_saves_the_last_step_and_the_resumed_run_ends_bit_identical(
        reference, data_dir, tmp_path, monkeypatch):
    out, log = str(tmp_path / "run"), []
    stop_after(monkeypatch, 5, KeyboardInterrupt())   # after step 2 of epoch 2 (of 3 steps)
    with pytest.raises(KeyboardInterrupt):
        fit(preset("quick", data_dir=data_dir, **RUN), out, progress=False, log=log.append)
    assert log[-1] == "interrupted; saved the state after step 2 of 3 of epoch 2 (--resume continues from there)"
    assert saved_positions(out) == ([1], [5])
    assert _interrupted(out) == (f"interrupted; python -m experiments.train --resume {out} continues after step 2 "
                                 f"of 3 of epoch 2, its last checkpoint")   # the CLI's line
    monkeypatch.undo()
    log.clear()
    fit(resume_config(out), out, resume=True, progress=False, log=log.append)
    assert f"resuming {out} after step 2 of 3 of epoch 2 (step 5)" in log
    assert_same_run(out, reference)


def test_checkpoint_every_steps_keeps_the_work_of_a_killed_epoch(reference, data_dir, tmp_path, monkeypatch):
    out = str(tmp_path / "run")
    stop_after(monkeypatch, 5, Killed())
    with pytest.raises(Killed):
        fit(preset("quick", data_dir=data_dir, **RUN), out, checkpoint_every_steps=2, progress=False,
            log=lambda _: None)
    # step 2 of epoch 1 was saved, then superseded by epoch 1's end; step 2 of epoch 2 is the newest
    assert saved_positions(out) == ([1], [5])
    monkeypatch.undo()
    fit(resume_config(out), out, resume=True, progress=False, log=lambda _: None)
    assert_same_run(out, reference)
    assert outputs.read_run_info(out)["checkpoint_every_steps"] == 2   # the resumed run's, kept


def test_ctrl_c_during_the_start_up_leaves_a_run_that_resume_starts_again(data_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(run, "_start", interrupted)
    out = str(tmp_path / "run")
    assert main(["--preset", "quick", "--data-dir", data_dir, "--out", out, "--no-progress", *RUN_FLAGS]) == 130
    assert f"--resume {out} continues from epoch 1 (none was checkpointed)" in capsys.readouterr().err
    assert resume_config(out) == preset("quick", data_dir=data_dir, **RUN).for_dataset(16)


def test_config_json_names_the_data_by_its_absolute_path(data_dir, tmp_path, capsys, monkeypatch):
    """Other scripts read it from other working directories."""
    monkeypatch.setattr(run, "_start", interrupted)   # config.json is written by then
    monkeypatch.chdir(os.path.dirname(data_dir))
    out = str(tmp_path / "run")
    main(["--preset", "quick", "--data-dir", os.path.basename(data_dir), "--out", out, *RUN_FLAGS])
    assert outputs.read_config(out).data_dir == data_dir


def test_the_start_up_does_not_wait_for_its_compilations_once_interrupted(data_dir, monkeypatch):
    """The CLI can then exit at once on Ctrl-C instead of after seconds of XLA compilation."""
    release, compiled = threading.Event(), threading.Event()

    def compile_slowly(*args, **kwargs):
        release.wait(60)
        compiled.set()
    from dcgan_jax import startup
    dp = DataParallel()
    monkeypatch.setattr(startup, "compile_epoch", compile_slowly)
    monkeypatch.setattr(startup, "lowered_and_compiled", compile_slowly)
    monkeypatch.setattr(run, "learning_rate", interrupted)
    config = preset("quick", data_dir=data_dir, **RUN)
    try:
        with pytest.raises(KeyboardInterrupt):
            run._start(config, dp, run.load_train_data(config), None, 1, 0, "steps")
        assert not compiled.is_set()
    finally:
        release.set()


def snapshot(run_dir):
    """Every file's bytes, but the lock file's (it holds the last holder's pid)."""
    return {os.path.relpath(os.path.join(d, f), run_dir): open(os.path.join(d, f), "rb").read()
            for d, _, files in os.walk(run_dir) for f in files if f != ".dcgan_jax_lock"}


def test_same_seed_and_config_give_bit_identical_params(reference, data_dir, tmp_path):
    out = str(tmp_path / "again")
    fit(preset("quick", data_dir=data_dir, **RUN), out, progress=False, log=lambda _: None)
    assert final_meta(out)["state_sha256"] == final_meta(reference)["state_sha256"]
    for name in ("generator.msgpack", "discriminator.msgpack"):
        assert read_bytes(out, name) == read_bytes(reference, name)


def test_deterministic_flag_sets_xlas_gpu_flag_before_jax_starts(monkeypatch, capsys):
    monkeypatch.setenv("XLA_FLAGS", "--xla_dump_to=/tmp/x")
    assert main(["--deterministic", "--epochs", "0"]) == 2  # refused after the flag is set
    assert os.environ["XLA_FLAGS"] == "--xla_dump_to=/tmp/x --xla_gpu_deterministic_ops=true"


def test_scanned_run_checkpoints_each_epochs_own_state(data_dir, tmp_path, monkeypatch):
    """With loop='scan' fit starts epoch e+1 before writing epoch e (the next epoch donates the
    state): every checkpoint and the final weights must still be the state after their epoch,
    epoch e's samples must be computed before epoch e+1 is queued (on a GPU stream, after it,
    they would wait for it), and nothing may compile once the first epoch is queued (the state's
    copy for the checkpoint included)."""
    import jax
    from dcgan_jax.checkpoints import state_digest
    from dcgan_jax.data import load_mnist
    from dcgan_jax.outputs import load_variables
    from dcgan_jax.train import create_train_state, epoch_key, run_keys, train_epoch
    calls, compiles = [], []
    for owner, name in ((run, "generate"), (run, "train_epoch")):
        original = getattr(owner, name)
        monkeypatch.setattr(owner, name, lambda *a, _f=original, _n=name, **k: calls.append(_n) or _f(*a, **k))
    config = preset("quick", data_dir=data_dir, loop="scan", **RUN)
    out = str(tmp_path / "scan")
    handler = logging.Handler()
    handler.emit = lambda record: calls and compiles.append(record.getMessage())
    logging.getLogger("jax").addHandler(handler)
    jax.config.update("jax_log_compiles", True)
    try:
        fit(config, out, progress=False, log=lambda _: None)
    finally:
        jax.config.update("jax_log_compiles", False)
        logging.getLogger("jax").removeHandler(handler)
    assert calls == ["train_epoch", "generate"] * config.epochs
    assert not [line for line in compiles if "XLA compilation" in line], compiles
    images = jax.device_put(load_mnist("train", data_dir).images)
    config = config.for_dataset(len(images))
    init_key, _, train_key = run_keys(config.seed)
    state, digests = create_train_state(config, init_key), []
    for epoch in range(1, config.epochs + 1):
        state, _ = train_epoch(state, images, epoch_key(train_key, epoch))
        digests.append(state_digest(state))
    ckpts = RunCheckpoints(out)
    saved = [ckpts.manager.restore(e).meta["state_sha256"] for e in ckpts.epochs()]
    ckpts.close()
    assert saved == digests
    _, g_vars, _ = load_variables(out)
    for got, want in zip(jax.tree.leaves(g_vars), jax.tree.leaves(state.generator_variables)):
        np.testing.assert_array_equal(got, want)
