"""Pure training functions: a TrainState pytree in, a new TrainState and metrics out.

Every function here is deterministic given its inputs; all randomness comes from the keys passed
in, split explicitly. The static half of the state (`config`) rides in the pytree's treedef, so
`train_step(state, real_batch, key)` needs no other argument and recompiles only if it changes.
"""
import atexit
import functools
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from . import kernels
from .config import Config, ConfigError
from .losses import discriminator_loss, generator_loss, prob_real
from .models import Discriminator, Generator

_COMPUTE = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float64": jnp.float64}


@struct.dataclass
class TrainState:
    step: jax.Array          # completed iterations (generator updates)
    g_params: Any
    g_stats: Any             # generator BatchNorm running statistics
    d_params: Any
    d_stats: Any
    g_opt: Any               # optax states
    d_opt: Any
    config: Config = struct.field(pytree_node=False)

    @property
    def generator_variables(self):
        return {"params": self.g_params, "batch_stats": self.g_stats}

    @property
    def discriminator_variables(self):
        return {"params": self.d_params, "batch_stats": self.d_stats}


def param_dtype(config: Config):
    return jnp.float64 if config.dtype == "float64" else jnp.float32


def build_models(config: Config):
    """The generator and discriminator for `config`, built from the layer forms config.kernels
    selects (kernels.select: the same values in any form)."""
    dtype, pdtype, layers = _COMPUTE[config.dtype], param_dtype(config), kernels.select(config.kernels)
    return (Generator(config.latent_dim, dtype=dtype, param_dtype=pdtype, kernels=layers),
            Discriminator(dtype=dtype, param_dtype=pdtype, kernels=layers))


def lr_schedule(config: Config, updates_per_epoch: int) -> optax.Schedule:
    """StepLR(step_size=lr_decay_every epochs, gamma=lr_decay) over optimizer updates."""
    schedule = optax.exponential_decay(config.lr, transition_steps=config.lr_decay_every * updates_per_epoch,
                                       decay_rate=config.lr_decay, staircase=True)
    # optax derives the rate from the int32 update count in float32; a float64 run needs it in
    # float64 (a float32-rounded 2e-4 is 2.5e-8 off, which Adam's first steps amplify).
    return lambda count: schedule(jnp.asarray(count, param_dtype(config)))


def build_optimizers(config: Config):
    """Adam for G and for D; D updates d_steps times per iteration, so its schedule counts so."""
    if config.steps_per_epoch is None:
        raise ConfigError("steps_per_epoch is unresolved: call config.for_dataset(num_examples)")
    adam = lambda n: optax.adam(lr_schedule(config, n * config.steps_per_epoch), config.beta1, config.beta2)
    return adam(1), adam(config.d_steps)


def learning_rate(config: Config, epoch: int) -> float:
    """The learning rate in force during `epoch` (1-based), as the tutorial's StepLR gives it."""
    return float(_learning_rate(config, epoch))


# One program, not one per op of the schedule.
@functools.partial(jax.jit, static_argnames="config")
def _learning_rate(config: Config, epoch):
    return lr_schedule(config, config.steps_per_epoch)((epoch - 1) * config.steps_per_epoch)


def create_train_state(config: Config, key) -> TrainState:
    """Initialise both networks with the reference init and fresh Adam states."""
    config = config.validate()
    if config.dtype == "float64" and not jax.config.jax_enable_x64:
        raise ConfigError("dtype='float64' needs jax.config.update('jax_enable_x64', True) first")
    build_optimizers(config)  # fails here, not inside jit, on unresolved steps_per_epoch
    g_vars, d_vars = _init_variables(config.latent_dim, config.dtype, key)
    step, g_opt, d_opt = _fresh_optimizer_states(config, g_vars["params"], d_vars["params"])
    return TrainState(step=step, g_params=g_vars["params"], g_stats=g_vars["batch_stats"],
                      d_params=d_vars["params"], d_stats=d_vars["batch_stats"], g_opt=g_opt, d_opt=d_opt,
                      config=config)


# One program, not one per zero moment of Adam.
@functools.partial(jax.jit, static_argnames="config")
def _fresh_optimizer_states(config: Config, g_params, d_params):
    g_tx, d_tx = build_optimizers(config)
    return jnp.zeros((), jnp.int32), g_tx.init(g_params), d_tx.init(d_params)


