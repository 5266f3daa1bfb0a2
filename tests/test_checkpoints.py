"""RunCheckpoints: what a checkpoint holds, keep-last-N, atomicity, corruption, mismatches and
failed writes."""
import gc
import os
import subprocess
import sys
import textwrap
from types import SimpleNamespace

import jax
import numpy as np
import pytest

from conftest import make_idx_dir
from dcgan_jax import create_train_state, preset
from dcgan_jax import checkpoints
from dcgan_jax.checkpoints import CheckpointError, RunCheckpoints, state_digest
from dcgan_jax.outputs import WriteError
from dcgan_jax.parallel import DataParallel


@pytest.fixture(scope="module")
def config(tmp_path_factory):
    # the config of test_resume.py / test_bad_inputs.py: one compiled init serves all three
    data = make_idx_dir(tmp_path_factory.getbasetemp() / "mnist_16", n_train=16, n_test=4)
    return preset("quick", batch_size=4, steps_per_epoch=3, epochs=3, data_dir=data).for_dataset(16)


@pytest.fixture(scope="module")
def states(config):
    """Three distinct states, as after epochs 1, 2, 3."""
    base = create_train_state(config, jax.random.key(0))
    return [base.replace(step=base.step + 3 * e, g_params=jax.tree.map(lambda p: p + e, base.g_params))
            for e in (1, 2, 3)]


def history(epoch):
    return {k: np.arange(3 * epoch, dtype=np.float32) + i for i, k in
            enumerate(("loss_d", "loss_g", "d_real", "d_fake"))}


def records(epoch):
    return [{"epoch": e, "loss_d": 0.1 * e + 1e-17, "seconds": 1.0} for e in range(1, epoch + 1)]


def save_all(run_dir, states, keep=2):
    ckpts = RunCheckpoints(run_dir, keep=keep)
    for e, state in enumerate(states, 1):
        ckpts.save(e, state, records(e), history(e), num_examples=16)
    return ckpts


