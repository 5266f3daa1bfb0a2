"""Orbax checkpoints of a run: everything needed to continue it exactly.

RUN_DIR/checkpoints/<epoch>/ (one folder per saved epoch, the last `keep` kept) holds three items:
  state/    the TrainState arrays: step, G/D params, BatchNorm statistics, both optax states
  history/  the per-step metrics so far (float32 arrays, as step_metrics.npz)
  meta/     JSON: epoch, the resolved config, the per-epoch metrics records so far, the number and
            the sha256 of the training images (a resumed run must see the same), and a sha256 of
            the state arrays
and files.sha256, a JSON {relative path: sha256} of every file orbax wrote, added once it has.
The PRNG key stream needs no saving: the key of every epoch is epoch_key(train_key, epoch) with
train_key from the seed, so the epoch counter is the stream's position.

Orbax writes a checkpoint into a temporary folder and renames it into place only when every item
is complete, so a crash mid-save never leaves a folder that looks like a checkpoint (leftovers are
cleaned at the next start; a save that fails removes its own). Bytes that rot later are caught by
files.sha256 before orbax reads anything: orbax abandons the reads still in flight when one fails,
which leaves unfinished coroutines and tensorstore callbacks behind. The sha256 of the state in
meta checks the arrays as restored. A corrupt checkpoint is moved to RUN_DIR/corrupt_checkpoints/
and the previous one is used.
"""
import dataclasses
import hashlib
import json
import os
import re
import shutil
from typing import Callable, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp

from .config import Config, ConfigError
from .outputs import WriteError, atomic_write, os_cause
from .train import TrainState, create_train_state

# Fields a resumed run may change: they decide how long, from where and in which form, not what
# is computed (kernels change only float rounding).
RESUMABLE_FIELDS = ("epochs", "data_dir", "tfds_data_dir", "loop", "kernels")


RESTART_HINT = "--overwrite starts the run again (the old one is moved aside to RUN_DIR.old-N)"
MANIFEST = "files.sha256"


class CheckpointError(Exception):
    """A checkpoint that cannot be used for this run; the message names the mismatch."""


class ResumeConflict(CheckpointError, ConfigError):
    """A resumed run asked for other settings than it was made with (a config error: exit 2)."""


class CorruptCheckpoint(CheckpointError):
    """A checkpoint whose files cannot be read back intact."""


@dataclasses.dataclass
class Restored:
    epoch: int
    state: TrainState
    records: list          # metrics.jsonl lines of epochs 1..epoch
    history: dict          # per-step metrics of epochs 1..epoch
    meta: dict


