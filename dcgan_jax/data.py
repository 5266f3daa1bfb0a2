"""MNIST as uint8 arrays: TFDS (the normal online way) or a folder of the four IDX files.

Both return images (N, 28, 28, 1) uint8 and labels (N,) uint8. Any failure names the file or
the step that failed and what to do instead; nothing here waits on a network that is not there.
"""
import dataclasses
import gzip
import hashlib
import math
import os
import socket
import warnings
import zlib
from typing import Optional
from urllib.parse import urlparse

import numpy as np


class DataError(Exception):
    """The dataset cannot be read; the message says which file or step and why."""


@dataclasses.dataclass(frozen=True)
class Dataset:
    images: np.ndarray      # (N, 28, 28, 1) uint8
    labels: np.ndarray      # (N,) uint8
    source: str             # where it came from, for logs and config.json
    genuine: Optional[bool]  # IDX only: content equals the original MNIST files


IMAGES_MAGIC, LABELS_MAGIC = 2051, 2049
IDX_NAMES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
             "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
# sha256 of the *decompressed* original files (the .gz bytes vary with the compressor).
GENUINE_SHA256 = {
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}


def load_mnist(split: str = "train", data_dir: Optional[str] = None,
               tfds_data_dir: Optional[str] = None) -> Dataset:
    """MNIST `split` ("train" or "test") from the IDX folder `data_dir`, else from TFDS."""
    if split not in IDX_NAMES:
        raise DataError(f"unknown split {split!r}: use 'train' or 'test'")
    if data_dir is not None:
        return load_idx(data_dir, split)
    return load_tfds(split, tfds_data_dir)


# --- IDX files -------------------------------------------------------------------------------

def _find(data_dir: str, stem: str) -> str:
    # Standard names, optionally .gz; also the "train-images.idx3-ubyte" spelling some mirrors use.
    alt = stem.replace("-idx", ".idx")
    for name in (stem, stem + ".gz", alt, alt + ".gz"):
        path = os.path.join(data_dir, name)
        if os.path.isfile(path):
            return path
    raise DataError(f"{data_dir}: no {stem} file (looked for {stem}, {stem}.gz, {alt}, {alt}.gz)")


# Bounds that refuse a bad file before allocating for it: deflate expands at most 1032-fold, and no
# 28x28 dataset these models train on comes near 1 GiB (MNIST's largest file is 47 MB).
GZIP_MAX_RATIO = 1032
MAX_IDX_BYTES = 1 << 30


def read_idx(path: str, magic: int):
    """Parse one IDX file (raw or gzip); returns (array, sha256 of the decompressed bytes).

    The header's declared size is checked against the file (raw: its size; gzip: what that many
    compressed bytes can hold, then the stream as it is read) before or while the array fills,
    so a gzip bomb or a huge sparse file costs at most the declared size before it is refused.
    """
    try:
        with open(path, "rb") as raw:
            size = os.fstat(raw.fileno()).st_size
            if path.endswith(".gz"):
                with gzip.GzipFile(fileobj=raw) as stream:
                    return _read_idx(path, stream, magic, size, compressed=True)
            return _read_idx(path, raw, magic, size, compressed=False)
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"{path}: cannot read/decompress ({e})") from None


def _read_idx(path: str, stream, magic: int, size: int, compressed: bool):
    header = stream.read(4)
    if len(header) == 4:
        header += stream.read(4 * header[3])
    found = int.from_bytes(header[:4], "big")
    if len(header) < 8 or (found == magic and len(header) < 4 + 4 * header[3]):
        raise DataError(f"{path}: truncated ({len(header)} bytes, shorter than an IDX header)")
    if found != magic:
        kind = "images" if magic == IMAGES_MAGIC else "labels"
        raise DataError(f"{path}: wrong magic number {found} (expected {magic}, IDX {kind}); "
                        f"not an IDX {kind} file or corrupt")
    dims = tuple(int.from_bytes(header[4 + 4 * i: 8 + 4 * i], "big") for i in range(header[3]))
    expected = len(header) + math.prod(dims)   # Python ints: a crafted header must not overflow
    says = f"header says {'x'.join(map(str, dims))} ({expected} bytes)"
    if not compressed and size != expected:
        what = "truncated" if size < expected else "has trailing bytes"
        raise DataError(f"{path}: {what}: {says}, file holds {size} bytes")
    if compressed and expected > GZIP_MAX_RATIO * size:
        raise DataError(f"{path}: truncated: {says}, more than a {size}-byte gzip file can hold")
    if expected > MAX_IDX_BYTES:
        raise DataError(f"{path}: {says}, more than the {MAX_IDX_BYTES} bytes this reader accepts")
    data = np.empty(expected - len(header), np.uint8)   # pages are touched only as bytes arrive
    view, got = memoryview(data), 0
    while got < len(data):
        n = stream.readinto(view[got: got + (1 << 22)])
        if not n:
            raise DataError(f"{path}: truncated: {says}, file holds {len(header) + got} bytes")
        got += n
    if stream.read(1):
        raise DataError(f"{path}: has trailing bytes: {says}, the file holds more")
    digest = hashlib.sha256(header)
    digest.update(data)
    return data.reshape(dims), digest.hexdigest()


