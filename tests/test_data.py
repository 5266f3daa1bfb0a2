"""MNIST loading: IDX validation with errors that name the file, and the TFDS path."""
import gzip
import os

import numpy as np
import pytest

from conftest import make_idx_dir, write_idx
from dcgan_jax.data import DataError, load_mnist, read_idx


def test_idx_round_trip_gz_and_raw(tmp_path):
    for compress in (True, False):
        root = make_idx_dir(tmp_path / str(compress), n_train=20, n_test=10, compress=compress)
        with pytest.warns(UserWarning, match="not the genuine MNIST"):
            train = load_mnist("train", data_dir=root)
        assert train.images.shape == (20, 28, 28, 1) and train.images.dtype == np.uint8
        assert train.labels.shape == (20,) and train.genuine is False
        suffix = ".gz" if compress else ""
        raw = gzip.open(os.path.join(root, "train-images-idx3-ubyte.gz")).read() if compress else \
            open(os.path.join(root, "train-images-idx3-ubyte"), "rb").read()
        np.testing.assert_array_equal(train.images.ravel(), np.frombuffer(raw[16:], np.uint8))
        with pytest.warns(UserWarning):
            assert load_mnist("test", data_dir=root).images.shape == (10, 28, 28, 1)
        assert os.path.exists(os.path.join(root, "t10k-labels-idx1-ubyte" + suffix))


def test_alternative_file_names(tmp_path):
    root = make_idx_dir(tmp_path, n_train=8, compress=False)
    for stem in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"):
        os.rename(os.path.join(root, stem), os.path.join(root, stem.replace("-idx", ".idx")))
    with pytest.warns(UserWarning):
        assert len(load_mnist("train", data_dir=root).images) == 8


@pytest.mark.parametrize("damage, message", [
    ("truncate", "truncated"),
    ("magic", "wrong magic number"),
    ("trailing", "trailing bytes"),
    ("not_gzip", "cannot read/decompress"),
])
def test_corrupt_images_file_is_named(tmp_path, damage, message):
    root = make_idx_dir(tmp_path, n_train=8)
    path = os.path.join(root, "train-images-idx3-ubyte.gz")
    data = gzip.open(path).read()
    if damage == "truncate":
        data = data[:-100]
    elif damage == "magic":
        data = (2049).to_bytes(4, "big") + data[4:]
    elif damage == "trailing":
        data = data + b"\0"
    with open(path, "wb") as f:
        f.write(b"garbage, not gzip" if damage == "not_gzip" else gzip.compress(data))
    with pytest.raises(DataError, match=message) as err:
        load_mnist("train", data_dir=root)
    assert "train-images-idx3-ubyte.gz" in str(err.value)


def test_mismatched_counts_and_sizes(tmp_path):
    root = make_idx_dir(tmp_path, n_train=8)
    write_idx(os.path.join(root, "train-labels-idx1-ubyte.gz"), np.zeros(7), 2049)
    with pytest.raises(DataError, match="holds 8 images but .* holds 7 labels"):
        load_mnist("train", data_dir=root)
    write_idx(os.path.join(root, "train-images-idx3-ubyte.gz"), np.zeros((7, 32, 32)), 2051)
    with pytest.raises(DataError, match="32x32; the models need 28x28"):
        load_mnist("train", data_dir=root)


