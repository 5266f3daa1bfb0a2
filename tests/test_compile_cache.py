"""The persistent compilation cache: a second process finds the first one's compiled program."""
import os
import subprocess
import sys

PROGRAM = """
import sys
import jax, jax.numpy as jnp
from dcgan_jax.compile_cache import enable_compile_cache
print(enable_compile_cache(sys.argv[1]))
jax.jit(lambda x: jnp.sin(x) * 3)(jnp.arange(5.0)).block_until_ready()
"""


def _run(cache_dir):
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               PYTHONPATH=os.pathsep.join([os.path.dirname(os.path.dirname(__file__)), os.environ.get("PYTHONPATH", "")]))
    out = subprocess.run([sys.executable, "-c", PROGRAM, cache_dir], env=env, capture_output=True,
                         text=True, check=True)
    return out.stdout.strip()


def test_compiled_programs_are_written_and_reused(tmp_path):
    cache = tmp_path / "nested" / "cache"
    assert _run(str(cache)) == str(cache)          # creates the folder, returns it
    entries = set(os.listdir(cache))
    assert entries, "nothing was cached"
    _run(str(cache))                                # same program: served from the cache
    assert set(os.listdir(cache)) == entries
