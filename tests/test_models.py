"""The flax modules against the reference tables (docs/tutorial.md)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dcgan_jax import Discriminator, Generator

# The tutorial's layers in its own terms: (kind, in, out, kernel, stride).
G_TABLE = [("T", 10, 256, 4, 2), ("C", 256, 128, 3, 1), ("T", 128, 256, 4, 1), ("T", 256, 256, 4, 2),
           ("T", 256, 128, 4, 1), ("T", 128, 128, 4, 2), ("C", 128, 128, 3, 1), ("T", 128, 64, 4, 2),
           ("C", 64, 64, 3, 1), ("C", 64, 64, 3, 1)]
D_TABLE = [("C", 1, 32, 3, 2), ("C", 32, 64, 3, 1), ("C", 64, 128, 3, 2), ("C", 128, 128, 3, 2),
           ("C", 128, 64, 3, 2)]


def torch_out_size(size, kind, k, s):
    p = (k - 1) // 2
    return (size - 1) * s - 2 * p + k if kind == "T" else (size + 2 * p - k) // s + 1


def table_param_count(table, head):
    blocks = sum(k * k * i * o + 2 * o for _, i, o, k, _ in table)  # bias-free conv + BN scale/bias
    return blocks + head


@pytest.fixture(scope="module")
def variables():
    # the init program create_train_state compiles (float32, latent 10): one compilation per session
    from dcgan_jax.train import _init_variables
    return _init_variables(10, "float32", jax.random.key(0))


def count(tree):
    return sum(x.size for x in jax.tree.leaves(tree))


def test_param_counts_match_the_tutorial(variables):
    g_vars, d_vars = variables
    g_expected = table_param_count(G_TABLE, head=64 * 1 * 3 * 3 + 1)   # last Conv2d with bias
    d_expected = table_param_count(D_TABLE, head=64 * 2 + 2)           # Linear(64, 2)
    assert (g_expected, d_expected) == (3_050_945, 314_594)
    assert count(g_vars["params"]) == g_expected
    assert count(d_vars["params"]) == d_expected


def _block_outputs(module, variables, x):
    _, state = module.apply(variables, x, train=True, mutable=["batch_stats", "intermediates"],
                            capture_intermediates=True)
    inter = state["intermediates"]
    names = sorted(k for k in inter if k not in ("__call__",))
    return [inter[n]["__call__"][0].shape for n in names], inter["__call__"][0].shape


def test_generator_shape_chain(variables):
    g_vars, _ = variables
    shapes, out = _block_outputs(Generator(), g_vars, jnp.ones((3, 10)))
    spatial = [1]
    for kind, _, o, k, s in G_TABLE:
        spatial.append(torch_out_size(spatial[-1], kind, k, s))
    spatial.append(spatial[-1])  # the final 3x3 conv keeps the size
    assert spatial == [1, 2, 2, 3, 6, 7, 14, 14, 28, 28, 28, 28]
    assert [s[1] for s in shapes] == spatial[1:]
    assert [s[3] for s in shapes] == [o for *_, o, _k, _s in G_TABLE] + [1]
    assert out == (3, 28, 28, 1)


def test_discriminator_shape_chain(variables):
    _, d_vars = variables
    shapes, out = _block_outputs(Discriminator(), d_vars, jnp.ones((3, 28, 28, 1)))
    spatial = [28]
    for kind, _, o, k, s in D_TABLE:
        spatial.append(torch_out_size(spatial[-1], kind, k, s))
    assert spatial + [1, 2] == [28, 14, 14, 7, 4, 2, 1, 2]
    assert [s[1] for s in shapes[:5]] == spatial[1:]
    assert [s[3] for s in shapes[:5]] == [o for *_, o, _k, _s in D_TABLE]
    assert out == (3, 2)


@pytest.mark.slow  # two more forward compilations
def test_latent_layouts_agree_and_bad_shape_is_named(variables):
    g_vars, _ = variables
    z = jax.random.normal(jax.random.key(2), (4, 10))
    a = Generator().apply(g_vars, z, train=False)
    b = Generator().apply(g_vars, z.reshape(4, 1, 1, 10), train=False)
    np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="latent|z of shape"):
        Generator().apply(g_vars, jnp.ones((4, 12)), train=False)


def _within(sample, mean, std, sigmas=5):
    """Sample mean and std agree with N(mean, std) within `sigmas` standard errors."""
    n = sample.size
    assert abs(sample.mean() - mean) < sigmas * std / np.sqrt(n)
    assert abs(sample.std() - std) < sigmas * std / np.sqrt(2 * n)


def test_reference_initialisation(variables):
    g_vars, d_vars = variables
    kernels = [np.asarray(v) for path, v in jax.tree_util.tree_leaves_with_path(
        (g_vars["params"], d_vars["params"])) if "kernel" in jax.tree_util.keystr(path)
        and "fc" not in jax.tree_util.keystr(path)]
    assert len(kernels) == 10 + 1 + 5
    _within(np.concatenate([k.ravel() for k in kernels]), 0.0, 0.02)
    bns = [m["bn"] for m in list(g_vars["params"].values()) + list(d_vars["params"].values()) if "bn" in m]
    assert len(bns) == 15
    _within(np.concatenate([np.asarray(b["scale"]) for b in bns]), 1.0, 0.02)
    assert all(np.all(np.asarray(b["bias"]) == 0) for b in bns)
    # PyTorch defaults: U(-1/sqrt(fan_in), 1/sqrt(fan_in)); std of U(-a, a) is a / sqrt(3).
    for values, fan_in in ((d_vars["params"]["fc"]["kernel"], 64), (d_vars["params"]["fc"]["bias"], 64),
                           (g_vars["params"]["layer4_3"]["bias"], 576)):
        assert np.abs(np.asarray(values)).max() <= 1 / np.sqrt(fan_in)
    fc = np.asarray(d_vars["params"]["fc"]["kernel"])
    assert abs(fc.std() - (1 / 8) / np.sqrt(3)) < 0.3 * (1 / 8) / np.sqrt(3)  # 128 samples


def test_batchnorm_follows_pytorch_semantics(variables):
    """Train mode: batch statistics, running var updated with the *unbiased* variance, momentum
    0.1 in PyTorch's convention; eval mode: running statistics."""
    _, d_vars = variables
    x = jax.random.uniform(jax.random.key(3), (5, 28, 28, 1))
    _, upd = Discriminator().apply(d_vars, x, train=True, mutable=["batch_stats"])
    # conv_0's BatchNorm sees conv_0's output; recompute it with lax and numpy statistics.
    kernel = d_vars["params"]["conv_0"]["conv"]["kernel"]
    h = np.asarray(jax.lax.conv_general_dilated(x, kernel, (2, 2), ((1, 1), (1, 1)),
                                                dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                                precision="highest"), np.float64)
    flat = h.reshape(-1, h.shape[-1])
    stats = upd["batch_stats"]["conv_0"]["bn"]
    np.testing.assert_allclose(stats["mean"], 0.1 * flat.mean(0), rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(stats["var"], 0.9 + 0.1 * flat.var(0, ddof=1), rtol=1e-5)
    # eval mode is deterministic in the batch: each sample's logits do not depend on the others
    both = Discriminator().apply(d_vars, x[:2], train=False)
    one = Discriminator().apply(d_vars, x[:1], train=False)
    np.testing.assert_allclose(both[:1], one, rtol=1e-5, atol=1e-6)
    train_one = Discriminator().apply(d_vars, x[:2], train=True, mutable=["batch_stats"])[0]
    assert not np.allclose(train_one, both)


@pytest.mark.parametrize("kernels", ["flax", "xla", "cpu"])
@pytest.mark.parametrize("dtype", ["float64", pytest.param("bfloat16", marks=pytest.mark.slow)])
def test_batchnorm_gradient_is_the_textbook_one(dtype, kernels):
    """models.BatchNorm's autodiff and kernels.BatchNorm's closed-form VJP equal autodiff through
    the textbook formula: in float64 to rounding; in bfloat16 compute (float32 statistics and
    params) to bfloat16 precision."""
    from dcgan_jax.kernels import select
    BatchNorm = select(kernels).batch_norm
    jax.config.update("jax_enable_x64", True)
    try:
        param_dtype = jnp.float64 if dtype == "float64" else jnp.float32
        rng = np.random.default_rng(0)
        x = jnp.asarray(rng.standard_normal((4, 5, 5, 3)) * 2 + 1, param_dtype).astype(dtype)
        params = {"scale": jnp.asarray(rng.standard_normal(3), param_dtype),
                  "bias": jnp.asarray(rng.standard_normal(3), param_dtype)}
        bn = BatchNorm(dtype=dtype, param_dtype=param_dtype)
        stats = bn.init(jax.random.key(0), x, True)["batch_stats"]
        weights = jnp.asarray(rng.standard_normal(x.shape) + 1, param_dtype)  # sum(dy) matters

        def loss(params, x):
            y, _ = bn.apply({"params": params, "batch_stats": stats}, x, True, mutable=["batch_stats"])
            return jnp.sum(jnp.sin(y.astype(param_dtype)) * weights)

        def textbook(params, x):
            xs = x.astype(param_dtype)
            mean = xs.mean((0, 1, 2))
            var = jnp.square(xs - mean).mean((0, 1, 2))
            y = (xs - mean) / jnp.sqrt(var + 1e-5) * params["scale"] + params["bias"]
            return jnp.sum(jnp.sin(y) * weights)

        got = jax.grad(loss, (0, 1))(params, x)
        want = jax.grad(textbook, (0, 1))(params, x)
        tol = 1e-12 if dtype == "float64" else 3e-2
        for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
            assert g.dtype == w.dtype
            np.testing.assert_allclose(np.asarray(g, np.float64), np.asarray(w, np.float64),
                                       rtol=tol, atol=tol * float(jnp.abs(w).max()))
    finally:
        jax.config.update("jax_enable_x64", False)
