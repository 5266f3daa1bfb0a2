"""The README's "API in a dozen lines", run verbatim as a script, trains and exits cleanly.

The snippet is read from README.md at test time, so the test follows the README. It runs in a
folder where its `../shared/data/mnist` holds tiny generated IDX files. A script that ends while
XLA still has work queued must not crash at interpreter exit either (XLA:CPU's threads still
running while the C++ runtime is torn down: a SIGSEGV in some runs of the second test below,
before dcgan_jax made the exit wait), so the snippet also runs without its final
`jax.block_until_ready(...)`, followed by more work that nothing waits for.
"""
import os
import re
import subprocess
import sys

import pytest

import dcgan_jax
from conftest import make_idx_dir

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HEADING = "## The API in a dozen lines"
BLOCK = "jax.block_until_ready((state, samples))"
CHECK = "\nprint('RESULT', tuple(samples.shape), int(state.step))\n"  # waits for the step count
MORE_WORK = """
for epoch in range(config.epochs + 1, config.epochs + 21):
    state, metrics = dcgan_jax.train_epoch(state, images, dcgan_jax.epoch_key(train_key, epoch))
samples = dcgan_jax.generate(state, jax.random.normal(sample_key, (1024, config.latent_dim)))
print('RESULT', tuple(samples.shape))  # a shape is known at dispatch: nothing waits
"""


def readme_snippet() -> str:
    with open(os.path.join(REPO, "README.md")) as f:
        readme = f.read()
    section = readme.split(HEADING, 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, f"no python block under {HEADING!r} in README.md"
    return match.group(1)


@pytest.fixture(scope="module")
def compile_cache(tmp_path_factory):
    """One persistent compilation cache for both scripts: the second loads what the first compiled."""
    return str(tmp_path_factory.mktemp("jax_cache"))


def run_script(tmp_path, source: str, cache: str):
    """Run `source` as a script whose ../shared/data/mnist is a tiny IDX set the quick preset fits."""
    config = dcgan_jax.preset("quick")
    make_idx_dir(tmp_path / "shared" / "data" / "mnist", n_train=config.batch_size * config.steps_per_epoch,
                 n_test=4)
    work = tmp_path / "work"  # its ../shared/data/mnist is the tiny set
    work.mkdir()
    script = work / "snippet.py"
    script.write_text(source)
    env = dict(os.environ, PYTHONPATH=REPO, PYTHONWARNINGS="ignore",  # this checkout's dcgan_jax
               JAX_COMPILATION_CACHE_DIR=cache, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
    return subprocess.run([sys.executable, str(script)], cwd=work, env=env, capture_output=True, text=True,
                          timeout=300)


@pytest.mark.slow
def test_the_readme_api_snippet_runs_verbatim_as_a_script(tmp_path, compile_cache):
    source = readme_snippet()
    assert source.rstrip().endswith(BLOCK), "the snippet should end by blocking on its results"
    proc = run_script(tmp_path, source + CHECK, compile_cache)
    assert_clean_exit(proc)
    config = dcgan_jax.preset("quick")
    steps = 1 + config.epochs * config.steps_per_epoch  # its train_step, then the epochs
    assert f"RESULT (16, 28, 28, 1) {steps}" in proc.stdout.splitlines(), proc.stdout


@pytest.mark.slow
def test_a_script_ending_with_xla_work_still_queued_exits_cleanly(tmp_path, compile_cache):
    source = readme_snippet().replace(BLOCK, "")
    proc = run_script(tmp_path, source + MORE_WORK, compile_cache)
    assert_clean_exit(proc)
    assert "RESULT (1024, 28, 28, 1)" in proc.stdout.splitlines(), proc.stdout


def assert_clean_exit(proc):
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stderr}"  # a crash at exit: -11
    for sign in ("Traceback", "Segmentation fault", "Fatal Python error"):
        assert sign not in proc.stderr, proc.stderr
