"""The run directory: config.json, metrics.jsonl, sample grids, loss curves, final variables.

Layout (all paths relative to the run directory):
  config.json               the full resolved Config
  metrics.jsonl             one JSON object per epoch: epoch, loss_d, loss_g, d_real, d_fake, lr, seconds
  step_metrics.npz          per-step loss_d, loss_g, d_real, d_fake over the whole run
  samples/epoch_001.png     4x4 grid of G(fixed noise) after each epoch
  losses.png                per-step G and D loss curves (as the tutorial plots them)
  generator.msgpack         final generator variables {"params", "batch_stats"} (flax.serialization)
  discriminator.msgpack     final discriminator variables, same format
  checkpoints/<epoch>/      orbax checkpoints of the full training state (layout in checkpoints.py)
  corrupt_checkpoints/      checkpoints found damaged on resume, moved here rather than deleted
Every file is written to a temporary name and renamed into place, so none is ever half-written.
"""
import json
import os
import shutil
import tempfile

import numpy as np
from flax import serialization

from .config import Config

METRIC_KEYS = ("loss_d", "loss_g", "d_real", "d_fake")


class RunDirError(Exception):
    """The run directory cannot be used as asked; nothing in it was changed."""


def prepare_run_dir(path: str, overwrite: bool = False) -> str:
    """Create `path`; refuse a non-empty one unless overwrite; fail early if it is not writable."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise RunDirError(f"run dir {path!r} exists and is not a folder")
    if os.path.isdir(path) and os.listdir(path):
        if not overwrite:
            raise RunDirError(f"run dir {path!r} exists and is not empty; pass --resume {path} to "
                              f"continue it, --overwrite to replace it, or --out elsewhere")
        if not os.path.isfile(os.path.join(path, "config.json")):
            raise RunDirError(f"{path!r} is not a run directory (no config.json) and --overwrite replaces "
                              f"run directories only; empty it yourself or pass another --out")
        if not os.access(path, os.W_OK):
            raise RunDirError(f"run dir {path!r} is not writable")
        shutil.rmtree(path)
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path):
            pass
    except OSError as e:
        raise RunDirError(f"run dir {path!r} is not writable ({e.strerror})") from None
    return path


def check_resumable(path: str):
    """A run directory this program made, that can be written to."""
    if not os.path.isdir(path):
        raise RunDirError(f"run dir {path!r} " + ("is not a folder" if os.path.exists(path) else
                                                  "does not exist") + ": nothing to resume")
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise RunDirError(f"run dir {path!r} has no config.json: not a run directory to resume")
    try:
        with tempfile.NamedTemporaryFile(dir=path):
            pass
    except OSError as e:
        raise RunDirError(f"run dir {path!r} is not writable ({e.strerror})") from None


def atomic_write(path: str, data: bytes):
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_config(run_dir: str, config: Config, **extra):
    atomic_write(os.path.join(run_dir, "config.json"),
                 json.dumps(dict(config.to_dict(), **extra), indent=2).encode())


def read_run_info(run_dir: str) -> dict:
    """config.json as written: the config's fields and the run's extras (backend, keep, ...)."""
    with open(os.path.join(run_dir, "config.json")) as f:
        info = json.load(f)
    if not isinstance(info, dict):
        raise ValueError(f"a JSON {type(info).__name__}, not an object of config fields")
    return info


def read_config(run_dir: str) -> Config:
    d = read_run_info(run_dir)
    known = set(Config.__dataclass_fields__)
    return Config.from_dict({k: v for k, v in d.items() if k in known})


def write_metrics(run_dir: str, records: list):
    """Rewrite metrics.jsonl whole; Python floats round-trip exactly through json."""
    text = "".join(json.dumps(r) + "\n" for r in records)
    atomic_write(os.path.join(run_dir, "metrics.jsonl"), text.encode())


def read_metrics(run_dir: str) -> list:
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def write_step_metrics(run_dir: str, history: dict):
    path = os.path.join(run_dir, "step_metrics.npz")
    tmp = path + ".tmp.npz"
    np.savez(tmp, **{k: np.asarray(v, np.float32) for k, v in history.items()})
    os.replace(tmp, path)


def image_grid(images: np.ndarray, ncol: int = 4, pad: int = 2) -> np.ndarray:
    """(N, H, W, 1) in [0, 1] -> one (rows*(H+pad)+pad, ncol*(W+pad)+pad) image."""
    images = np.asarray(images, np.float32)[..., 0]
    n, h, w = images.shape
    nrow = -(-n // ncol)
    grid = np.ones((nrow * (h + pad) + pad, ncol * (w + pad) + pad), np.float32)
    for i, img in enumerate(images):
        r, c = divmod(i, ncol)
        grid[pad + r * (h + pad): pad + r * (h + pad) + h, pad + c * (w + pad): pad + c * (w + pad) + w] = img
    return grid


def save_grid(path: str, images: np.ndarray, ncol: int = 4, scale: int = 4):
    import matplotlib.image
    grid = np.kron(image_grid(images, ncol), np.ones((scale, scale), np.float32))
    tmp = path + ".tmp.png"
    os.makedirs(os.path.dirname(path), exist_ok=True)
    matplotlib.image.imsave(tmp, grid, cmap="gray", vmin=0, vmax=1)
    os.replace(tmp, path)


def plot_losses(path: str, loss_g, loss_d, steps_per_epoch: int):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(10, 5))
    ax.plot(loss_g, label="G", lw=0.8)
    ax.plot(loss_d, label="D", lw=0.8)
    ax.set_xlabel(f"iteration ({steps_per_epoch} per epoch)")
    ax.set_ylabel("loss")
    ax.set_title("Generator and Discriminator loss during training")
    ax.legend()
    fig.tight_layout()
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)


def save_variables(run_dir: str, generator_variables, discriminator_variables):
    for name, variables in (("generator", generator_variables), ("discriminator", discriminator_variables)):
        state = serialization.to_state_dict(jax_to_numpy(variables))
        atomic_write(os.path.join(run_dir, f"{name}.msgpack"), serialization.msgpack_serialize(state))


def jax_to_numpy(tree):
    import jax
    return jax.tree.map(np.asarray, tree)


def load_variables(run_dir: str):
    """(config, generator_variables, discriminator_variables) of a finished run directory.

    The variables are checked against freshly initialised ones of the run's config: a file from
    another architecture or latent size fails with the first mismatching entry named.
    """
    import jax
    from .train import build_models
    config = read_config(run_dir)
    generator, discriminator = build_models(config)
    init = lambda module, shape: jax.eval_shape(  # shapes and dtypes only, nothing computed
        lambda: module.init(jax.random.key(0), np.zeros(shape, np.float32), train=False))
    templates = {"generator": init(generator, (1, config.latent_dim)),
                 "discriminator": init(discriminator, (1, 28, 28, 1))}
    loaded = []
    for name, template in templates.items():
        path = os.path.join(run_dir, f"{name}.msgpack")
        with open(path, "rb") as f:
            try:
                state = serialization.msgpack_restore(f.read())
            except Exception as e:
                raise RunDirError(f"{path}: not a readable msgpack file ({e})") from None
        check_tree(template, state, path)
        loaded.append(jax.tree.map(lambda t, v: np.asarray(v, dtype=t.dtype), template, state))
    return config, loaded[0], loaded[1]


def check_tree(template, tree, where: str):
    """Raise naming the first key or shape where `tree` differs from `template`."""
    def walk(t, v, path):
        if isinstance(t, dict) or hasattr(t, "keys"):
            if not hasattr(v, "keys"):
                raise RunDirError(f"{where}: {path or 'root'} should be a mapping")
            missing, extra = set(t) - set(v), set(v) - set(t)
            if missing or extra:
                raise RunDirError(f"{where}: {path or 'root'}: missing {sorted(missing)} / unexpected "
                                  f"{sorted(extra)} (saved from another model?)")
            for k in t:
                walk(t[k], v[k], f"{path}/{k}")
        elif np.shape(t) != np.shape(v):
            raise RunDirError(f"{where}: {path} has shape {np.shape(v)}, this config needs {np.shape(t)} "
                              f"(saved with another latent size or architecture?)")
    walk(template, tree, "")
