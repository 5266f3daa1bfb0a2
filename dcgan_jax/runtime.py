"""Process-wide runtime settings, all on in the CLI, opt-in for library users: JAX's persistent
compilation cache (a later process with the same programs skips XLA compilation), threefry as one
GPU kernel (the first process compiles faster), and CPU memory reuse (each CPU step stops
re-mapping its buffers).

Programs are keyed by their HLO, the jax/jaxlib version, the backend and the XLA flags, so a
changed model or flag simply compiles (and caches) afresh.
"""
import ctypes
import os
import platform
import tempfile
import warnings
from typing import Optional

import jax

DEFAULT_DIR = os.path.join(os.path.expanduser("~"), ".cache", "dcgan_jax", "jax")


def enable_compile_cache(cache_dir: Optional[str] = None) -> Optional[str]:
    """Store every compiled program under `cache_dir` (default ~/.cache/dcgan_jax/jax) and reuse it.

    Call before the first jitted call. Even fast compiles are cached (the train step, the epoch
    scan, sampling): a warm start then compiles nothing. Returns the folder used; if it cannot be
    created or written (a read-only home), warns in one line and returns None: programs then
    compile as without a cache, which changes no result.
    """
    cache_dir = os.path.abspath(os.path.expanduser(cache_dir or DEFAULT_DIR))
    try:
        os.makedirs(cache_dir, exist_ok=True)
        tempfile.TemporaryFile(dir=cache_dir).close()
    except OSError as e:
        warnings.warn(f"compile cache {cache_dir} is unusable ({e.strerror or e}); compiling without it",
                      stacklevel=2)
        return None
    jax.config.update("jax_compilation_cache_dir", cache_dir)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return cache_dir


def enable_threefry_kernel() -> None:
    """Lower jax.random's threefry hash to one CUDA/ROCm kernel instead of ~100 unrolled XLA ops.

    The same bits (the same hash, computed by a kernel), compiled in a fraction of the time
    (measurements in benchmarks/NOTES.md). CPU programs are unaffected. A global JAX setting, so
    the CLI sets it and library users opt in.
    """
    jax.config.update("jax_threefry_gpu_kernel_lowering", True)


_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4   # glibc's mallopt parameters (malloc.h)
_KEEP_FREED_BYTES = 1 << 30


def reuse_cpu_memory() -> bool:
    """Run CPU programs inline and keep freed memory in the process; True if malloc was tuned.

    Why: every XLA:CPU execution mallocs its buffers afresh (hundreds of MB of temporaries for
    the reference train step, plus Eigen's packing buffers per weight gradient). Async dispatch
    runs the program on a worker thread, whose glibc arena serves such sizes with mmap and
    returns them with munmap, so every step page-faults all of them in again. Run inline, the
    program allocates from the main arena, which with mmap off and a 1 GiB trim threshold keeps
    the freed pages for the next step (measurements in benchmarks/NOTES.md). Costs: Python waits
    for each CPU computation (the step loop syncs every step anyway), and the process keeps up
    to 1 GiB of freed memory.

    Call before the first computation (the CPU client reads the dispatch mode when it starts);
    called later it warns and changes nothing. It starts the backends to find the platform and
    tunes malloc only where the default backend is the CPU and the C library is glibc; other
    backends are left as they are.
    """
    from jax._src import xla_bridge  # no public way to ask whether the backends have started
    started = getattr(xla_bridge, "backends_are_initialized", lambda: False)()
    if started:
        warnings.warn("reuse_cpu_memory() called after JAX's backends started: CPU dispatch stays "
                      "asynchronous, so malloc is left as it is", stacklevel=2)
        return False
    jax.config.update("jax_cpu_enable_async_dispatch", False)  # CPU client only; GPU/TPU unaffected
    if jax.default_backend() != "cpu" or platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(None)
    no_mmap = libc.mallopt(_M_MMAP_MAX, 0) == 1
    return libc.mallopt(_M_TRIM_THRESHOLD, _KEEP_FREED_BYTES) == 1 and no_mmap


def out_of_memory(e: BaseException) -> Optional[str]:
    """What ran out, with the error's first line, if `e` is a failed allocation: XLA's on a device
    (RESOURCE_EXHAUSTED, or INTERNAL 'Out of memory' when it surfaces after dispatch) or a
    MemoryError on the host; None for any other error."""
    text = str(e).strip().splitlines()
    first = text[0][:200].rstrip(".") if text else type(e).__name__
    if isinstance(e, MemoryError):
        return f"out of host memory ({first})"
    if isinstance(e, jax.errors.JaxRuntimeError) and ("RESOURCE_EXHAUSTED" in first or "out of memory" in first.lower()):
        return f"out of memory on the {jax.default_backend()} device ({first})"
    return None
