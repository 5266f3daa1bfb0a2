"""dcgan_jax/kernels.py computes what models.py's flax layers compute: each form alone and the
whole networks, values and gradients, in float64."""
import collections
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dcgan_jax import kernels
from dcgan_jax.kernels import CPU_FORMS, XLA_FORMS, conv, conv_transpose, divide_by_runtime_one
from dcgan_jax.models import Discriminator, Generator

# The CPU's forms in the fast tier (they run here), the accelerators' in the full suite.
FORMS = pytest.mark.parametrize("forms", [pytest.param(XLA_FORMS, marks=pytest.mark.slow), CPU_FORMS],
                                ids=["xla", "cpu"])


def slow(*values):
    return pytest.param(*values, marks=pytest.mark.slow)


@pytest.fixture
def x64():
    with jax.enable_x64(True):
        yield


def _conv_transpose_reference(x, kernel, stride, pad):
    """lax.conv_transpose with flax's kernel layout (transpose_kernel=False)."""
    return jax.lax.conv_transpose(x, kernel, (stride, stride), ((pad, pad),) * 2,
                                  dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _assert_same_value_and_grads(f, reference, *args):
    np.testing.assert_allclose(f(*args), reference(*args), rtol=1e-12, atol=1e-12)
    argnums = tuple(range(len(args)))
    grads = jax.grad(lambda *a: jnp.sum(jnp.sin(f(*a))), argnums)(*args)
    expected = jax.grad(lambda *a: jnp.sum(jnp.sin(reference(*a))), argnums)(*args)
    for g, e in zip(grads, expected):
        np.testing.assert_allclose(g, e, rtol=1e-12, atol=1e-12)


# (kernel, stride, PyTorch padding, input size): the tutorial's transposed layers (1->2, 3->6,
# 7->14, 14->28 at stride 2; 2->3, 6->7 at stride 1), other shapes the stride divides, and one it
# does not (5->12 at stride 3).
@FORMS
@pytest.mark.parametrize("k,s,p,n", [(4, 2, 1, 3), slow(4, 2, 1, 1), slow(4, 2, 1, 7), (4, 1, 1, 2), slow(4, 1, 1, 6),
                                     slow(2, 2, 0, 4), slow(6, 3, 0, 3), slow(3, 3, 0, 2), slow(3, 3, 1, 4)])
def test_transposed_conv_equals_dilated(x64, forms, k, s, p, n):
    rng = np.random.default_rng(k * 100 + n)
    x, kernel = jnp.asarray(rng.standard_normal((2, n, n, 3))), jnp.asarray(rng.standard_normal((k, k, 3, 4)))
    pad = k - 1 - p
    _assert_same_value_and_grads(lambda x, w: conv_transpose(x, w, s, pad, forms),
                                 lambda x, w: _conv_transpose_reference(x, w, s, pad), x, kernel)


@pytest.mark.parametrize("padding", [((1, 1), (2, 0)), ((2, -1), (0, 1))])
def test_asymmetric_and_negative_padding(x64, padding):
    """The phases of a transposed convolution pass uneven (possibly negative: cropping) padding."""
    rng = np.random.default_rng(0)
    x, kernel = jnp.asarray(rng.standard_normal((2, 5, 5, 3))), jnp.asarray(rng.standard_normal((3, 3, 3, 2)))
    expected = jax.lax.conv_general_dilated(x, kernel, (1, 1), padding, dimension_numbers=("NHWC", "HWIO", "NHWC"))
    np.testing.assert_allclose(conv(x, kernel, 1, padding, CPU_FORMS), expected, rtol=1e-12)


# conv() picks a form per shape: patches x matmul where the kernel is wider than the output
# (layer1_1, layer2_0, D's conv_4), a split weight gradient where the output is larger than the
# input (layer3_0), a matmul to per-tap planes for one output channel (layer4_3), plain lax
# otherwise; each must be the textbook convolution, values and gradients.
@FORMS
@pytest.mark.parametrize("n,k,s,p,c_out", [(2, 3, 1, 1, 4), (2, 4, 1, 2, 4), slow(4, 3, 2, 1, 4), (6, 4, 1, 2, 4),
                                           slow(14, 3, 1, 1, 4), slow(14, 3, 2, 1, 4), slow(7, 3, 2, 1, 4),
                                           slow(5, 3, 1, 0, 4), (7, 3, 1, 1, 1), slow(6, 4, 1, 2, 1), slow(5, 3, 1, 0, 1),
                                           slow(7, 3, 2, 1, 1)])
def test_conv_forms_equal_lax(x64, forms, n, k, s, p, c_out):
    rng = np.random.default_rng(n * 100 + k * 10 + p)
    x, kernel = jnp.asarray(rng.standard_normal((2, n, n, 3))), jnp.asarray(rng.standard_normal((k, k, 3, c_out)))
    padding = ((p, p), (p, p))
    _assert_same_value_and_grads(
        lambda x, w: conv(x, w, s, padding, forms),
        lambda x, w: jax.lax.conv_general_dilated(x, w, (s, s), padding, dimension_numbers=("NHWC", "HWIO", "NHWC")),
        x, kernel)


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
    out, vjp = jax.vjp(lambda a: divide_by_runtime_one(a, like), a)
    assert out.dtype == a.dtype and np.array_equal(np.asarray(out).view(np.uint8), np.asarray(a).view(np.uint8))
    (grad,) = vjp(a)
    assert np.array_equal(np.asarray(grad).view(np.uint8), np.asarray(a).view(np.uint8))


@FORMS
def test_channel_sum_equals_a_float64_sum(x64, forms):
    rng = np.random.default_rng(1)
    a = rng.standard_normal((100, 7, 7, 5)) * 3 + 2
    expected = a.sum((0, 1, 2))
    np.testing.assert_allclose(forms.channel_sum(jnp.asarray(a)), expected, rtol=1e-13)
    np.testing.assert_allclose(forms.channel_sum(jnp.asarray(a, jnp.float32)), expected, rtol=2e-6)


def _train_and_eval_mode(net, variables, x):
    """Both modes of `net`, jitted: train mode's output, BatchNorm statistics and the gradient of
    every parameter; eval mode's output."""
    def loss(params):
        out, stats = net.apply({**variables, "params": params}, x, train=True, mutable=["batch_stats"])
        return jnp.sum(jnp.sin(3 * out)), (out, stats)
    return jax.jit(lambda v: (jax.grad(loss, has_aux=True)(v["params"]), net.apply(v, x, train=False)))(variables)


@pytest.fixture(scope="module")
def flax_networks():
    """Both networks in float64 with flax's own layers: (maker, variables, input, both modes)."""
    with jax.enable_x64(True):
        rng = np.random.default_rng(2)
        z, images = jnp.asarray(rng.standard_normal((4, 10))), jnp.asarray(rng.random((4, 28, 28, 1)))
        cases = []
        for make, x in ((lambda k: Generator(param_dtype=jnp.float64, kernels=k), z),
                        (lambda k: Discriminator(param_dtype=jnp.float64, kernels=k), images)):
            variables = make(kernels.select("flax")).init(jax.random.key(0), x, train=False)
            cases.append((make, variables, x, _train_and_eval_mode(make(kernels.select("flax")), variables, x)))
        return cases


@pytest.mark.slow
@pytest.mark.parametrize("name", ["xla", "cpu"])
def test_networks_with_each_kernel_set_equal_flax_layers(x64, flax_networks, name):
    """Both networks, train mode (outputs, BatchNorm statistics, gradients of every parameter)
    and eval mode, against the same networks built from flax's own layers."""
    for make, variables, x, expected in flax_networks:
        net = make(kernels.select(name))
        assert jax.tree.map(jnp.shape, net.init(jax.random.key(0), x, train=False)) == jax.tree.map(jnp.shape, variables)
        got = _train_and_eval_mode(net, variables, x)
        assert jax.tree.structure(got) == jax.tree.structure(expected)
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(expected)):
            np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