def state_digest(state: TrainState) -> str:
    """sha256 over every state array (dtype, shape, bytes) in pytree order."""
    h = hashlib.sha256()
    for leaf in jax.tree.leaves(state):
        a = np.asarray(leaf.addressable_data(0)) if isinstance(leaf, jax.Array) else np.asarray(leaf)
        h.update(f"{a.dtype}{a.shape}".encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def config_conflicts(saved: Config, asked: Config) -> list:
    """['field: saved X, asked Y', ...] for fields other than RESUMABLE_FIELDS."""
    a, b = saved.to_dict(), asked.to_dict()
    return [f"{k}={b[k]!r} but the run was made with {k}={a[k]!r}"
            for k in a if k not in RESUMABLE_FIELDS and a[k] != b[k]]


def _name(path) -> str:
    return ".".join(str(getattr(k, "name", getattr(k, "key", getattr(k, "idx", k)))) for k in path)


class RunCheckpoints:
    """The checkpoints folder of one run directory."""

    def __init__(self, run_dir: str, keep: int = 3):
        self.run_dir = os.path.abspath(run_dir)
        self.directory = os.path.join(self.run_dir, "checkpoints")
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True, cleanup_tmp_directories=True,
                                               enable_async_checkpointing=False)
        self.manager = ocp.CheckpointManager(
            self.directory, options=options,
            item_handlers={"state": ocp.StandardCheckpointHandler(),
                           "history": ocp.StandardCheckpointHandler(),
                           "meta": ocp.JsonCheckpointHandler()})

    def epochs(self) -> list:
        return sorted(self.manager.all_steps())

    def save(self, epoch: int, state: TrainState, records: list, history: dict, **info):
        meta = dict(info, epoch=epoch, config=state.config.to_dict(), records=records,
                    state_sha256=state_digest(state))
        history = {k: np.asarray(v, np.float32) for k, v in history.items()}
        where = os.path.join(self.directory, str(epoch))
        self._check_space(where)
        try:
            self.manager.save(epoch, args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), history=ocp.args.StandardSave(history),
                meta=ocp.args.JsonSave(meta)))
            self.manager.wait_until_finished()
            if jax.process_index() == 0:  # orbax has finalized every process's files by now
                atomic_write(os.path.join(where, MANIFEST), json.dumps(file_digests(where), indent=0).encode())
        except BaseException as e:  # interrupts too: what orbax left half-written goes
            for name in os.listdir(self.directory):
                if name.startswith(f"{epoch}.orbax-checkpoint-tmp"):
                    shutil.rmtree(os.path.join(self.directory, name), ignore_errors=True)
            self.manager.reload()
            if isinstance(e, Exception) and not isinstance(e, WriteError):
                raise WriteError(f"cannot write checkpoint {where}: {_cause(e)}") from None
            raise

    def _check_space(self, where: str):
        """Refuse a save the disk cannot hold, before orbax starts it.

        Orbax writes the new checkpoint before it deletes the oldest, so it needs about the room
        the last one took. A write failing midway is caught too (below), but orbax then abandons
        its other writes, whose callbacks print tracebacks from tensorstore's threads.
        """
        last = self.epochs()
        if not last:
            return
        size = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in
                   os.walk(os.path.join(self.directory, str(last[-1]))) for f in fs)
        free = shutil.disk_usage(self.directory).free
        if free < 1.1 * size:
            raise WriteError(f"cannot write checkpoint {where}: no space left on device ({free / 2**20:.0f} MiB "
                             f"free, the last checkpoint took {size / 2**20:.0f} MiB)")

    def restore_latest(self, config: Config, place: Callable[[TrainState], TrainState],
                       log: Callable[[str], None] = print) -> Optional[Restored]:
        """The newest intact checkpoint, restored for `config`; None if there is none.

        A corrupt checkpoint is reported through `log`, moved aside and the previous one tried;
        one made for another config or architecture raises CheckpointError naming the mismatch.
        `place(abstract_state)` gives the ShapeDtypeStructs (with shardings) to restore into.
        """
        skipped = []
        for epoch in reversed(self.epochs()):
            try:
                restored = self._restore(epoch, config, place)
            except CorruptCheckpoint as e:
                moved = self._move_aside(epoch)
                log(f"warning: checkpoint of epoch {epoch} is corrupt ({e}); moved to {moved}, "
                    f"falling back to the previous one")
                skipped.append(epoch)
                continue
            if skipped:
                log(f"resuming from the checkpoint of epoch {epoch} (skipped corrupt epoch(s) "
                    f"{', '.join(map(str, skipped))})")
            return restored
        if skipped:
            raise CheckpointError(f"{self.directory}: no intact checkpoint left (corrupt: epochs "
                                  f"{', '.join(map(str, skipped))}; moved to corrupt_checkpoints/); "
                                  f"{RESTART_HINT}")
        return None

    def _restore(self, epoch: int, config: Config, place) -> Restored:
        where = os.path.join(self.directory, str(epoch))
        _check_files(where)
        try:
            meta = self.manager.restore(epoch, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta
            saved = Config.from_dict(meta["config"])
        except Exception as e:  # any failure to read or parse: the files are damaged
            raise CorruptCheckpoint(f"meta unreadable: {_short(e)}") from None
        conflicts = config_conflicts(saved, config)
        if conflicts:
            raise ResumeConflict(f"{where}: {'; '.join(conflicts)} (a resumed run keeps its config)")
        abstract = place(jax.eval_shape(lambda: create_train_state(config, jax.random.key(0))))
        self._check_shapes(epoch, abstract, where)
        try:
            items = self.manager.restore(epoch, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract), history=ocp.args.StandardRestore()))
        except Exception as e:
            raise CorruptCheckpoint(f"arrays unreadable: {_short(e)}") from None
        if state_digest(items.state) != meta["state_sha256"]:
            raise CorruptCheckpoint("state arrays differ from their saved sha256")
        history = {k: np.asarray(v, np.float32) for k, v in items.history.items()}
        return Restored(epoch, items.state, meta["records"], history, meta)

    def _check_shapes(self, epoch: int, abstract: TrainState, where: str):
        try:
            saved = {_name(p): tuple(m.shape)
                     for p, m in jax.tree_util.tree_flatten_with_path(self.manager.item_metadata(epoch)["state"])[0]}
        except Exception as e:
            raise CorruptCheckpoint(f"state metadata unreadable: {_short(e)}") from None
        wanted = {_name(p): tuple(x.shape) for p, x in jax.tree_util.tree_flatten_with_path(abstract)[0]}
        if saved.keys() != wanted.keys():
            diff = sorted(saved.keys() ^ wanted.keys())
            raise CheckpointError(f"{where}: arrays differ from this model's ({diff[0]} and "
                                  f"{len(diff) - 1} more); made with another architecture?")
        for name, shape in wanted.items():
            if saved[name] != shape:
                raise CheckpointError(f"{where}: {name} has shape {saved[name]}, this config needs {shape} "
                                      f"(made with another latent size or architecture?)")

    def _move_aside(self, epoch: int) -> str:
        target = os.path.join(self.run_dir, "corrupt_checkpoints", f"epoch_{epoch}")
        os.makedirs(os.path.dirname(target), exist_ok=True)
        n = 1
        while os.path.exists(target + (f".{n}" if n > 1 else "")):
            n += 1
        target += f".{n}" if n > 1 else ""
        os.replace(os.path.join(self.directory, str(epoch)), target)
        self.manager.reload()
        return os.path.relpath(target, self.run_dir)

    def close(self):
        self.manager.close()