def _init_variables_fn(latent_dim: int, dtype: str, key):
    # flax's own layers: initialising traces the forward pass only for its shapes, which any
    # kernels give alike
    generator, discriminator = build_models(Config(latent_dim=latent_dim, dtype=dtype, kernels="flax"))
    g_key, d_key = jax.random.split(key)
    pdtype = param_dtype(Config(dtype=dtype))
    g_vars = generator.init(g_key, jnp.zeros((1, latent_dim), pdtype), train=False)
    d_vars = discriminator.init(d_key, jnp.zeros((1, 28, 28, 1), pdtype), train=False)
    return g_vars, d_vars


# Keyed on what the networks depend on, not the whole config: configs that differ in training
# settings share one init program. On the CPU its many unrolled threefry hashes make LLVM's -O3
# slow to compile it; -O2 compiles it into the same bits there (tests/test_train.py), for a
# program that runs once. Other backends keep their default, with nothing measured to say so.
@functools.lru_cache(maxsize=None)
def _init_program(backend: str):
    options = {"xla_backend_optimization_level": 2} if backend == "cpu" else None
    return jax.jit(_init_variables_fn, static_argnums=(0, 1), compiler_options=options)


def _init_variables(latent_dim: int, dtype: str, key):
    if isinstance(key, jax.core.Tracer):  # inside another trace (eval_shape), which owns compilation
        return _init_variables_fn(latent_dim, dtype, key)
    return _init_program(jax.default_backend())(latent_dim, dtype, key)


def scale_images(images, config: Config):
    """uint8 pixels -> the configured range in the compute dtype; float input is taken as scaled."""
    if jnp.issubdtype(images.dtype, jnp.integer):
        images = images.astype(param_dtype(config)) / 255
        if config.data_range == "minus_one_one":
            images = images * 2 - 1
    return images


def noise(key, config: Config, n: int):
    return jax.random.normal(key, (n, config.latent_dim), param_dtype(config))


def _train_step(state: TrainState, real_batch, key):
    config = state.config
    generator, discriminator = build_models(config)
    g_tx, d_tx = build_optimizers(config)
    real = scale_images(real_batch, config)
    n = real.shape[0]
    z_keys = jax.random.split(key, config.d_steps)

    def g_forward(g_params, g_stats, z):
        fake, upd = generator.apply({"params": g_params, "batch_stats": g_stats}, z, train=True,
                                    mutable=["batch_stats"])
        return fake, upd["batch_stats"]

    def d_forward(d_params, d_stats, x):
        logits, upd = discriminator.apply({"params": d_params, "batch_stats": d_stats}, x, train=True,
                                          mutable=["batch_stats"])
        return logits, upd["batch_stats"]

    def d_update(d_params, d_stats, d_opt, fake):
        # Real and fake go through D separately, real first: separate batch statistics, as the tutorial.
        def loss_fn(p):
            logits_real, stats = d_forward(p, d_stats, real)
            logits_fake, stats = d_forward(p, stats, fake)
            return discriminator_loss(logits_real, logits_fake), (stats, logits_real, logits_fake)
        (loss, (stats, lr_, lf_)), grads = jax.value_and_grad(loss_fn, has_aux=True)(d_params)
        updates, d_opt = d_tx.update(grads, d_opt, d_params)
        metrics = {"loss_d": loss, "d_real": prob_real(lr_), "d_fake": prob_real(lf_)}
        return optax.apply_updates(d_params, updates), stats, d_opt, metrics

    g_params, g_stats, d_params, d_stats = state.g_params, state.g_stats, state.d_params, state.d_stats
    g_opt, d_opt = state.g_opt, state.d_opt

    if config.order == "g_then_d":
        # The tutorial: G step first; D's BN statistics also move in this forward pass; then D
        # trains on the fake made *before* G's update (extra D steps draw fresh fakes).
        z = noise(z_keys[0], config, n)

        def g_loss_fn(p):
            fake, new_g_stats = g_forward(p, g_stats, z)
            logits, new_d_stats = d_forward(d_params, d_stats, fake)
            return generator_loss(logits), (fake, new_g_stats, new_d_stats)
        (loss_g, (fake, g_stats, d_stats)), grads = jax.value_and_grad(g_loss_fn, has_aux=True)(g_params)
        updates, g_opt = g_tx.update(grads, g_opt, g_params)
        g_params = optax.apply_updates(g_params, updates)
        fake = jax.lax.stop_gradient(fake)
        for i in range(config.d_steps):
            if i:
                fake, g_stats = g_forward(g_params, g_stats, noise(z_keys[i], config, n))
            d_params, d_stats, d_opt, metrics = d_update(d_params, d_stats, d_opt, fake)
    else:
        # D-then-G (the PyTorch DCGAN example's loop): D trains on detached fakes; G then trains
        # through the updated D on the last of those same fakes, reusing its forward pass (vjp)
        # as PyTorch reuses the graph of `fake`.
        for i in range(config.d_steps):
            z = noise(z_keys[i], config, n)
            fake, g_vjp, g_stats = jax.vjp(lambda p: g_forward(p, g_stats, z), g_params, has_aux=True)
            d_params, d_stats, d_opt, metrics = d_update(d_params, d_stats, d_opt, jax.lax.stop_gradient(fake))

        def g_loss_from_fake(x):
            logits, new_d_stats = d_forward(d_params, d_stats, x)
            return generator_loss(logits), new_d_stats
        (loss_g, d_stats), d_fake = jax.value_and_grad(g_loss_from_fake, has_aux=True)(fake)
        (grads,) = g_vjp(d_fake)
        updates, g_opt = g_tx.update(grads, g_opt, g_params)
        g_params = optax.apply_updates(g_params, updates)

    metrics = dict(metrics, loss_g=loss_g)
    new_state = state.replace(step=state.step + 1, g_params=g_params, g_stats=g_stats,
                              d_params=d_params, d_stats=d_stats, g_opt=g_opt, d_opt=d_opt)
    return new_state, jax.tree.map(lambda m: m.astype(jnp.float32), metrics)


