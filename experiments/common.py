"""Helpers the experiment scripts share: the CPU memory flag, checks of --out and of counts, open a
finished run directory, sample its generator."""
import argparse
import os
import sys
from typing import Optional

import jax
import numpy as np

from dcgan_jax.outputs import RunDirError, load_variables
from dcgan_jax.train import generator_output

CPU_MEMORY_REUSE_ENV = "DCGAN_JAX_CPU_MEMORY_REUSE"
# Ten times the usual FID sample: past it a typo would run for hours (or exhaust memory) instead
# of failing at once.
MAX_SAMPLES = 100_000


def add_cpu_memory_reuse_flag(p: argparse.ArgumentParser):
    p.add_argument("--cpu-memory-reuse", choices=("on", "off"), default=os.environ.get(CPU_MEMORY_REUSE_ENV, "on"),
                   help="on CPU, run programs inline and keep freed memory mapped (fewer page faults; "
                        "dcgan_jax.runtime.reuse_cpu_memory); 'off' keeps JAX's and glibc's defaults "
                        f"(default: ${CPU_MEMORY_REUSE_ENV}, else %(default)s)")


def check_cpu_memory_reuse(args) -> Optional[str]:
    """The error for a bad value from the environment (argparse checks the choices of flags only)."""
    if args.cpu_memory_reuse not in ("on", "off"):
        return f"{CPU_MEMORY_REUSE_ENV}={args.cpu_memory_reuse!r}: expected 'on' or 'off'"
    return None


def apply_cpu_memory_reuse(args):
    """Call after every setting the backends read at start (reuse_cpu_memory starts them)."""
    if args.cpu_memory_reuse == "on":
        from dcgan_jax.runtime import reuse_cpu_memory
        reuse_cpu_memory()


def check_count(name: str, value: int, low: int, high: int) -> Optional[str]:
    """The error for a count flag outside [low, high], or None."""
    if not low <= value <= high:
        return f"{name} {value}: must lie in [{low}, {high}]"
    return None


def check_out(out: str, folder: bool) -> Optional[str]:
    """Why `out` cannot become this script's output folder (folder=True) or file, or None."""
    if not out:
        return f"--out is empty: name the output {'folder' if folder else 'file'}"
    if os.path.exists(out) and os.path.isdir(out) != folder:
        return f"--out {out} " + ("exists and is not a folder" if folder else "is a folder: name the file to write")
    parent = os.path.abspath(out if folder else os.path.dirname(os.path.abspath(out)))
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        return f"--out {out}: {parent} is a file, not a folder"
    return None


def check_new_files(paths) -> Optional[str]:
    """The error if one of `paths` exists: a file at a path the user named may be theirs."""
    for path in paths:
        if os.path.lexists(path):
            return f"{path} exists and is not overwritten; remove it or pass another --out"
    return None


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
    out = [generator_output(config, variables, jax.random.normal(k, (batch_size, config.latent_dim)), bn,
                            unit_range=True) for k in keys]
    return np.concatenate(jax.device_get(out))[:num].astype(np.float32)
