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
  mid_epoch_checkpoint/<step>/  the same, after a step inside an epoch (interrupt, every N steps)
  corrupt_checkpoints/      checkpoints found damaged on resume, moved here rather than deleted
  .dcgan_jax_run            written when this program creates the folder: the proof that
                            --overwrite may move it aside (to RUN_DIR.old-N; nothing is deleted),
                            and that a start which checkpointed nothing may be removed
  .dcgan_jax_lock           flock'ed by the one process using the run directory
Every file is written to a temporary name and renamed into place, so none is ever half-written;
a write that fails (no space left) raises WriteError naming the file and leaves the old version.
"""
import contextlib
import fcntl
import json
import os
import tempfile
from typing import BinaryIO, Callable, Optional, Union

import numpy as np
from flax import serialization

from .config import Config

METRIC_KEYS = ("loss_d", "loss_g", "d_real", "d_fake")


class RunDirError(Exception):
    """The run directory cannot be used as asked; nothing in it was changed."""


class WriteError(RunDirError):
    """A file of the run could not be written (disk full, I/O error); the message names the path
    and the cause. The file's previous version, if any, is left as it was."""


MARKER = ".dcgan_jax_run"   # written when this program creates a run directory: proof it is ours
LOCK = ".dcgan_jax_lock"    # flock'ed by the one process using the run directory


def mark_run_dir(path: str):
    """Record that this program created `path`: only a marked folder may be moved by --overwrite."""
    atomic_write(os.path.join(path, MARKER), json.dumps({"created_by": "dcgan_jax"}).encode())


def is_marked(path: str) -> bool:
    marker = os.path.join(path, MARKER)
    if not os.path.isfile(marker) or os.path.islink(marker):
        return False
    try:
        with open(marker) as f:
            return json.load(f).get("created_by") == "dcgan_jax"
    except (OSError, ValueError, AttributeError):
        return False


def prepare_run_dir(path: str, overwrite: bool = False, protected=()) -> Optional[str]:
    """Create and mark the run directory `path`; fail early if it cannot be written.

    A non-empty `path` is refused unless `overwrite`, and then only if it is provably a run of
    ours (marked at creation), not the current directory or one of its ancestors, holds none of
    the `protected` paths (data, caches) and is not in use by another process. Such a run is moved
    aside to a sibling PATH.old-N (a rename: nothing is deleted, the user removes it when sure)
    and that new location is returned; otherwise None. Symlinks are resolved first.
    """
    real = os.path.realpath(path)
    if os.path.exists(real) and not os.path.isdir(real):
        raise RunDirError(f"run dir {path!r} exists and is not a folder")
    moved = None
    if os.path.isdir(real) and set(os.listdir(real)) - {MARKER, LOCK}:  # ours alone: a start cut short
        if not overwrite:
            raise RunDirError(f"run dir {path!r} exists and is not empty; pass --resume {path} to "
                              f"continue it, --overwrite to replace it, or --out elsewhere")
        _check_replaceable(path, real, protected)
        with run_dir_lock(real):
            moved = _move_aside(path, real)
    try:
        os.makedirs(real, exist_ok=True)
        mark_run_dir(real)
    except (OSError, WriteError) as e:
        cause = e.strerror if isinstance(e, OSError) else str(e)
        raise RunDirError(f"run dir {path!r} is not writable ({cause})") from None
    return moved


def _check_replaceable(path: str, real: str, protected):
    cwd = os.path.realpath(os.getcwd())
    if _contains(real, cwd):
        raise RunDirError(f"--overwrite refuses {path!r}: it is the current directory or holds it")
    for p in protected:
        if p and "://" not in str(p) and _contains(real, os.path.realpath(p)):
            raise RunDirError(f"--overwrite refuses {path!r}: it holds {str(p)!r}, which must be kept")
    if not is_marked(real):
        if os.path.isfile(os.path.join(real, "config.json")):
            raise RunDirError(f"--overwrite refuses {path!r}: a run made before run directories were "
                              f"marked as ours ({MARKER}), so not provably one; remove it yourself "
                              f"or pass another --out")
        raise RunDirError(f"--overwrite refuses {path!r}: not a run directory made by dcgan_jax "
                          f"(no {MARKER}); empty it yourself or pass another --out")


def _contains(folder: str, path: str) -> bool:
    return os.path.commonpath([folder, path]) == folder


