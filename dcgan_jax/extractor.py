"""The MNIST classifier whose features and predictions the sample-quality metrics use.

A small flax CNN trained by `experiments/train_extractor.py` on the MNIST train split. Its weights
ship with the package (assets/mnist_extractor.msgpack) and are checked against the version and
sha256 below at load time, so every score is computed with exactly the same network and nothing
is downloaded. Retraining changes the file: bump WEIGHTS_VERSION and record the new sha256.
"""
import functools
import hashlib
from importlib import resources

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import serialization

WEIGHTS_FILE = "mnist_extractor.msgpack"
WEIGHTS_VERSION = 1
WEIGHTS_SHA256 = "665785e875cb15fde89abc43088ff6313f64e5331c1f7757c421fd68b796f6e8"
FEATURE_DIM = 128
NUM_CLASSES = 10


class ExtractorError(Exception):
    """The committed extractor weights are missing or not the recorded version."""


class MnistCNN(nn.Module):
    """(N, 28, 28, 1) in [0, 1] -> (logits (N, 10), features (N, 128)).

    The features (the penultimate layer, after its ReLU) play the role Inception's pool3 features
    play in FID; the logits' softmax plays the role of Inception's class posterior in IS.
    """
    dropout: float = 0.3

    @nn.compact
    def __call__(self, x, train: bool = False):
        for features in (32, 64, 128):
            x = nn.relu(nn.Conv(features, (3, 3), padding="SAME")(x))
            x = nn.max_pool(x, (2, 2), (2, 2), padding="SAME")   # 28 -> 14 -> 7 -> 4
        x = x.reshape(x.shape[0], -1)
        features = nn.relu(nn.Dense(FEATURE_DIM)(x))
        x = nn.Dropout(self.dropout, deterministic=not train)(features)
        return nn.Dense(NUM_CLASSES)(x), features


@functools.lru_cache(maxsize=None)
def load_params():
    """The committed parameters, after checking the file's sha256 against WEIGHTS_SHA256."""
    try:
        data = resources.files(__package__).joinpath("assets", WEIGHTS_FILE).read_bytes()
    except (FileNotFoundError, OSError) as e:
        raise ExtractorError(f"extractor weights {WEIGHTS_FILE} are missing from the package ({e}); "
                             f"reinstall dcgan_jax or run experiments/train_extractor.py") from None
    digest = hashlib.sha256(data).hexdigest()
    if digest != WEIGHTS_SHA256:
        raise ExtractorError(f"extractor weights {WEIGHTS_FILE}: sha256 {digest[:12]}... is not the "
                             f"recorded {WEIGHTS_SHA256[:12]}... (version {WEIGHTS_VERSION}); "
                             f"the file was changed or corrupted")
    state = serialization.msgpack_restore(data)
    if int(state["version"]) != WEIGHTS_VERSION:
        raise ExtractorError(f"extractor weights are version {state['version']}, "
                             f"this code expects {WEIGHTS_VERSION}")
    return jax.tree.map(jnp.asarray, state["params"])


@jax.jit
def _apply(params, images):
    logits, features = MnistCNN().apply({"params": params}, images)
    return jax.nn.softmax(logits), features


def extract(images, batch_size: int = 500, params=None):
    """(probs (N, 10), features (N, 128)) as float64 numpy arrays, for float images in [0, 1].

    Batches are padded to one fixed size so every call reuses the same compiled program.
    """
    params = load_params() if params is None else params
    images = np.clip(np.asarray(images, np.float32), 0.0, 1.0)
    if images.ndim != 4 or images.shape[1:] != (28, 28, 1):
        raise ValueError(f"images must have shape (N, 28, 28, 1), got {images.shape}")
    probs, feats = [], []
    for start in range(0, len(images), batch_size):
        batch = images[start:start + batch_size]
        n = len(batch)
        if n < batch_size:
            batch = np.concatenate([batch, np.zeros((batch_size - n, 28, 28, 1), np.float32)])
        p, f = jax.device_get(_apply(params, batch))
        probs.append(p[:n])
        feats.append(f[:n])
    return (np.concatenate(probs).astype(np.float64), np.concatenate(feats).astype(np.float64))