# Not donating: callers may reuse `state` (purity tests, parity). The epoch runner donates.
jitted_train_step: Callable = jax.jit(_train_step, **kernels.STEP_JIT_KWARGS)


def train_step(state: TrainState, real_batch, key):
    """One training iteration: (state, real_batch, key) -> (state, metrics), jitted.

    real_batch: (N, 28, 28, 1) uint8 pixels (scaled by config.data_range) or floats already scaled.
    key: the noise for this iteration is drawn from it (split across the d_steps fake batches).
    metrics: loss_d, loss_g, d_real (mean D(x)), d_fake (mean D(G(z)) in the D step), float32.
    """
    _wait_at_exit()
    return jitted_train_step(state, real_batch, key)


def epoch_plan(key, num_examples: int, steps: int, batch_size: int):
    """This epoch's shuffled batch indices (steps, batch) and per-step keys, from one key."""
    perm_key, step_key = jax.random.split(key)
    idx = jax.random.permutation(perm_key, num_examples)[: steps * batch_size]
    return idx.reshape(steps, batch_size), jax.random.split(step_key, steps)


def resolve_loop(loop: str) -> str:
    """'auto' scans on accelerators; on CPU, XLA's convolution weight gradients run much slower
    inside a scan (docs/performance.md)."""
    return ("steps" if jax.default_backend() == "cpu" else "scan") if loop == "auto" else loop


def mesh_of(images) -> Mesh:
    """The device mesh an epoch over `images` runs on: their NamedSharding's, or a mesh of the one
    device they (or, for host arrays, JAX's first device) are on."""
    sharding = getattr(images, "sharding", None)
    if isinstance(sharding, NamedSharding):
        return sharding.mesh
    device = min(sharding.device_set, key=lambda d: d.id) if sharding is not None else jax.devices()[0]
    return Mesh(np.asarray([device]), ("batch",))


@functools.lru_cache(maxsize=None)
def epoch_programs(mesh: Mesh):
    """The jitted programs of an epoch on `mesh`: the plan, one step, and the scanned epoch.

    The batch is sharded over every mesh axis and everything else replicated; GSPMD partitions
    the unchanged _train_step, so BatchNorm's statistics and the gradients become all-reduces over
    the global batch and any number of devices computes what one device computes. The epoch key
    arrives as host key data, which every process of a multi-host run holds alike.
    """
    replicated, batch = NamedSharding(mesh, P()), NamedSharding(mesh, P(mesh.axis_names))

    def plan(key_data, num_examples, steps, batch_size):
        idx, keys = epoch_plan(jax.random.wrap_key_data(key_data), num_examples, steps, batch_size)
        return idx, jax.random.key_data(keys)

    def step_on(state, images, idx, key_data):
        real = jax.lax.with_sharding_constraint(images[idx], batch)
        return _train_step(state, real, jax.random.wrap_key_data(key_data))

    def step(state, images, idx, keys, i):
        return step_on(state, images, idx[i], keys[i])

    def scan(state, images, key_data, start):
        cfg = state.config
        idx, keys = plan(key_data, images.shape[0], cfg.steps_per_epoch, cfg.batch_size)
        return jax.lax.scan(lambda s, xs: step_on(s, images, *xs), state, (idx[start:], keys[start:]))

    return (jax.jit(plan, static_argnums=(1, 2, 3), out_shardings=replicated),
            jax.jit(step, out_shardings=replicated, **kernels.STEP_JIT_KWARGS),
            jax.jit(scan, static_argnums=3, donate_argnums=0, out_shardings=replicated, **kernels.STEP_JIT_KWARGS))


