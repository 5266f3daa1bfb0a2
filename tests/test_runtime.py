"""Process-wide runtime settings, each in a fresh process: the persistent compilation cache (a second
process finds the first one's compiled program) and CPU memory reuse."""
import os
import platform
import resource
import subprocess
import sys

import numpy as np
import pytest

PROGRAM = """
import sys
import jax, jax.numpy as jnp
from dcgan_jax.runtime import enable_compile_cache
print(enable_compile_cache(sys.argv[1]))
jax.jit(lambda x: jnp.sin(x) * 3)(jnp.arange(5.0)).block_until_ready()
"""


def _env(base=None):
    return dict(base if base is not None else os.environ, JAX_PLATFORMS="cpu",
                PYTHONPATH=os.pathsep.join([os.path.dirname(os.path.dirname(__file__)), os.environ.get("PYTHONPATH", "")]))


def _run(cache_dir):
    out = subprocess.run([sys.executable, "-c", PROGRAM, cache_dir], env=_env(), capture_output=True,
                         text=True, check=True)
    return out.stdout.strip()


def test_compiled_programs_are_written_and_reused(tmp_path):
    cache = tmp_path / "nested" / "cache"
    assert _run(str(cache)) == str(cache)          # creates the folder, returns it
    entries = set(os.listdir(cache))
    assert entries, "nothing was cached"
    _run(str(cache))                                # same program: served from the cache
    assert set(os.listdir(cache)) == entries


MEMORY_PROGRAM = """
import resource, sys
import jax, jax.numpy as jnp
from dcgan_jax.runtime import reuse_cpu_memory
tuned = reuse_cpu_memory() if sys.argv[1] == "on" else None
double = jax.jit(lambda x: x * 2 + 1)
x = jnp.ones((16, 1024, 1024), jnp.float32)         # 64 MiB: glibc maps it afresh unless kept
faults = []
for _ in range(12):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    y = double(x).block_until_ready()
    assert float(y[3, 2, 1]) == 3.0
    del y                    # freed: the next call may reuse the pages (after a few calls settle where)
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(tuned, jax.config.read("jax_cpu_enable_async_dispatch"), *faults[4:])
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc tuning is glibc's mallopt")
@pytest.mark.slow  # a subprocess that starts JAX
def test_reuse_cpu_memory_keeps_an_execution_buffer_mapped():
    pages = 64 * 2**20 // resource.getpagesize()
    env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    default, reused = (subprocess.run([sys.executable, "-c", MEMORY_PROGRAM, mode], env=_env(env),
                                      capture_output=True, text=True, check=True).stdout.split()
                       for mode in ("off", "on"))
    assert default[:2] == ["None", "True"] and reused[:2] == ["True", "False"]
    # glibc's default: a fresh mapping for every 64 MiB output, each page faulted in again. Reused,
    # most calls fault nothing (where glibc carves the buffer from its heap can still move).
    assert np.median([int(f) for f in default[2:]]) > pages // 2, default
    assert np.median([int(f) for f in reused[2:]]) < pages // 20, reused


@pytest.mark.slow  # a subprocess that starts JAX
def test_reuse_cpu_memory_after_the_backends_started_warns_and_changes_nothing():
    program = """
import warnings
import jax, jax.numpy as jnp
from dcgan_jax.runtime import reuse_cpu_memory
jnp.ones(3).block_until_ready()                      # the CPU client starts, asynchronous
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    print(reuse_cpu_memory(), jax.config.read("jax_cpu_enable_async_dispatch"), caught[0].message)
"""
    out = subprocess.run([sys.executable, "-c", program], env=_env(), capture_output=True, text=True,
                         check=True).stdout
    assert out.startswith("False True reuse_cpu_memory() called after JAX's backends started"), out