def test_missing_dir_and_file(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_mnist("train", data_dir=str(tmp_path / "nope"))
    root = make_idx_dir(tmp_path / "m", n_train=8)
    os.remove(os.path.join(root, "train-labels-idx1-ubyte.gz"))
    with pytest.raises(DataError, match="no train-labels-idx1-ubyte file"):
        load_mnist("train", data_dir=root)


def test_read_idx_reports_sha256_of_decompressed_bytes(tmp_path):
    import hashlib
    path = write_idx(str(tmp_path / "x.gz"), np.arange(6).reshape(1, 2, 3), 2051)
    array, sha = read_idx(path, 2051)
    assert array.shape == (1, 2, 3)
    assert sha == hashlib.sha256(gzip.open(path).read()).hexdigest()


def test_tfds_source_reads_mock_data(tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=6):
        data = load_mnist("train", tfds_data_dir=str(tmp_path))
    assert data.images.shape == (6, 28, 28, 1) and data.images.dtype == np.uint8
    assert data.labels.shape == (6,) and data.source == "tfds:mnist"


def test_tfds_unprepared_fails_fast_with_a_hint(tmp_path, monkeypatch):
    """Offline or without TensorFlow, TFDS would retry downloads forever; we say what to do."""
    pytest.importorskip("tensorflow_datasets")

    def offline(*args, **kwargs):
        raise OSError("network is unreachable")
    monkeypatch.setattr("socket.create_connection", offline)
    with pytest.raises(DataError, match="--data-dir"):
        load_mnist("train", tfds_data_dir=str(tmp_path))


# --- bad files cost no more memory than their declared size -----------------------------------

def peak_bytes_of(fn):
    """(result or exception, peak bytes Python and numpy allocated while fn ran)."""
    import tracemalloc
    tracemalloc.start()
    try:
        try:
            result = fn()
        except DataError as e:
            result = e
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


IDX_HEADER_8 = b"".join(n.to_bytes(4, "big") for n in (2051, 8, 28, 28))   # 8 images: 6288 bytes


def test_a_gzip_bomb_is_refused_after_its_declared_size(tmp_path):
    """A valid header of 8 images, then 64 MiB of zeros (64 KiB compressed)."""
    path = str(tmp_path / "train-images-idx3-ubyte.gz")
    with gzip.open(path, "wb") as f:
        f.write(IDX_HEADER_8)
        for _ in range(64):
            f.write(bytes(1 << 20))
    error, peak = peak_bytes_of(lambda: read_idx(path, 2051))
    assert isinstance(error, DataError) and "has trailing bytes: header says 8x28x28 (6288 bytes)" in str(error)
    assert peak < 8 << 20, peak   # the bomb decompressed whole would be 64 MiB


def test_a_huge_sparse_file_is_refused_before_it_is_read(tmp_path):
    path = str(tmp_path / "train-images-idx3-ubyte")
    with open(path, "wb") as f:
        f.write(IDX_HEADER_8)
        f.truncate(256 << 20)   # a hole: no disk used, but reading it would cost 256 MiB
    error, peak = peak_bytes_of(lambda: read_idx(path, 2051))
    assert str(error) == f"{path}: has trailing bytes: header says 8x28x28 (6288 bytes), file holds {256 << 20} bytes"
    assert peak < 1 << 20, peak
    header = b"".join(n.to_bytes(4, "big") for n in (2051, 2_000_000, 28, 28))   # 1.57 GB, matching
    with open(path, "wb") as f:
        f.write(header)
        f.truncate(16 + 2_000_000 * 28 * 28)
    error, peak = peak_bytes_of(lambda: read_idx(path, 2051))
    assert "header says 2000000x28x28 (1568000016 bytes), more than the 1073741824 bytes this reader accepts" \
        in str(error) and peak < 1 << 20, (error, peak)


def test_a_gzip_file_declaring_more_than_it_can_hold(tmp_path):
    path = str(tmp_path / "train-images-idx3-ubyte.gz")
    header = b"".join(n.to_bytes(4, "big") for n in (2051, 60000, 28, 28))   # MNIST's size, no pixels
    with gzip.open(path, "wb") as f:
        f.write(header + bytes(100))
    size = os.path.getsize(path)
    error, peak = peak_bytes_of(lambda: read_idx(path, 2051))
    assert str(error) == (f"{path}: truncated: header says 60000x28x28 (47040016 bytes), more than a "
                          f"{size}-byte gzip file can hold")
    assert peak < 1 << 20, peak
