"""Training functions: purity, keys, epoch loop strategies, order/k options, schedule, dtypes."""
import dataclasses
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from dcgan_jax import Config, create_train_state, learning_rate, train_epoch, train_step
from dcgan_jax.config import PRESETS
from dcgan_jax.train import build_optimizers, jitted_train_step, lr_schedule, scale_images

BATCH = 8


def tiny(**kw):
    return Config(batch_size=BATCH, **kw).for_dataset(32)


@pytest.fixture(scope="module")
def images():
    return jnp.asarray(np.random.default_rng(0).integers(0, 256, (32, 28, 28, 1), dtype=np.uint8))


@pytest.fixture(scope="module")
def state():
    # The tutorial's order with k=2 D steps: one compiled program covers both options.
    return create_train_state(tiny(order="g_then_d", d_steps=2), jax.random.key(0))


def leaves_equal(a, b):
    return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_train_step_is_pure_key_driven_and_counts_d_steps(state, images):
    key = jax.random.key(1)
    s1, m1 = train_step(state, images[:BATCH], key)
    s2, m2 = train_step(state, images[:BATCH], key)
    assert leaves_equal((s1, m1), (s2, m2))           # same inputs -> bitwise same outputs
    s3, m3 = train_step(state, images[:BATCH], jax.random.key(2))
    assert float(m3["loss_g"]) != float(m1["loss_g"])  # another key -> other noise
    assert not leaves_equal(s1.g_params, s3.g_params)
    assert int(s1.step) == 1 and int(state.step) == 0  # the input state is untouched
    assert all(np.isfinite(float(v)) for v in m1.values())
    assert 0 < float(m1["d_real"]) < 1 and 0 < float(m1["d_fake"]) < 1
    # k discriminator updates per generator update
    counts = lambda opt: {int(leaf) for _, leaf in optax.tree_utils.tree_get_all_with_path(opt, "count")}
    assert counts(s1.g_opt) == {1} and counts(s1.d_opt) == {2}


@pytest.mark.slow
def test_scanned_epoch_equals_loop_of_steps_and_a_resumed_epoch_its_rest(images):
    """Same batches and keys either way. Different programs round differently in float32, so
    compare in float64 (docs/tutorial.md#parity-notes). An epoch started at step k (a run resumed
    mid-epoch) runs exactly the whole epoch's steps k.. from the state after step k - 1."""
    with jax.enable_x64(True):
        config = Config(batch_size=4, steps_per_epoch=3, dtype="float64").for_dataset(32)
        state = create_train_state(config, jax.random.key(0))
        key = jax.random.key(3)
        after = {}
        looped, m_loop = train_epoch(state, images, key, loop="steps", on_step=lambda i, s, m: after.setdefault(i, s))
        from dcgan_jax.train import epoch_plan
        idx, keys = epoch_plan(key, 32, 3, 4)
        manual = state
        for i in range(3):
            manual, _ = train_step(manual, images[idx[i]], keys[i])
            assert leaves_equal(after[i], manual)      # on_step gets the state after step i
        assert leaves_equal(looped, manual)            # the loop is exactly these train_step calls
        rest, m_rest = train_epoch(after[0], images, key, loop="steps", start=1)
        assert leaves_equal(rest, looped)
        assert leaves_equal(m_rest, jax.tree.map(lambda m: m[1:], m_loop))
        # one scanned program (they compile slowly in float64): the same code runs any start
        scanned_rest, m_scan_rest = train_epoch(after[0], images, key, loop="scan", start=1)
        for a, b in zip(jax.tree.leaves((looped, jax.tree.map(lambda m: m[1:], m_loop))),
                        jax.tree.leaves((scanned_rest, m_scan_rest))):
            # a wrong batch or key moves values by ~1e-2; float64 rounding, up to ~2e-12 near 0
            np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-10)
        with pytest.raises(ValueError, match="start=3: an epoch has steps 0..2"):
            train_epoch(state, images, key, start=3)


