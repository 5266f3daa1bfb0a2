"""RunCheckpoints: what a checkpoint holds, keep-last-N, atomicity, corruption and mismatches."""
import os

import jax
import numpy as np
import pytest

from conftest import make_idx_dir
from dcgan_jax import create_train_state, preset
from dcgan_jax.checkpoints import CheckpointError, RunCheckpoints, state_digest
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
    assert "checkpoint of epoch 3 is corrupt (state arrays differ from their saved sha256)" in messages[0]
    assert (tmp_path / "corrupt_checkpoints" / "epoch_3").is_dir() and ckpts.epochs() == [1, 2]
    ckpts.close()


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
