"""Data parallelism with jax.sharding: one Mesh over all devices, the batch split across them.

The global batch is sharded on the mesh's "batch" axis and everything else (params, BatchNorm
statistics, optimizer states, keys) is replicated; train.train_epoch runs the unchanged training
step on whatever mesh the images are placed on, so N devices compute what one device computes for
the same batch (up to float rounding order).

With several processes (`jax.distributed.initialize()`, one per host) the mesh spans every
process's devices; each process runs this same code, feeds the same host data (every host holds
the dataset and derives the same batches from the seed) and JAX moves only each device's shard.
"""
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from .config import ConfigError


def initialize_distributed(coordinator_address: Optional[str] = None, num_processes: Optional[int] = None,
                           process_id: Optional[int] = None):
    """jax.distributed.initialize(): arguments left None are detected from the cluster (SLURM, ...)."""
    jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                               process_id=process_id)


class DataParallel:
    """A 1-D device mesh and the shardings and placement that go with it."""

    def __init__(self, devices=None):
        devices = jax.devices() if devices is None else list(devices)
        self.mesh = Mesh(np.asarray(devices), ("batch",))
        self.replicated = NamedSharding(self.mesh, P())
        self.batch_sharding = NamedSharding(self.mesh, P("batch"))
        self.num_devices = len(devices)

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