def test_select_resolves_auto_from_the_backend():
    assert kernels.resolve("auto") == ("cpu" if jax.default_backend() == "cpu" else "xla")
    assert kernels.select("cpu") is kernels.CPU and kernels.select("xla") is kernels.XLA
    assert kernels.select("flax") == Generator().kernels
    with pytest.raises(ValueError, match="kernels='gpu'"):
        kernels.resolve("gpu")


def lowered_ops(f, *args) -> collections.Counter:
    text = jax.jit(f).trace(*args).lower().as_text()
    return collections.Counter(re.findall(r"stablehlo\.(\w+)", text))


@pytest.mark.perf
@pytest.mark.slow
def test_each_set_lowers_to_its_own_forms():
    """The "xla" set keeps lax's convolution and fused reductions, the "cpu" set gets the matmul
    forms (the tests above check that both compute the same)."""
    x, kernel, a = jnp.ones((2, 7, 7, 3)), jnp.ones((3, 3, 3, 1)), jnp.ones((4, 5, 5, 3))
    one_channel = lambda forms: jax.grad(lambda x, k: jnp.sum(jnp.sin(conv(x, k, 1, ((1, 1),) * 2, forms))), (0, 1))
    xla, cpu = (lowered_ops(one_channel(forms), x, kernel) for forms in (XLA_FORMS, CPU_FORMS))
    assert xla["convolution"] == 3 and cpu["convolution"] == 0 and cpu["dot_general"] == 3
    xla, cpu = (lowered_ops(forms.channel_sum, a) for forms in (XLA_FORMS, CPU_FORMS))
    assert xla["reduce"] == 1 and xla["dot_general"] == 0 and cpu["dot_general"] == 2
    xla, cpu = (lowered_ops(forms.stored_once, a, a) for forms in (XLA_FORMS, CPU_FORMS))
    assert xla["divide"] == 0 and cpu["divide"] == 1
