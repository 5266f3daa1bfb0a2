"""Shared fixtures: tiny generated MNIST-format data, so no test needs the real MNIST."""
import gzip
import os

import numpy as np
import pytest

# Tests compile into the process only: the CLI's persistent compilation cache stays off unless a
# test turns it on explicitly. CPU memory reuse too: the test process's JAX client is long started
# (so the setting would only make malloc keep freed memory); tests/test_runtime.py checks it.
os.environ["DCGAN_JAX_COMPILE_CACHE"] = "off"
os.environ["DCGAN_JAX_CPU_MEMORY_REUSE"] = "off"


def write_idx(path, array, magic, compress=True):
    """Write `array` (uint8) as an IDX file with the given magic number (optionally gzipped)."""
    array = np.asarray(array, np.uint8)
    header = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    data = header + array.tobytes()
    with (gzip.open(path, "wb") if compress else open(path, "wb")) as f:
        f.write(data)
    return path


def make_idx_dir(root, n_train=64, n_test=32, seed=0, compress=True):
    """A folder with the four standard IDX files of random 28x28 digits-like images."""
    rng = np.random.default_rng(seed)
    os.makedirs(root, exist_ok=True)
    ext = ".gz" if compress else ""
    for split, n in (("train", n_train), ("t10k", n_test)):
        images = (rng.random((n, 28, 28)) < 0.2) * rng.integers(0, 256, (n, 28, 28))
        write_idx(os.path.join(root, f"{split}-images-idx3-ubyte{ext}"), images, 2051, compress)
        write_idx(os.path.join(root, f"{split}-labels-idx1-ubyte{ext}"), rng.integers(0, 10, n), 2049, compress)
    return str(root)


@pytest.fixture
def idx_dir(tmp_path):
    return make_idx_dir(tmp_path / "mnist")