def load_idx(data_dir: str, split: str = "train") -> Dataset:
    if not os.path.isdir(data_dir):
        raise DataError(f"data dir {data_dir!r} does not exist or is not a folder")
    images_stem, labels_stem = IDX_NAMES[split]
    images_path, labels_path = _find(data_dir, images_stem), _find(data_dir, labels_stem)
    images, images_sha = read_idx(images_path, IMAGES_MAGIC)
    labels, labels_sha = read_idx(labels_path, LABELS_MAGIC)
    if images.ndim != 3 or images.shape[1:] != (28, 28):
        raise DataError(f"{images_path}: images are {'x'.join(map(str, images.shape[1:]))}; "
                        f"the models need 28x28")
    if labels.ndim != 1:
        raise DataError(f"{labels_path}: labels must be one-dimensional, got shape {labels.shape}")
    if not len(images):
        raise DataError(f"{images_path}: holds no images")
    if len(images) != len(labels):
        raise DataError(f"{images_path} holds {len(images)} images but {labels_path} holds "
                        f"{len(labels)} labels")
    genuine = (images_sha == GENUINE_SHA256[images_stem] and labels_sha == GENUINE_SHA256[labels_stem])
    if not genuine:
        warnings.warn(f"{data_dir}: valid IDX files, but not the genuine MNIST {split} split "
                      f"(sha256 differs); using them as given", stacklevel=2)
    return Dataset(images[..., None], labels, source=f"idx:{os.path.abspath(data_dir)}", genuine=genuine)


# --- TFDS ------------------------------------------------------------------------------------

OFFLINE_HINT = "pass --data-dir DIR (data_dir=...) with the four MNIST IDX files instead"


def _check_can_build(tfds):
    """Building 'mnist' needs TensorFlow and the download host; TFDS would retry forever offline."""
    try:
        import tensorflow  # noqa: F401
    except ImportError:
        raise DataError("TFDS needs TensorFlow to build 'mnist' the first time "
                        f"(pip install tensorflow-cpu), or {OFFLINE_HINT}") from None
    from tensorflow_datasets.image_classification import mnist
    url = urlparse(getattr(mnist, "_MNIST_URL", "https://storage.googleapis.com/"))
    try:
        socket.create_connection((url.hostname, url.port or 443), timeout=5).close()
    except OSError as e:
        raise DataError(f"TFDS 'mnist' is not prepared and its download host {url.hostname} is "
                        f"unreachable ({e}); {OFFLINE_HINT}") from None


def _as_arrays(source, n):
    try:
        items = source.__getitems__(list(range(n)))
    except TypeError:  # tfds.testing.mock_data's sources only serve one item at a time
        items = [source[i] for i in range(n)]
    images = np.stack([np.asarray(it["image"], np.uint8) for it in items])
    labels = np.asarray([it["label"] for it in items], np.uint8)
    return images.reshape(n, 28, 28, 1), labels


def load_tfds(split: str = "train", tfds_data_dir: Optional[str] = None) -> Dataset:
    try:
        import tensorflow_datasets as tfds
    except ImportError:
        raise DataError(f"tensorflow-datasets is not installed; pip install tensorflow-datasets, "
                        f"or {OFFLINE_HINT}") from None
    tfds.disable_progress_bar()
    builder = tfds.builder("mnist", data_dir=tfds_data_dir)
    if not builder.is_prepared():
        try:  # tfds.testing.mock_data serves data for builders that are not prepared
            source = builder.as_data_source(split=split)
            return Dataset(*_as_arrays(source, len(source)), source="tfds:mnist", genuine=None)
        except (NotImplementedError, FileNotFoundError, ValueError):
            pass
        _check_can_build(tfds)
        builder.download_and_prepare(file_format="array_record")
        builder = tfds.builder("mnist", data_dir=tfds_data_dir)
    if str(builder.info.file_format).lower().endswith("array_record"):
        source = builder.as_data_source(split=split)
        images, labels = _as_arrays(source, len(source))
    else:  # prepared earlier by tfds.load (tfrecord): reading that format needs TensorFlow
        data = tfds.as_numpy(builder.as_dataset(split=split, batch_size=-1))
        images, labels = np.asarray(data["image"], np.uint8), np.asarray(data["label"], np.uint8)
    return Dataset(images, labels, source="tfds:mnist", genuine=None)