def file_digests(folder: str) -> dict:
    """{path relative to folder: sha256} of every file under folder but the manifest."""
    digests = {}
    for root, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(root, name)
            rel = os.path.relpath(path, folder)
            if rel != MANIFEST:
                h = hashlib.sha256()
                with open(path, "rb") as f:
                    for block in iter(lambda: f.read(1 << 20), b""):
                        h.update(block)
                digests[rel] = h.hexdigest()
    return digests


def _check_files(where: str):
    """Raise CorruptCheckpoint if a file differs from files.sha256 (absent in checkpoints saved
    before it existed, or by a process killed between orbax's save and the manifest: not checked)."""
    path = os.path.join(where, MANIFEST)
    if not os.path.exists(path):
        return
    try:
        with open(path) as f:
            saved = json.load(f)
        found = file_digests(where)
    except (OSError, ValueError) as e:
        raise CorruptCheckpoint(f"{MANIFEST} unreadable: {_short(e)}") from None
    changed = sorted(k for k in saved.keys() | found.keys() if saved.get(k) != found.get(k))
    if changed:
        more = f" and {len(changed) - 1} more" if len(changed) > 1 else ""
        raise CorruptCheckpoint(f"{changed[0]}{more} differ from their sha256 at save")


def _cause(e: Exception) -> str:
    """The OS's reason inside an orbax/tensorstore error ("no space left on device"), else its line."""
    if isinstance(e, OSError):
        return os_cause(e)
    code = re.search(r"os_error_code='?(\d+)", str(e))
    return os_cause(OSError(int(code.group(1)), os.strerror(int(code.group(1))))) if code else _short(e)


def _short(e: Exception) -> str:
    """One short line of an exception (tensorstore's run to pages)."""
    lines = str(e).strip().splitlines()
    text = lines[0].split(" See full TensorStore details")[0] if lines else ""
    return f"{type(e).__name__}: {text[:120] + '...' if len(text) > 120 else text}"
