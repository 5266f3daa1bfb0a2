"""The tutorial's generator and discriminator as flax.linen modules (NHWC).

Layer for layer `parity/reference.py`, the tutorial in PyTorch; docs/tutorial.md tabulates it.
Submodule names follow the PyTorch state_dict nesting (`layer1_0` is `layer1.0`, `conv_3` is
`conv.3`), so weight conversion is a renaming plus layout changes.

The three layer types are a plug-in, `Kernels` (as flax's imagenet example injects its conv):
by default flax's own layers; `dcgan_jax.kernels` has drop-in layers that compute the same
values in forms XLA compiles to faster programs, chosen once per run.
"""
import dataclasses
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any
ModuleDef = Any

# The tutorial's weights_init: conv weights ~ N(0, 0.02), BatchNorm weights ~ N(1, 0.02), bias 0.
conv_init = nn.initializers.normal(0.02)


def bn_scale_init(key, shape, dtype=jnp.float32):
    return 1.0 + 0.02 * jax.random.normal(key, shape, dtype)


def torch_default_uniform(fan_in: int):
    """PyTorch's default bias init (and Linear weight init): U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    bound = 1.0 / fan_in ** 0.5

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def normalize(x, mean, var, scale, bias, epsilon, dtype):
    mul = jax.lax.rsqrt(var + epsilon) * scale
    return ((x - mean.astype(dtype)) * mul.astype(dtype) + bias.astype(dtype)).astype(dtype)


class BatchNorm(nn.Module):
    """BatchNorm2d with PyTorch's semantics, flax's variable names (`scale`, `bias`, `mean`, `var`).

    flax.linen.BatchNorm keeps an average of the *biased* batch variance; PyTorch keeps the
    unbiased one (n / (n - 1) times larger), which changes every eval-mode output and the saved
    statistics, so this module keeps PyTorch's. `momentum` is flax's convention: running =
    momentum * running + (1 - momentum) * batch, so 0.9 is PyTorch's momentum=0.1. Statistics are
    reduced in at least float32, so that bfloat16 compute normalises stably.
    """
    momentum: float = 0.9
    epsilon: float = 1e-5
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool):
        features = x.shape[-1]
        scale = self.param("scale", bn_scale_init, (features,), self.param_dtype)
        bias = self.param("bias", nn.initializers.zeros, (features,), self.param_dtype)
        stats_dtype = jnp.promote_types(self.param_dtype, jnp.float32)
        ra_mean = self.variable("batch_stats", "mean", jnp.zeros, (features,), stats_dtype)
        ra_var = self.variable("batch_stats", "var", jnp.ones, (features,), stats_dtype)
        dtype = self.dtype or x.dtype
        if not train:
            return normalize(x, ra_mean.value, ra_var.value, scale, bias, self.epsilon, dtype)
        mean, var = self.moments(x)
        if not self.is_initializing():
            n, m = x.size // features, self.momentum
            mean_, var_ = jax.lax.stop_gradient((mean, var))
            ra_mean.value = m * ra_mean.value + (1 - m) * mean_.astype(stats_dtype)
            ra_var.value = m * ra_var.value + (1 - m) * (var_ * n / max(n - 1, 1)).astype(stats_dtype)
        return self.normalize_batch(x, mean, var, scale, bias, dtype)

    def moments(self, x):
        """Per-channel mean and biased variance over N, H, W."""
        x = x.astype(jnp.promote_types(x.dtype, jnp.float32))
        mean = x.mean(axis=(0, 1, 2))
        return mean, jnp.square(x - mean).mean(axis=(0, 1, 2))

    def normalize_batch(self, x, mean, var, scale, bias, dtype):
        """The train-mode output, normalised with this batch's statistics."""
        return normalize(x, mean, var, scale, bias, self.epsilon, dtype)


@dataclasses.dataclass(frozen=True)
class Kernels:
    """The layer types the networks are built from; each takes flax's arguments for its layer."""
    conv: ModuleDef = nn.Conv
    conv_transpose: ModuleDef = nn.ConvTranspose
    batch_norm: ModuleDef = BatchNorm