def _move_aside(path: str, real: str) -> str:
    n = 1
    while os.path.lexists(f"{real}.old-{n}"):
        n += 1
    try:
        os.rename(real, f"{real}.old-{n}")
    except OSError as e:
        raise RunDirError(f"--overwrite could not move {path!r} aside to {real}.old-{n} "
                          f"({e.strerror})") from None
    return f"{real}.old-{n}"


@contextlib.contextmanager
def run_dir_lock(path: str):
    """Hold the run directory `path` for this process: a second process gets RunDirError at once.

    An advisory flock on PATH/.dcgan_jax_lock; the kernel drops it when the process ends however
    it ends, so a killed run leaves no stale lock. The file stays (deleting a lock file races
    with a process about to take it) and holds the last holder's pid, for the message.
    """
    try:
        fd = os.open(os.path.join(path, LOCK), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as e:
        raise RunDirError(f"run dir {path!r}: cannot open its lock file ({e.strerror})") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise RunDirError(f"run dir {path!r} is in use by another process (pid {holder})") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)


START = {MARKER, LOCK, "config.json", "checkpoints"}   # all a run holds before its first checkpoint


def remove_unstarted_run(path: str, remove_folder: bool = True) -> bool:
    """Undo the start of a run that checkpointed nothing (stopped by an out-of-memory error).

    Removes what prepare_run_dir and the start wrote, the marker, the lock file, config.json and an
    empty checkpoints/, and then, if `remove_folder` (the caller created the folder), the folder.
    Returns False, changing nothing, unless the folder is provably such a start: marked as ours,
    holding nothing else (no link among its entries), and not in use by another process.
    """
    real = os.path.realpath(path)
    if not _unstarted(real):
        return False
    try:
        with run_dir_lock(real):
            if not _unstarted(real):  # taken up by another process before the lock was ours
                return False
            if os.path.isdir(os.path.join(real, "checkpoints")):
                os.rmdir(os.path.join(real, "checkpoints"))
            for name in ("config.json", MARKER, LOCK):
                if os.path.lexists(os.path.join(real, name)):
                    os.remove(os.path.join(real, name))
    except (RunDirError, OSError):
        return False
    if remove_folder:
        with contextlib.suppress(OSError):  # written into meanwhile: it stays
            os.rmdir(real)
    return True


def _unstarted(real: str) -> bool:
    try:
        names = set(os.listdir(real))
        if not is_marked(real) or names - START:
            return False
        for name in names:
            entry = os.path.join(real, name)
            if os.path.islink(entry) or os.path.isdir(entry) != (name == "checkpoints"):
                return False
        return "checkpoints" not in names or not os.listdir(os.path.join(real, "checkpoints"))
    except OSError:
        return False


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


def atomic_write(path: str, content: Union[bytes, Callable[[BinaryIO], None]]):
    """Write `content` (bytes, or a function writing to a binary file) to `path`, whole or not at all.

    It goes to a temporary file in the same folder, synced, then renamed over `path`. Any failure
    (no space left, an I/O error, an interrupt) removes the temporary file, leaves `path` as it
    was, and an OSError is raised as WriteError naming the path and the cause.
    """
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        with open(tmp, "wb") as f:
            if callable(content):
                content(f)
            else:
                f.write(content)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        if os.path.lexists(tmp):
            os.remove(tmp)
        if isinstance(e, OSError):
            raise WriteError(f"cannot write {path}: {os_cause(e)}") from None
        raise


def os_cause(e: OSError) -> str:
    """'no space left on device' for ENOSPC: the OS's words, lower case, for a message's end."""
    text = e.strerror or str(e) or type(e).__name__
    return text[:1].lower() + text[1:]


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
    arrays = {k: np.asarray(v, np.float32) for k, v in history.items()}
    atomic_write(os.path.join(run_dir, "step_metrics.npz"), lambda f: np.savez(f, **arrays))


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
    atomic_write(path, lambda f: matplotlib.image.imsave(f, grid, cmap="gray", vmin=0, vmax=1, format="png"))


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
    save_figure(fig, path, dpi=100)


def save_figure(fig, path: str, **savefig_kwargs):
    """fig.savefig through atomic_write (format from the file name), then close the figure."""
    import matplotlib.pyplot as plt
    fmt = os.path.splitext(path)[1][1:] or "png"
    try:
        atomic_write(path, lambda f: fig.savefig(f, format=fmt, **savefig_kwargs))
    finally:
        plt.close(fig)


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
