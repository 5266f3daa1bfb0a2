"""Helpers the experiment scripts share: open a finished run directory, sample its generator."""
import sys

import jax
import numpy as np

from dcgan_jax.outputs import RunDirError, load_variables
from dcgan_jax.train import generator_output, to_unit_range


def load_run(run_dir: str):
    """(config, generator_variables, discriminator_variables), or exit with a one-line error."""
    try:
        return load_variables(run_dir)
    except (OSError, RunDirError, ValueError) as e:
        sys.exit(f"error: {run_dir}: not a finished run directory ({e})")


def generate_images(config, variables, num: int, key, bn: str = "batch", batch_size=None) -> np.ndarray:
    """`num` samples as (num, 28, 28, 1) float32 in [0, 1], drawn in batches of the training
    batch size (in train mode the batch size is part of what the generator computes)."""
    batch_size = batch_size or config.batch_size
    batches = -(-num // batch_size)
    keys = jax.random.split(key, batches)
    out = [to_unit_range(generator_output(config, variables,
                                          jax.random.normal(k, (batch_size, config.latent_dim)), bn), config)
           for k in keys]
    return np.concatenate(jax.device_get(out))[:num].astype(np.float32)