class ConvBNReLU(nn.Module):
    """The tutorial's CBR / CBLR (identical: plain ReLU) and, with transpose=True, TCBR."""
    features: int
    kernel: int
    stride: int
    transpose: bool = False
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32
    kernels: Kernels = Kernels()

    @nn.compact
    def __call__(self, x, train: bool):
        k, s = self.kernel, self.stride
        p = (k - 1) // 2  # the tutorial's padding; TCBR ignores the one it is given
        layer = dict(use_bias=False, kernel_init=conv_init, dtype=self.dtype, param_dtype=self.param_dtype,
                     name="conv")
        if self.transpose:
            # ConvTranspose2d(k, s, padding=p): the s-dilated input convolved with k - 1 - p padding
            # (the flax kernel is PyTorch's weight spatially flipped; parity/convert.py)
            x = self.kernels.conv_transpose(self.features, (k, k), (s, s), padding=((k - 1 - p,) * 2,) * 2,
                                            **layer)(x)
        else:
            x = self.kernels.conv(self.features, (k, k), (s, s), padding=((p, p),) * 2, **layer)(x)
        x = self.kernels.batch_norm(dtype=self.dtype, param_dtype=self.param_dtype, name="bn")(x, train)
        return nn.relu(x)


# (name, features, kernel, stride, transpose) in the tutorial's order.
GENERATOR_BLOCKS: Sequence[tuple] = (
    ("layer1_0", 256, 4, 2, True), ("layer1_1", 128, 3, 1, False),
    ("layer2_0", 256, 4, 1, True), ("layer2_1", 256, 4, 2, True),
    ("layer3_0", 128, 4, 1, True), ("layer3_1", 128, 4, 2, True), ("layer3_2", 128, 3, 1, False),
    ("layer4_0", 64, 4, 2, True), ("layer4_1", 64, 3, 1, False), ("layer4_2", 64, 3, 1, False),
)
DISCRIMINATOR_BLOCKS: Sequence[tuple] = (
    ("conv_0", 32, 3, 2, False), ("conv_1", 64, 3, 1, False), ("conv_2", 128, 3, 2, False),
    ("conv_3", 128, 3, 2, False), ("conv_4", 64, 3, 2, False),
)


class Generator(nn.Module):
    """z (N, latent_dim) or (N, 1, 1, latent_dim) -> images (N, 28, 28, 1) in [-1, 1] (Tanh)."""
    latent_dim: int = 10
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32
    kernels: Kernels = Kernels()

    @nn.compact
    def __call__(self, z, train: bool = True):
        if z.ndim == 2:
            z = z[:, None, None, :]
        if z.shape[1:] != (1, 1, self.latent_dim):
            raise ValueError(f"Generator expects z of shape (N, {self.latent_dim}) or "
                             f"(N, 1, 1, {self.latent_dim}), got {z.shape}")
        x = z.astype(self.dtype or z.dtype)
        for name, features, kernel, stride, transpose in GENERATOR_BLOCKS:
            x = ConvBNReLU(features, kernel, stride, transpose, self.dtype, self.param_dtype, self.kernels,
                           name=name)(x, train)
        x = self.kernels.conv(1, (3, 3), padding=((1, 1), (1, 1)), kernel_init=conv_init,
                              bias_init=torch_default_uniform(64 * 3 * 3), dtype=self.dtype,
                              param_dtype=self.param_dtype, name="layer4_3")(x)
        return jnp.tanh(x)


class Discriminator(nn.Module):
    """images (N, 28, 28, 1) -> logits (N, 2); index 1 is "real"."""
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32
    kernels: Kernels = Kernels()

    @nn.compact
    def __call__(self, x, train: bool = True):
        x = x.astype(self.dtype or x.dtype)
        for name, features, kernel, stride, transpose in DISCRIMINATOR_BLOCKS:
            x = ConvBNReLU(features, kernel, stride, transpose, self.dtype, self.param_dtype, self.kernels,
                           name=name)(x, train)
        x = x.mean(axis=(1, 2))  # AdaptiveAvgPool2d(1) + flatten
        return nn.Dense(2, kernel_init=torch_default_uniform(64), bias_init=torch_default_uniform(64),
                        dtype=self.dtype, param_dtype=self.param_dtype, name="fc")(x)