def train_epoch(state: TrainState, images, key, loop: Optional[str] = None,
                on_step: Optional[Callable[[int, TrainState, dict], None]] = None, start: int = 0):
    """Shuffle `images` (uint8, on the devices) with `key` and run one epoch of steps_per_epoch
    steps, on one device or, for images placed on a mesh (parallel.DataParallel), the batch
    split across its devices.

    Both loop strategies use the same batches and keys; returns (state, metrics) with each
    metric stacked over the steps run. "scan" donates `state`. start > 0 runs only the steps
    start.. of the epoch, the same ones an uninterrupted epoch runs there (a run resumed
    mid-epoch). In "steps" mode `on_step(i, state, metrics)` is called after each step i with
    the state after it.
    """
    _wait_at_exit()
    cfg = state.config
    if not 0 <= start < cfg.steps_per_epoch:
        raise ValueError(f"start={start}: an epoch has steps 0..{cfg.steps_per_epoch - 1}")
    mesh = mesh_of(images)
    # where the programs' outputs live (a no-op once they are there): the first epoch's inputs
    # then compile the same programs as every later one's
    state, images = jax.device_put((state, images), NamedSharding(mesh, P()))
    plan, step, scan = epoch_programs(mesh)
    key_data = np.asarray(jax.random.key_data(key))
    if resolve_loop(loop or cfg.loop) == "scan":
        return scan(state, images, key_data, start)
    idx, keys = plan(key_data, images.shape[0], cfg.steps_per_epoch, cfg.batch_size)
    history = []
    for i in range(start, cfg.steps_per_epoch):
        state, metrics = step(state, images, idx, keys, np.int32(i))
        history.append(metrics)
        if on_step is not None:
            on_step(i, state, metrics)
    return state, stack_metrics(history)


@jax.jit
def stack_metrics(history):
    return jax.tree.map(lambda *m: jnp.stack(m), *history)


@functools.partial(jax.jit, static_argnames=("config", "bn", "unit_range"))
def generator_output(config: Config, generator_variables, z, bn: str = "batch", unit_range: bool = False):
    """G(z) (Tanh range) from generator variables, changing nothing. bn='batch' normalises with
    this batch's statistics (train mode, what the tutorial's sampling did); bn='running' uses the
    running statistics (eval mode). unit_range=True: mapped to [0, 1] for display (to_unit_range)."""
    generator, _ = build_models(config)
    if bn == "batch":
        images = generator.apply(generator_variables, z, train=True, mutable=["batch_stats"])[0]
    else:
        images = generator.apply(generator_variables, z, train=False)
    return to_unit_range(images, config) if unit_range else images


def generate(state: TrainState, z, bn: str = "batch", unit_range: bool = False):
    """G(z) from a train state, without touching it; see generator_output."""
    _wait_at_exit()
    return generator_output(state.config, state.generator_variables, z, bn, unit_range)


@functools.cache
def _wait_at_exit():
    """Make the interpreter's exit wait for the programs still running on JAX's default backend.

    JAX dispatches asynchronously: a script whose last line dispatches an epoch or samples exits
    while XLA's threads still run them, and the C++ runtime torn down under a running program
    crashes the process (SIGSEGV). Registered on the first call of train_step, train_epoch or
    generate, so a process that never computed starts no backend at exit, and after JAX's own
    exit hooks, so that it runs before them (atexit runs the last registered first).
    """
    atexit.register(_finish_queued_work)


def _finish_queued_work():
    for array in jax.live_arrays():
        try:
            array.block_until_ready()
        except Exception:  # a program that failed (out of memory) has nothing left to run
            pass


def to_unit_range(images, config: Config):
    """Generator output -> [0, 1] for display, undoing the configured data scaling."""
    if config.data_range == "minus_one_one":
        images = (images + 1) / 2
    return jnp.clip(images, 0, 1)


def run_keys(seed: int):
    """The run's independent key streams: init, the fixed sample noise, and training."""
    init_key, sample_key, train_key = jax.random.split(jax.random.key(seed), 3)
    return init_key, sample_key, train_key


def epoch_key(train_key, epoch: int):
    """The key of `epoch` (1-based): a pure function of the run seed and the epoch number,
    so a resumed run replays exactly the batches and noise an uninterrupted one would."""
    return jax.random.fold_in(train_key, epoch)