def test_step_lr_schedule_matches_steplr():
    config = Config(steps_per_epoch=7)
    for epoch in range(1, 21):
        torch_steplr = 2e-4 * 0.5 ** ((epoch - 1) // 5)   # StepLR(step_size=5, gamma=0.5), stepped per epoch
        assert learning_rate(config, epoch) == pytest.approx(torch_steplr, rel=1e-6)
    assert [learning_rate(config, e) for e in (1, 6, 11, 16)] == pytest.approx([2e-4, 1e-4, 5e-5, 2.5e-5], rel=1e-6)
    # the discriminator's schedule counts its d_steps updates per iteration
    d_sched = lr_schedule(Config(steps_per_epoch=7, d_steps=3), 3 * 7)
    assert float(d_sched(5 * 7 * 3 - 1)) == pytest.approx(2e-4) and float(d_sched(5 * 7 * 3)) == pytest.approx(1e-4)


def _adam_step_sizes(tx, updates: int):
    """|update| of each of `updates` Adam steps on a constant gradient 1: m_hat = v_hat = 1, so
    each update is the learning rate in force (times 1 / (1 + eps), eps = 1e-8)."""
    params, grad = {"w": jnp.zeros(())}, {"w": jnp.ones(())}
    opt, sizes = tx.init(params), []
    for _ in range(updates):
        update, opt = tx.update(grad, opt, params)
        sizes.append(-float(update["w"]))
    return np.array(sizes)


def test_each_optimizer_halves_its_lr_every_five_epochs_of_its_own_updates():
    """StepLR(5, 0.5) per epoch: G makes steps_per_epoch updates per epoch, D d_steps times as many."""
    steps_per_epoch, d_steps = 2, 3
    g_tx, d_tx = build_optimizers(Config(steps_per_epoch=steps_per_epoch, d_steps=d_steps))
    for tx, per_epoch in ((g_tx, steps_per_epoch), (d_tx, d_steps * steps_per_epoch)):
        n = 6 * per_epoch       # epochs 1-6: the first halving comes with epoch 6
        epochs = np.arange(n) // per_epoch + 1
        expected = 2e-4 * 0.5 ** ((epochs - 1) // 5)
        np.testing.assert_allclose(_adam_step_sizes(tx, n), expected, rtol=1e-3)  # float32 bias corrections


def test_config_defaults_are_the_tutorials_facts():
    """docs/tutorial.md#training-loop; the default order is D-then-G, the reference preset the tutorial's."""
    c = Config()
    assert (c.latent_dim, c.batch_size, c.epochs, c.d_steps) == (10, 100, 20, 1)
    assert (c.lr, c.beta1, c.beta2) == (2e-4, 0.5, 0.999)                 # Adam(lr=2e-4, betas=(0.5, 0.999))
    assert (c.lr_decay_every, c.lr_decay) == (5, 0.5)                     # StepLR(step_size=5, gamma=0.5)
    assert c.data_range == "zero_one"                                     # ToTensor(): [0, 1]
    assert c.samples_bn == "batch" and c.num_samples == 16                # never .eval(); a 4 x 4 grid
    assert c.order == "d_then_g"
    assert PRESETS["reference"] == dataclasses.replace(c, order="g_then_d")


def test_data_range_scaling():
    pixels = jnp.array([0, 255], jnp.uint8)
    np.testing.assert_allclose(scale_images(pixels, Config()), [0, 1])
    np.testing.assert_allclose(scale_images(pixels, Config(data_range="minus_one_one")), [-1, 1])


@pytest.mark.slow
def test_bfloat16_compute_keeps_float32_params(images):
    s = create_train_state(tiny(dtype="bfloat16"), jax.random.key(0))
    s, m = train_step(s, images[:BATCH], jax.random.key(1))
    assert {x.dtype for x in jax.tree.leaves((s.g_params, s.d_params, s.g_stats, s.d_stats))} == {jnp.dtype("float32")}
    assert all(np.isfinite(float(v)) for v in m.values())


def ynnpack_convolutions(hlo: str) -> int:
    """Convolutions inside the YNNPACK fusions of a compiled XLA:CPU module's text."""
    ynn = set(re.findall(r"calls=(%[\w.\-]+).*\"kind\":\"__ynn_fusion\"", hlo))
    bodies = dict(re.findall(r"^(%[\w.\-]+) \(.*?\{\n(.*?)\n\}", hlo, re.M | re.S))
    return sum(bodies.get(name, "").count(" convolution(") for name in ynn)


@pytest.mark.perf
@pytest.mark.slow
def test_cpu_step_keeps_convolutions_out_of_ynnpack(state, images):
    """The step compiles with kernels.STEP_JIT_KWARGS: on jaxlib >= 0.9 XLA:CPU would otherwise hand
    its convolutions to YNNPACK, whose weight gradients are slow (docs/performance.md)."""
    from dcgan_jax.kernels import STEP_JIT_KWARGS, _jaxlib_version
    if jax.default_backend() != "cpu" or _jaxlib_version() < (0, 9):
        pytest.skip("the option exists for XLA:CPU from jaxlib 0.9")
    hlo = jitted_train_step.lower(state, images[:BATCH], jax.random.key(1)).compile().as_text()
    assert STEP_JIT_KWARGS and " convolution(" in hlo
    assert ynnpack_convolutions(hlo) == 0


def test_configs_that_differ_in_training_settings_share_one_init_program(state):
    """The init's many threefry calls are slow to compile on XLA:CPU: a config that changes only
    how training runs must reuse the compiled init and get the same networks."""
    from dcgan_jax.train import _init_program
    program = _init_program(jax.default_backend())
    compiled = program._cache_size()
    other = create_train_state(tiny(order="d_then_g", lr=1e-3, epochs=3, seed=5, kernels="flax"), jax.random.key(0))
    assert program._cache_size() == compiled
    assert leaves_equal((other.g_params, other.d_params, other.g_stats), (state.g_params, state.d_params, state.g_stats))
    assert other.config.lr == 1e-3 and state.config.lr != 1e-3


@pytest.mark.slow
def test_the_faster_compiled_init_gives_the_default_compilations_bits():
    """On the CPU the init is compiled at LLVM -O2 to shorten every cold start, on the claim that it
    computes the same bits as XLA's default -O3 (it has no float reductions to reorder); checked against the
    default compilation (the reference preset's float32 init)."""
    from dcgan_jax.train import _init_variables_fn
    key = jax.random.key(0)
    ours = create_train_state(tiny(), key)
    g_vars, d_vars = jax.jit(_init_variables_fn, static_argnums=(0, 1))(ours.config.latent_dim, ours.config.dtype, key)
    assert leaves_equal((g_vars, d_vars), (ours.generator_variables, ours.discriminator_variables))


@pytest.mark.slow
def test_gpu_epoch_program_lowers_without_a_gpu(state, images):
    """CI has no GPU: the scanned epoch (the GPU's loop, the step inside) must still lower for one."""
    from dcgan_jax.train import epoch_programs, mesh_of
    _, _, scan = epoch_programs(mesh_of(images))
    key_data = np.asarray(jax.random.key_data(jax.random.key(1)))
    text = scan.trace(state, images, key_data, 0).lower(lowering_platforms=("cuda",)).as_text()
    assert "stablehlo.while" in text and "stablehlo.convolution" in text


@pytest.mark.perf
@pytest.mark.slow
def test_fit_compiles_what_its_epochs_run_while_initialising_and_nothing_after(tmp_path, caplog):
    """fit compiles the first epoch's programs and the sampling program in other threads while the
    networks initialise (startup.py). The epochs must then run those programs, not compile their
    own (as they would if the abstract state's shardings differed from the real state's), and
    nothing may compile once the first epoch started: on a cold start the device would idle."""
    from dcgan_jax.data import Dataset
    from dcgan_jax.run import fit
    images = np.random.default_rng(0).integers(0, 256, (12, 28, 28, 1), dtype=np.uint8)
    config = Config(batch_size=6, epochs=2, steps_per_epoch=2, loop="steps")  # a batch no other test compiles
    started = []
    jax.config.update("jax_log_compiles", True)  # globally: a `with` context is the thread's own
    try:
        with caplog.at_level("WARNING"):
            fit(config, str(tmp_path / "run"), progress=False, data=Dataset(images, np.zeros(12, np.uint8), "test", None),
                log=lambda line: "epochs 1..2" in line and started.append(len(caplog.records)))
    finally:
        jax.config.update("jax_log_compiles", False)
    compiles = [(i, r.threadName, m[1]) for i, r in enumerate(caplog.records)
                if (m := re.match(r"Finished XLA compilation of jit\((\w+)\)", r.getMessage()))]
    assert started and compiles and not [c for c in compiles if c[0] > started[0]], compiles
    for program in ("step", "plan", "generator_output", "stack_metrics"):
        threads = [thread for _, thread, name in compiles if name == program]
        # stack_metrics' program (4 metrics of 2 steps) may be compiled already by an earlier test
        assert (len(threads) == 1 or program == "stack_metrics" and not threads), (program, compiles)
        assert all(thread.startswith("compile") for thread in threads), (program, compiles)
