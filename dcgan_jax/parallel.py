"""Data parallelism with jax.sharding: one Mesh over all devices, the batch split across them.

The global batch is sharded on the mesh's "batch" axis and everything else (params, BatchNorm
statistics, optimizer states, keys) is replicated. The training step is the unchanged
`_train_step`, compiled with jit + NamedSharding: GSPMD partitions it, so BatchNorm's batch mean
and variance and the gradients become all-reduces over the *global* batch, and N devices compute
what one device computes for the same batch (up to float rounding order).

With several processes (`jax.distributed.initialize()`, one per host) the mesh spans every
process's devices; each process runs this same code, feeds the same host data (every host holds
the dataset and derives the same batches from the seed) and JAX moves only each device's shard.
On one device of one process the core's `train_epoch` runs unchanged.
"""
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from .config import ConfigError
from .train import (STEP_JIT_KWARGS, TrainState, _stack, _train_step, compile_epoch, epoch_plan, resolve_loop,
                    train_epoch)


def initialize_distributed(coordinator_address: Optional[str] = None, num_processes: Optional[int] = None,
                           process_id: Optional[int] = None):
    """jax.distributed.initialize(): arguments left None are detected from the cluster (SLURM, ...)."""
    jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                               process_id=process_id)


class DataParallel:
    """A 1-D device mesh and the shardings, placement and epoch runner that go with it."""

    def __init__(self, devices=None):
        devices = jax.devices() if devices is None else list(devices)
        self.mesh = Mesh(np.asarray(devices), ("batch",))
        self.replicated = NamedSharding(self.mesh, P())
        self.batch_sharding = NamedSharding(self.mesh, P("batch"))
        self.num_devices = len(devices)
        # One device in this process: the core's epoch runner, exactly as without a mesh.
        self.single = self.num_devices == 1 and jax.process_count() == 1
        self.platform = devices[0].platform
        self._step = jax.jit(self._gather_step, in_shardings=self.replicated, out_shardings=self.replicated,
                             **STEP_JIT_KWARGS)
        self._plan = jax.jit(self._plan_fn, static_argnums=(1, 2, 3), out_shardings=self.replicated)
        self._scan = jax.jit(self._scan_fn, donate_argnums=0, in_shardings=self.replicated,
                             out_shardings=self.replicated, **STEP_JIT_KWARGS)

    def check_batch_size(self, batch_size: int):
        if batch_size % self.num_devices:
            raise ConfigError(f"batch_size={batch_size}: must be a multiple of the {self.num_devices} devices "
                              f"the batch is split across")

    # --- placement: host values -> arrays on the mesh, and back ---------------------------

    def replicate(self, tree):
        """Host (or single-device) values -> replicated arrays; built from the host copy per
        addressable device, so it also works when the mesh spans several processes."""
        def put(x):
            if isinstance(x, jax.Array) and jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
                return jax.random.wrap_key_data(put(jax.random.key_data(x)))
            host = np.asarray(x)
            return jax.make_array_from_callback(host.shape, self.replicated, lambda index: host[index])
        return jax.tree.map(put, tree)

    @staticmethod
    def to_host(tree):
        """Replicated (or single-device) arrays -> numpy, reading this process's own copy."""
        def get(x):
            return np.asarray(x.addressable_data(0)) if isinstance(x, jax.Array) else np.asarray(x)
        return jax.tree.map(get, tree)

    def abstract(self, tree):
        """ShapeDtypeStructs carrying where arrays restored from a checkpoint must live."""
        return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=self.replicated), tree)

    # --- one epoch --------------------------------------------------------------------------

    def train_epoch(self, state: TrainState, images, key, loop: Optional[str] = None,
                    on_step: Optional[Callable[[int, dict], None]] = None):
        """train.train_epoch over the mesh: same batches, same keys, same result (see module doc).

        `state` and `images` must come from `replicate`; `key` is the epoch's key.
        """
        cfg = state.config
        loop = resolve_loop(loop or cfg.loop)
        if self.single:
            return train_epoch(state, images, key, loop=loop, on_step=on_step)
        key_data = self.replicate(jax.random.key_data(key))
        if loop == "scan":
            return self._scan(state, images, key_data)
        idx, step_keys = self._plan(key_data, images.shape[0], cfg.steps_per_epoch, cfg.batch_size)
        history = []
        for i in range(cfg.steps_per_epoch):
            state, metrics = self._step(state, images, idx, step_keys, np.int32(i))
            history.append(metrics)
            if on_step is not None:
                on_step(i, metrics)
        return state, _stack(history)

    def compile_epoch(self, state: TrainState, images, key, loop: Optional[str] = None):
        """train.compile_epoch over the mesh: compile what train_epoch runs, run nothing.
        `state` may be abstract (`abstract(...)`); `images` from `replicate`."""
        cfg = state.config
        loop = resolve_loop(loop or cfg.loop)
        if self.single:
            return compile_epoch(state, images, key, loop=loop)
        key_data = self.replicate(jax.random.key_data(key))
        if loop == "scan":
            self._scan.lower(state, images, key_data).compile()
            return
        plan = self._plan.lower(key_data, images.shape[0], cfg.steps_per_epoch, cfg.batch_size).compile()
        step = self._step.lower(state, images, *plan.out_info, np.int32(0)).compile()
        _stack.lower([step.out_info[1]] * cfg.steps_per_epoch).compile()

    @staticmethod
    def _plan_fn(key_data, num_examples, steps, batch_size):
        idx, keys = epoch_plan(jax.random.wrap_key_data(key_data), num_examples, steps, batch_size)
        return idx, jax.random.key_data(keys)

    def _gather_step(self, state, images, idx, step_keys, i):
        batch = jax.lax.with_sharding_constraint(images[idx[i]], self.batch_sharding)
        return _train_step(state, batch, jax.random.wrap_key_data(step_keys[i]), self.platform)

    def _scan_fn(self, state, images, key_data):
        cfg = state.config
        idx, step_keys = self._plan_fn(key_data, images.shape[0], cfg.steps_per_epoch, cfg.batch_size)

        def body(s, i):
            return self._gather_step(s, images, idx, step_keys, i)
        return jax.lax.scan(body, state, jnp.arange(cfg.steps_per_epoch))
