"""Variants for benchmarks.ab_step on a GPU: the forms made for XLA:CPU (docs/performance.md), each
tried on the other backend, and three GPU-only ideas (BatchNorm statistics in one pass, Adam on one
flat vector, the scan unrolled by 2). benchmarks/NOTES.md has each one's prediction.

  python -m benchmarks.ab_step benchmarks/ab_variants_gpu.py --loop scan --steps 100 --rounds 10
"""
import functools

import jax
import jax.numpy as jnp
import optax

from dcgan_jax import models, train

_build_optimizers = train.build_optimizers  # the original, kept before ab_step patches it


def any_platform(form):
    """`form` in place of one of models' platform choices (which are called with platform=...)."""
    return lambda *args, platform=None: form(*args)


def batch_stats_one_pass(x, *, platform=None):
    """models._batch_stats from one pass over x: sums of (x - s) and (x - s)**2 in one fusion, with
    s a sample of each channel so that the variance does not cancel when |mean| >> std (float32
    mean and variance within ~1e-6 of float64 for N(5, 0.3) data, as the two-pass form)."""
    xs = x.astype(jnp.promote_types(x.dtype, jnp.float32))
    n, axes = x.size // x.shape[-1], tuple(range(x.ndim - 1))
    shift = jax.lax.stop_gradient(xs[(0,) * (x.ndim - 1)])
    d = xs - shift
    m = d.sum(axes) / n
    return shift + m, jnp.square(d).sum(axes) / n - jnp.square(m)


def flat_adam_optimizers(config):
    """train.build_optimizers with each Adam run on one flat vector of all the network's parameters
    (optax.flatten): one fused update instead of one per parameter array (G and D: 49 arrays).
    Elementwise, so the same numbers; the optimizer state's structure changes."""
    return tuple(optax.flatten(tx) for tx in _build_optimizers(config))


@functools.partial(jax.jit, donate_argnums=0, static_argnames="platform", **train.STEP_JIT_KWARGS)
def scan_epoch_unrolled(state, images, key, platform=None):
    """train._scan_epoch with two steps per while-loop iteration (half the host round trips)."""
    cfg = state.config
    idx, keys = train.epoch_plan(key, images.shape[0], cfg.steps_per_epoch, cfg.batch_size)
    return jax.lax.scan(lambda s, xs: train._train_step(s, images[xs[0]], xs[1], platform), state, (idx, keys),
                        unroll=2)


VARIANTS = {
    "as is": {},
    "one-channel conv as tap matmul": {"single_output_conv": any_platform(models._single_output_conv)},
    "small-input conv as dense matmul": {"small_input_conv": any_platform(models._dense_conv)},
    "BatchNorm sums as matmuls": {"channel_sum": any_platform(models._channel_sum_as_dot)},
    "layer3_0 wgrad as conv of dy": {"stride1_weight_grad": any_platform(models._weight_grad_as_conv_of_dy)},
    "BatchNorm statistics in one pass": {"_batch_stats": batch_stats_one_pass},
    "Adam on one flat vector": {"train.build_optimizers": flat_adam_optimizers},
    "scan unrolled by 2": {"train._scan_epoch": scan_epoch_unrolled},
}
