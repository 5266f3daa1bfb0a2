"""Compile time: JAX's persistent compilation cache (a later process with the same programs skips
XLA compilation) and threefry as one GPU kernel (the first process compiles faster).

The CLI turns both on by default. Programs are keyed by their HLO, the jax/jaxlib version, the
backend and the XLA flags, so a changed model or flag simply compiles (and caches) afresh.
"""
import os
from typing import Optional

import jax

DEFAULT_DIR = os.path.join(os.path.expanduser("~"), ".cache", "dcgan_jax", "jax")


def enable_compile_cache(cache_dir: Optional[str] = None) -> str:
    """Store every compiled program under `cache_dir` (default ~/.cache/dcgan_jax/jax) and reuse it.

    Call before the first jitted call. Even fast compiles are cached (the train step, the epoch
    scan, sampling): a warm start then compiles nothing. Returns the folder used.
    """
    cache_dir = os.path.abspath(os.path.expanduser(cache_dir or DEFAULT_DIR))
    os.makedirs(cache_dir, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", cache_dir)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return cache_dir


def enable_threefry_kernel() -> None:
    """Lower jax.random's threefry hash to one CUDA/ROCm kernel instead of ~100 unrolled XLA ops.

    The same bits (the same hash, computed by a kernel), compiled in a fraction of the time: on an
    H100 the init program compiles in 3.3 s instead of 16.7 s and the first scanned epoch in 13.4 s
    instead of 17.1 s (benchmarks/NOTES.md). CPU programs are unaffected. A global JAX setting, so
    the CLI sets it and library users opt in.
    """
    jax.config.update("jax_threefry_gpu_kernel_lowering", True)
