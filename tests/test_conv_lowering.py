"""The speed-motivated convolution forms in models.py compute exactly the textbook ones."""
import collections
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dcgan_jax.models import channel_sum, conv, conv_transpose_dilated, conv_transpose_phased, stored_once


@pytest.fixture
def x64():
    jax.config.update("jax_enable_x64", True)
    yield
    jax.config.update("jax_enable_x64", False)


def _conv_transpose_reference(x, kernel, stride, pad):
    """lax.conv_transpose with flax's kernel layout (transpose_kernel=False)."""
    return jax.lax.conv_transpose(x, kernel, (stride, stride), ((pad, pad),) * 2,
                                  dimension_numbers=("NHWC", "HWIO", "NHWC"))


# (kernel, stride, PyTorch padding, input size): the tutorial's stride-2 layers (1->2, 3->6, 7->14,
# 14->28) and other shapes whose output divides by the stride.
@pytest.mark.parametrize("k,s,p,n", [(4, 2, 1, 1), (4, 2, 1, 3), (4, 2, 1, 7), (2, 2, 0, 4), (6, 3, 0, 3), (3, 3, 0, 2)])
def test_phased_transposed_conv_equals_dilated(x64, k, s, p, n):
    rng = np.random.default_rng(k * 100 + n)
    x = jnp.asarray(rng.standard_normal((2, n, n, 3)))
    kernel = jnp.asarray(rng.standard_normal((k, k, 3, 4)))
    pad = k - 1 - p
    reference = _conv_transpose_reference(x, kernel, s, pad)
    np.testing.assert_allclose(conv_transpose_dilated(x, kernel, s, pad), reference, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(conv_transpose_phased(x, kernel, s, pad), reference, rtol=1e-12, atol=1e-12)

    def loss(f):
        return lambda x, w: jnp.sum(jnp.sin(f(x, w, s, pad)))
    grads = jax.grad(loss(conv_transpose_phased), (0, 1))(x, kernel)
    expected = jax.grad(loss(_conv_transpose_reference), (0, 1))(x, kernel)
    for g, e in zip(grads, expected):
        np.testing.assert_allclose(g, e, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("padding", [((1, 1), (2, 0)), ((2, -1), (0, 1))])
def test_asymmetric_and_negative_padding(x64, padding):
    """The phases of a transposed convolution pass uneven (possibly negative: cropping) padding."""
    rng = np.random.default_rng(0)
    x, kernel = jnp.asarray(rng.standard_normal((2, 5, 5, 3))), jnp.asarray(rng.standard_normal((3, 3, 3, 2)))
    expected = jax.lax.conv_general_dilated(x, kernel, (1, 1), padding, dimension_numbers=("NHWC", "HWIO", "NHWC"))
    np.testing.assert_allclose(conv(x, kernel, 1, padding), expected, rtol=1e-12)


def test_phased_rejects_output_not_divisible_by_stride():
    with pytest.raises(ValueError, match="not a multiple of stride 3"):
        conv_transpose_phased(jnp.ones((1, 3, 3, 1)), jnp.ones((6, 6, 1, 1)), 3, 4)


# conv() picks a form per shape: patches x matmul where the kernel is wider than the output
# (layer1_1, layer2_0, D's conv_4), split gradients where padded (layer3_0, the 3x3 layers, D's
# strided layers), plain lax otherwise; each must be the textbook convolution, values and gradients.
# One output channel (layer4_3): a matmul to per-tap planes.
# The forms chosen per platform are checked both ways, each run here: XLA:CPU's, and the ones
# other platforms compile.
@pytest.mark.parametrize("platform", ["cpu", "gpu"])
@pytest.mark.parametrize("n,k,s,p,c_out", [(2, 3, 1, 1, 4), (2, 4, 1, 2, 4), (4, 3, 2, 1, 4), (6, 4, 1, 2, 4),
                                           (14, 3, 1, 1, 4), (14, 3, 2, 1, 4), (7, 3, 2, 1, 4), (5, 3, 1, 0, 4),
                                           (7, 3, 1, 1, 1), (6, 4, 1, 2, 1), (5, 3, 1, 0, 1), (7, 3, 2, 1, 1)])
def test_conv_forms_equal_lax(x64, platform, n, k, s, p, c_out):
    rng = np.random.default_rng(n * 100 + k * 10 + p)
    x, kernel = jnp.asarray(rng.standard_normal((2, n, n, 3))), jnp.asarray(rng.standard_normal((k, k, 3, c_out)))

    def reference(x, kernel):
        return jax.lax.conv_general_dilated(x, kernel, (s, s), ((p, p), (p, p)),
                                            dimension_numbers=("NHWC", "HWIO", "NHWC"))
    np.testing.assert_allclose(conv(x, kernel, s, p, platform), reference(x, kernel), rtol=1e-12, atol=1e-12)
    grads = jax.grad(lambda x, w: jnp.sum(jnp.sin(conv(x, w, s, p, platform))), (0, 1))(x, kernel)
    expected = jax.grad(lambda x, w: jnp.sum(jnp.sin(reference(x, w))), (0, 1))(x, kernel)
    for g, e in zip(grads, expected):
        np.testing.assert_allclose(g, e, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_stored_once_is_the_identity_bit_for_bit(dtype):
    """The division by a ones tensor that keeps XLA:CPU from recomputing activations changes no bit,
    forward or backward, including -0 and values far from 1 (subnormals are not kept: XLA:CPU
    flushes them to zero in any arithmetic, the BatchNorm before this included)."""
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.standard_normal(60) * 10.0 ** rng.integers(-30, 30, 60),
                             [0.0, -0.0, 2e-38, -3e38, 7.0, 1.0]]).reshape(2, 3, 11, 1)
    a = jnp.asarray(values, dtype)
    like = jnp.asarray(rng.standard_normal(a.shape) * 1e6, dtype)
    out, vjp = jax.vjp(lambda a: stored_once(a, like), a)
    assert out.dtype == a.dtype and np.array_equal(np.asarray(out).view(np.uint8), np.asarray(a).view(np.uint8))
    (grad,) = vjp(a)
    assert np.array_equal(np.asarray(grad).view(np.uint8), np.asarray(a).view(np.uint8))


@pytest.mark.parametrize("platform", ["cpu", "gpu"])
def test_channel_sum_equals_a_float64_sum(x64, platform):
    rng = np.random.default_rng(1)
    a = rng.standard_normal((100, 7, 7, 5)) * 3 + 2
    expected = a.sum((0, 1, 2))
    np.testing.assert_allclose(channel_sum(jnp.asarray(a), platform=platform), expected, rtol=1e-13)
    np.testing.assert_allclose(channel_sum(jnp.asarray(a, jnp.float32), platform=platform), expected, rtol=2e-6)


def lowered_ops(f, *args, platform: str) -> collections.Counter:
    """StableHLO op counts of `f` lowered for `platform`; lowering needs no such device (CI has none)."""
    text = jax.jit(f).trace(*args).lower(lowering_platforms=(platform,)).as_text()
    return collections.Counter(re.findall(r"stablehlo\.(\w+)", text))


def test_each_backend_is_lowered_with_its_own_forms():
    """A GPU program gets lax's convolution and fused reductions, the CPU one the matmul forms: the
    platform_dependent choices are wired the right way round (the tests above run the CPU forms)."""
    x, kernel, a = jnp.ones((2, 7, 7, 3)), jnp.ones((3, 3, 3, 1)), jnp.ones((4, 5, 5, 3))
    one_channel = jax.grad(lambda x, k: jnp.sum(jnp.sin(conv(x, k, 1, 1))), (0, 1))
    gpu, cpu = (lowered_ops(one_channel, x, kernel, platform=p) for p in ("cuda", "cpu"))
    assert gpu["convolution"] == 3 and cpu["convolution"] == 0 and cpu["dot_general"] == 3
    gpu, cpu = (lowered_ops(channel_sum, a, platform=p) for p in ("cuda", "cpu"))
    assert gpu["reduce"] == 1 and gpu["dot_general"] == 0 and cpu["dot_general"] == 2
    gpu, cpu = (lowered_ops(stored_once, a, a, platform=p) for p in ("cuda", "cpu"))
    assert gpu["divide"] == 0 and cpu["divide"] == 1
