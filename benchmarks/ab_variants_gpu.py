"""Variants for benchmarks.ab_step on a GPU: the forms made for XLA:CPU (docs/performance.md), each
put into the "xla" set alone, and three GPU-only ideas (BatchNorm statistics in one pass, Adam on
one flat vector, the scan unrolled by 2). benchmarks/NOTES.md has each one's prediction.

  python -m benchmarks.ab_step benchmarks/ab_variants_gpu.py --loop scan --steps 100 --rounds 10
"""
from dataclasses import replace

import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

from dcgan_jax import kernels, train

# the originals, kept before ab_step replaces them
_build_optimizers, _epoch_programs = train.build_optimizers, train.epoch_programs


def xla_with(**forms) -> dict:
    """The "xla" set with some of its forms replaced."""
    return {"kernels": replace(kernels.XLA_FORMS, **forms)}


def batch_moments_one_pass(x, channel_sum):
    """kernels._batch_moments from one pass over x: sums of (x - s) and (x - s)**2 in one fusion,
    with s a sample of each channel so that the variance does not cancel when |mean| >> std
    (float32 mean and variance within ~1e-6 of float64 for N(5, 0.3) data, as the two-pass form)."""
    xs = x.astype(jnp.promote_types(x.dtype, jnp.float32))
    n = x.size // x.shape[-1]
    shift = jax.lax.stop_gradient(xs[(0,) * (x.ndim - 1)])
    d = xs - shift
    m = channel_sum(d) / n
    return shift + m, channel_sum(jnp.square(d)) / n - jnp.square(m)


def flat_adam_optimizers(config):
    """train.build_optimizers with each Adam run on one flat vector of all the network's parameters
    (optax.flatten): one fused update instead of one per parameter array (G and D: 49 arrays).
    Elementwise, so the same numbers; the optimizer state's structure changes."""
    return tuple(optax.flatten(tx) for tx in _build_optimizers(config))


def epoch_programs_unrolled(mesh):
    """train.epoch_programs with two steps per iteration of the scanned epoch's while loop (half the
    host round trips)."""
    plan, step, _ = _epoch_programs(mesh)
    batch = NamedSharding(mesh, P(mesh.axis_names))

    def step_on(state, images, idx, key_data):
        real = jax.lax.with_sharding_constraint(images[idx], batch)
        return train._train_step(state, real, jax.random.wrap_key_data(key_data))

    def scan(state, images, key_data, start):
        cfg = state.config
        idx, keys = plan(key_data, images.shape[0], cfg.steps_per_epoch, cfg.batch_size)
        return jax.lax.scan(lambda s, xs: step_on(s, images, *xs), state, (idx[start:], keys[start:]), unroll=2)
    return plan, step, jax.jit(scan, static_argnums=3, donate_argnums=0, out_shardings=NamedSharding(mesh, P()),
                               **kernels.STEP_JIT_KWARGS)


VARIANTS = {
    "xla forms": {"kernels": "xla"},
    "one-channel conv as tap matmul": xla_with(single_output_conv=kernels.tap_matmul_conv),
    "small-input conv as dense matmul": xla_with(small_input_conv=kernels.dense_conv),
    "BatchNorm sums as matmuls": xla_with(channel_sum=kernels.sum_as_dot),
    "layer3_0 wgrad as conv of dy": xla_with(stride1_weight_grad=kernels.weight_grad_as_conv_of_dy),
    "BatchNorm output stored once": xla_with(stored_once=kernels.divide_by_runtime_one),
    "BatchNorm statistics in one pass": {"kernels": "xla", "kernels._batch_moments": batch_moments_one_pass},
    "Adam on one flat vector": {"kernels": "xla", "train.build_optimizers": flat_adam_optimizers},
    "scan unrolled by 2": {"kernels": "xla", "train.epoch_programs": epoch_programs_unrolled},
}
