"""Which keys and noise each part of training draws, and which generator parameters each of
train_step's generator passes uses. Expected values come from jax.random and the flax modules
called directly, never from train.py's own helpers."""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dcgan_jax import Config, train
from dcgan_jax.models import BatchNorm
from dcgan_jax.train import build_optimizers, epoch_key, epoch_plan, noise, run_keys

BATCH = 8


def _keys(keys):
    return [tuple(k) for k in np.asarray(jax.random.key_data(keys)).reshape(-1, 2)]


def test_every_epoch_reshuffles_and_draws_fresh_keys():
    """The tutorial shuffles every epoch and draws fresh noise every step; a resumed run depends on
    (seed, epoch) alone. 4 batches of 8 from 32 images: each image once per epoch."""
    _, _, train_key = run_keys(0)
    plans = [epoch_plan(epoch_key(train_key, epoch), 32, 4, 8) for epoch in (1, 2)]
    for idx, keys in plans:
        flat = np.asarray(idx).ravel()
        assert sorted(flat) == list(range(32))
        assert not np.array_equal(flat, np.arange(32))                   # shuffled
        assert len(set(_keys(keys))) == 4                                # a key per step
    assert not np.array_equal(plans[0][0], plans[1][0])                  # another order each epoch
    assert not set(_keys(plans[0][1])) & set(_keys(plans[1][1]))         # other noise each epoch
    assert np.array_equal(epoch_plan(epoch_key(run_keys(0)[2], 2), 32, 4, 8)[0], plans[1][0])  # (seed, epoch) only


def test_the_shuffle_and_the_step_keys_do_not_reuse_the_epoch_key():
    """Permuting with the epoch key and splitting the same key for the steps' noise would draw the
    shuffle and the noise from overlapping streams (split(k, 2) is a prefix of split(k, n))."""
    key = epoch_key(run_keys(0)[2], 1)
    idx, keys = epoch_plan(key, 32, 4, 8)
    assert not np.array_equal(np.asarray(idx).ravel(), np.asarray(jax.random.permutation(key, 32)))
    reused = set(_keys(jax.random.split(key, 4))) | set(_keys(jax.random.split(key, 2))) | set(_keys(key[None]))
    assert not reused & set(_keys(keys))


def test_latent_noise_is_standard_normal():
    key = jax.random.key(7)
    np.testing.assert_array_equal(noise(key, Config(), 5), jax.random.normal(key, (5, 10), jnp.float32))


class _TinyG(nn.Module):
    """A stand-in generator (two dense layers around dcgan_jax's BatchNorm): train_step's wiring
    is what is tested, and this compiles in a second where the real networks take ~30 s."""
    @nn.compact
    def __call__(self, z, train: bool = True):
        h = BatchNorm(name="bn")(nn.Dense(4)(z)[:, None, None, :], train)
        return jnp.tanh(nn.Dense(28 * 28)(nn.relu(h[:, 0, 0]))).reshape(-1, 28, 28, 1)


class _TinyD(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = True):
        h = nn.avg_pool(x, (7, 7), (7, 7)).reshape(x.shape[0], -1)
        h = BatchNorm(name="bn")(nn.Dense(4)(h)[:, None, None, :], train)
        return nn.Dense(2)(nn.relu(h[:, 0, 0]))


@jax.jit
def _g_stats_after(params, stats, z):
    """G's BatchNorm running statistics after one train-mode forward pass of z."""
    return _TinyG().apply({"params": params, "batch_stats": stats}, z, train=True,
                          mutable=["batch_stats"])[1]["batch_stats"]


@functools.partial(jax.jit, static_argnums=0)
def _tiny_state(config):
    g_vars = _TinyG().init(jax.random.key(0), jnp.zeros((1, 10)), train=False)
    d_vars = _TinyD().init(jax.random.key(1), jnp.zeros((1, 28, 28, 1)), train=False)
    g_tx, d_tx = build_optimizers(config)
    return train.TrainState(step=jnp.zeros((), jnp.int32), g_params=g_vars["params"], g_stats=g_vars["batch_stats"],
                            d_params=d_vars["params"], d_stats=d_vars["batch_stats"],
                            g_opt=g_tx.init(g_vars["params"]), d_opt=d_tx.init(d_vars["params"]), config=config)


@pytest.mark.parametrize("order", ["g_then_d", "d_then_g"])
@pytest.mark.slow
def test_train_step_generator_passes_use_fresh_normal_noise_per_d_step(order, monkeypatch):
    """d_steps=2: the step's generator forward passes are exactly two, on z_i ~ N(0, 1) drawn from
    split(key, 2)[i]. G-then-D: the G step's pass (z_0, initial G), then a fresh fake for the second
    D step (z_1, G after its update). D-then-G: one pass per D step, both with the initial G (the G
    step reuses the second). Seen in G's BatchNorm running statistics, which count every pass."""
    monkeypatch.setattr(train, "build_models", lambda config: (_TinyG(), _TinyD()))
    config = Config(batch_size=BATCH, order=order, d_steps=2).for_dataset(32)
    state = _tiny_state(config)
    images = jnp.asarray(np.random.default_rng(0).integers(0, 256, (BATCH, 28, 28, 1), dtype=np.uint8))
    key = jax.random.key(1)
    # a jit of its own: the shared jitted_train_step's cache must not hold the stand-in networks
    new, _ = jax.jit(train._train_step)(state, images, key)
    z0, z1 = (jax.random.normal(k, (BATCH, 10)) for k in jax.random.split(key, 2))
    assert not np.array_equal(jax.tree.leaves(new.g_params)[0], jax.tree.leaves(state.g_params)[0])
    second_params = new.g_params if order == "g_then_d" else state.g_params
    expected = _g_stats_after(second_params, _g_stats_after(state.g_params, state.g_stats, z0), z1)
    for got, want in zip(jax.tree.leaves(new.g_stats), jax.tree.leaves(expected)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