def leaves_equal(a, b):
    return all(np.array_equal(x, y) and np.asarray(x).dtype == np.asarray(y).dtype
               for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_restores_exactly_what_was_saved_and_keeps_the_last_n(config, states, tmp_path):
    ckpts = save_all(tmp_path, states, keep=2)
    assert ckpts.epochs() == [2, 3]
    restored = ckpts.restore_latest(config, DataParallel().abstract, log=pytest.fail)
    assert restored.epoch == 3
    assert leaves_equal(restored.state, states[2]) and restored.state.config == config
    assert jax.tree.structure(restored.state) == jax.tree.structure(states[2])
    assert restored.records == records(3)  # floats round-trip exactly through the JSON
    assert all(np.array_equal(restored.history[k], v) for k, v in history(3).items())
    assert restored.meta["config"] == config.to_dict() and restored.meta["num_examples"] == 16
    ckpts.close()


def test_an_unfinished_save_is_not_a_checkpoint(config, states, tmp_path):
    """What a crash mid-save leaves (orbax's temporary folder) is never listed, and is cleaned."""
    save_all(tmp_path, states[:1]).close()
    partial = tmp_path / "checkpoints" / "2.orbax-checkpoint-tmp-1234567"
    (partial / "state").mkdir(parents=True)
    (partial / "state" / "half_written").write_bytes(b"\0" * 100)
    ckpts = RunCheckpoints(tmp_path)
    assert ckpts.epochs() == [1]
    assert ckpts.restore_latest(config, DataParallel().abstract, log=pytest.fail).epoch == 1
    ckpts.close()  # orbax removes leftovers in the background; close waits for it
    assert not partial.exists()


def test_silently_changed_bytes_are_caught_and_skipped(config, states, tmp_path):
    ckpts = save_all(tmp_path, states, keep=3)
    # flip bytes in the middle of the largest array file of epoch 3: same size, no read error
    folder = tmp_path / "checkpoints" / "3" / "state"
    victim = max((os.path.join(d, f) for d, _, fs in os.walk(folder) for f in fs), key=os.path.getsize)
    size = os.path.getsize(victim)
    with open(victim, "r+b") as f:
        f.seek(size // 2)
        chunk = f.read(64)
        f.seek(size // 2)
        f.write(bytes(b ^ 0xFF for b in chunk))
    messages = []
    restored = ckpts.restore_latest(config, DataParallel().abstract, log=messages.append)
    assert restored.epoch == 2 and leaves_equal(restored.state, states[1])
    changed = os.path.relpath(victim, folder.parent)
    assert f"checkpoint of epoch 3 is corrupt ({changed} differ from their sha256 at save)" in messages[0]
    assert (tmp_path / "corrupt_checkpoints" / "epoch_3").is_dir() and ckpts.epochs() == [1, 2]
    ckpts.close()


# Orbax abandons its other reads when one fails: the coroutines left behind raise at collection.
@pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")
def test_a_truncated_checkpoint_is_caught_before_orbax_reads_it(config, states, tmp_path):
    ckpts = save_all(tmp_path, states[:2])
    folder = tmp_path / "checkpoints" / "2" / "state"
    victim = max((os.path.join(d, f) for d, _, fs in os.walk(folder) for f in fs), key=os.path.getsize)
    with open(victim, "r+b") as f:
        f.truncate(os.path.getsize(victim) // 2)
    messages = []
    assert ckpts.restore_latest(config, DataParallel().abstract, log=messages.append).epoch == 1
    assert "checkpoint of epoch 2 is corrupt (state/" in messages[0]
    ckpts.close()
    gc.collect()  # what a failed read left would raise here


def test_the_state_digest_checks_the_arrays_as_restored(config, states, tmp_path, monkeypatch):
    """Files intact, arrays not the ones saved (a bug in saving or restoring)."""
    ckpts = save_all(tmp_path, states[:1])
    monkeypatch.setattr(checkpoints, "state_digest", lambda state: "0" * 64)
    ckpts.save(2, states[1], records(2), history(2))
    monkeypatch.undo()
    messages = []
    assert ckpts.restore_latest(config, DataParallel().abstract, log=messages.append).epoch == 1
    assert "checkpoint of epoch 2 is corrupt (state arrays differ from their saved sha256)" in messages[0]
    ckpts.close()


def test_a_save_the_disk_cannot_hold_is_refused_before_orbax_starts(states, tmp_path, monkeypatch):
    ckpts = save_all(tmp_path, states[:1])
    size = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(tmp_path / "checkpoints" / "1") for f in fs)
    free = int(size * 1.05)
    monkeypatch.setattr(checkpoints.shutil, "disk_usage", lambda path: SimpleNamespace(free=free))
    with pytest.raises(WriteError, match=rf"^cannot write checkpoint {tmp_path}/checkpoints/2: no space left on "
                                         rf"device \({free / 2**20:.0f} MiB free, the last checkpoint took "
                                         rf"{size / 2**20:.0f} MiB\)$"):
        ckpts.save(2, states[1], records(2), history(2))
    assert os.listdir(tmp_path / "checkpoints") == ["1"] and ckpts.epochs() == [1]
    ckpts.close()


def test_cause_names_the_os_error_inside_a_tensorstore_message():
    e = ValueError('OUT_OF_RANGE: Error writing "x" in OCDBT database: Failed to write 512 bytes to file 8: '
                   "No space left on device [os_error_code='28'] [tensorstore_spec='{...}']")
    assert checkpoints._cause(e) == "no space left on device"
    assert checkpoints._cause(OSError(5, "Input/output error")) == "input/output error"


FULL_DISK = textwrap.dedent("""
    import os, resource, signal, sys
    import jax, numpy as np
    from dcgan_jax import create_train_state, preset
    from dcgan_jax.checkpoints import RunCheckpoints
    from dcgan_jax.outputs import WriteError
    from dcgan_jax.parallel import DataParallel
    config = preset("quick", batch_size=4, steps_per_epoch=3, epochs=3)
    state = create_train_state(config, jax.random.key(0))
    history = {"loss_d": np.zeros(3, np.float32)}
    ckpts = RunCheckpoints(sys.argv[1])
    ckpts.save(1, state.replace(step=state.step + 3), [], history)
    # No file may grow past 64 KiB: the writes of the next checkpoint fail in tensorstore's C++.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 16, resource.RLIM_INFINITY))
    try:
        ckpts.save(2, state.replace(step=state.step + 6), [], history)
    except WriteError as e:
        print("WriteError:", e)
    resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    print("epochs:", ckpts.epochs(), "left:", sorted(os.listdir(ckpts.directory)))
    print("restored:", ckpts.restore_latest(config, DataParallel().abstract).epoch)
    ckpts.close()
""")


@pytest.mark.slow  # a subprocess
def test_a_failed_save_names_the_cause_and_keeps_the_last_good_checkpoint(tmp_path):
    root = os.path.dirname(os.path.dirname(os.path.abspath(checkpoints.__file__)))
    out = subprocess.run([sys.executable, "-c", FULL_DISK, str(tmp_path / "run")], cwd=root, capture_output=True,
                         text=True, timeout=300).stdout
    assert f"WriteError: cannot write checkpoint {tmp_path}/run/checkpoints/2: file too large\n" in out, out
    assert "epochs: [1] left: ['1']" in out and "restored: 1" in out, out


def test_another_config_is_refused_by_name(config, states, tmp_path):
    ckpts = save_all(tmp_path, states[:1])
    with pytest.raises(CheckpointError, match=r"checkpoints/1: order='g_then_d' but the run was made with "
                                              r"order='d_then_g'"):
        ckpts.restore_latest(config.replace(order="g_then_d"), DataParallel().abstract)
    # epochs may grow on resume; the state restored is the same
    assert ckpts.restore_latest(config.replace(epochs=5), DataParallel().abstract).epoch == 1
    assert ckpts.epochs() == [1]  # a refused checkpoint is not moved aside
    ckpts.close()


def test_state_digest_sees_one_changed_element(states):
    state = states[0]
    kernel = state.d_params["fc"]["kernel"]
    changed = state.replace(d_params={**state.d_params, "fc": {**state.d_params["fc"],
                                                               "kernel": kernel.at[0, 0].add(1e-7)}})
    assert state_digest(state) == state_digest(jax.tree.map(np.asarray, state))
    assert state_digest(changed) != state_digest(state)


def steps_history(n):
    return {k: np.arange(n, dtype=np.float32) + i for i, k in enumerate(("loss_d", "loss_g", "d_real", "d_fake"))}


def mid_epoch_state(state, steps):
    """`state` moved on by `steps` steps, with other parameters."""
    return state.replace(step=state.step + steps, d_params=jax.tree.map(lambda p: p - 1, state.d_params))


def test_a_mid_epoch_checkpoint_is_restored_while_newest_and_dropped_at_the_next_epoch_end(config, states, tmp_path):
    ckpts = save_all(tmp_path, states[:1])                       # epoch 1 ends at step 3
    mid = mid_epoch_state(states[0], 2)
    ckpts.save(1, mid, records(1), steps_history(5), steps_in_epoch=2, num_examples=16)
    assert os.listdir(tmp_path / "mid_epoch_checkpoint") == ["5"] and ckpts.epochs() == [1]
    assert ckpts.latest(3) == (1, 2)
    restored = ckpts.restore_latest(config, DataParallel().abstract, log=pytest.fail)
    assert (restored.epoch, restored.steps_in_epoch) == (1, 2)
    assert restored.position() == "step 2 of 3 of epoch 2"
    assert leaves_equal(restored.state, mid) and restored.records == records(1)
    assert all(np.array_equal(restored.history[k], v) for k, v in steps_history(5).items())

    ckpts.save(2, states[1], records(2), history(2), num_examples=16)   # epoch 2's end supersedes it
    assert not (tmp_path / "mid_epoch_checkpoint").exists() and ckpts.latest(3) == (2, 0)
    restored = ckpts.restore_latest(config, DataParallel().abstract, log=pytest.fail)
    assert (restored.epoch, restored.steps_in_epoch) == (2, 0) and leaves_equal(restored.state, states[1])
    ckpts.save(2, mid_epoch_state(states[1], 1), records(2), steps_history(7), steps_in_epoch=1)
    assert ckpts.latest(3) == (2, 1)   # a new mid-epoch checkpoint after its folder went
    ckpts.close()


def test_a_corrupt_mid_epoch_checkpoint_falls_back_to_the_epoch_before(config, states, tmp_path):
    ckpts = save_all(tmp_path, states[:1])
    ckpts.save(1, mid_epoch_state(states[0], 2), records(1), steps_history(5), steps_in_epoch=2)
    folder = tmp_path / "mid_epoch_checkpoint" / "5" / "state"
    victim = max((os.path.join(d, f) for d, _, fs in os.walk(folder) for f in fs), key=os.path.getsize)
    with open(victim, "r+b") as f:
        f.seek(os.path.getsize(victim) // 2)
        f.write(b"\xff" * 8)
    messages = []
    restored = ckpts.restore_latest(config, DataParallel().abstract, log=messages.append)
    assert (restored.epoch, restored.steps_in_epoch) == (1, 0) and leaves_equal(restored.state, states[0])
    assert "checkpoint of step 2 of 3 of epoch 2 is corrupt" in messages[0], messages
    assert "moved to corrupt_checkpoints/step_5" in messages[0]
    ckpts.close()


def test_a_checkpoint_whose_folder_disagrees_with_its_contents_is_not_used(config, states, tmp_path):
    """The folder's step is where the run would continue: a renamed one would replay other batches."""
    ckpts = save_all(tmp_path, states[:1])
    ckpts.save(1, mid_epoch_state(states[0], 2), records(1), steps_history(5), steps_in_epoch=2)
    ckpts.close()
    os.rename(tmp_path / "mid_epoch_checkpoint" / "5", tmp_path / "mid_epoch_checkpoint" / "4")
    ckpts, messages = RunCheckpoints(tmp_path), []
    assert ckpts.restore_latest(config, DataParallel().abstract, log=messages.append).epoch == 1
    assert "checkpoint of step 1 of 3 of epoch 2 is corrupt (its meta says step 2 of 3 of epoch 2" in messages[0]
    ckpts.close()


def test_an_interrupt_during_a_save_waits_for_the_save(config, states, tmp_path, monkeypatch):
    """Cut short, a save leaves orbax's threads writing into a folder its cleanup removes."""
    import signal
    ckpts = save_all(tmp_path, states[:1])
    original = ckpts.manager.save

    def interrupted_save(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)   # handled at the interpreter's next check, inside the save
        return original(*args, **kwargs)
    monkeypatch.setattr(ckpts.manager, "save", interrupted_save)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)   # what a plain script has
    try:
        with pytest.raises(KeyboardInterrupt):
            with checkpoints.signals_deferred():
                ckpts.save(2, states[1], records(2), history(2))
    finally:
        signal.signal(signal.SIGINT, previous)
    assert ckpts.epochs() == [1, 2] and (tmp_path / "checkpoints" / "2" / checkpoints.MANIFEST).is_file()
    restored = ckpts.restore_latest(config, DataParallel().abstract, log=pytest.fail)
    assert restored.epoch == 2 and leaves_equal(restored.state, states[1])
    ckpts.close()
