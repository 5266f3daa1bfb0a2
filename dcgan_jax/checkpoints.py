"""Orbax checkpoints of a run: everything needed to continue it exactly.

RUN_DIR/checkpoints/<epoch>/ holds the state at the end of an epoch (the last `keep` kept);
RUN_DIR/mid_epoch_checkpoint/<step>/ the state after a step inside an epoch (saved when the run
is interrupted, and every --checkpoint-every-steps steps), named by the run's step count; it is
removed once a later epoch end is saved. Each holds three items:
  state/    the TrainState arrays: step, G/D params, BatchNorm statistics, both optax states
  history/  the per-step metrics so far (float32 arrays, as step_metrics.npz)
  meta/     JSON: the epochs completed and the steps done in the next, the resolved config, the
            per-epoch metrics records so far, the number and the sha256 of the training images
            (a resumed run must see the same), and a sha256 of the state arrays
and files.sha256, a JSON {relative path: sha256} of every file orbax wrote, added once it has.
The PRNG key stream needs no saving: the key of every epoch is epoch_key(train_key, epoch) with
train_key from the seed, and the batches and keys of its steps are a function of that key and the
step's index, so (epoch, step) is the stream's position.

Orbax writes a checkpoint into a temporary folder and renames it into place only when every item
is complete, so a crash mid-save never leaves a folder that looks like a checkpoint (leftovers are
cleaned at the next start; a save that fails removes its own). Bytes that rot later are caught by
files.sha256 before orbax reads anything: orbax abandons the reads still in flight when one fails,
which leaves unfinished coroutines and tensorstore callbacks behind. The sha256 of the state in
meta checks the arrays as restored. A corrupt checkpoint is moved to RUN_DIR/corrupt_checkpoints/
and the previous one is used.
"""
import contextlib
import dataclasses
import hashlib
import json
import os
import re
import shutil
import signal
import threading
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
    epoch: int             # epochs completed
    state: TrainState
    records: list          # metrics.jsonl lines of epochs 1..epoch
    history: dict          # per-step metrics of every step done (epochs 1..epoch, then steps_in_epoch)
    meta: dict
    steps_in_epoch: int = 0  # steps done in epoch + 1 (a mid-epoch checkpoint)

    def position(self) -> str:
        return position(self.epoch, self.steps_in_epoch, self.state.config.steps_per_epoch)


def position(epoch: int, steps_in_epoch: int, steps_per_epoch: int) -> str:
    """Where a checkpoint is in the run, in words."""
    if not steps_in_epoch:
        return f"epoch {epoch}"
    return f"step {steps_in_epoch} of {steps_per_epoch} of epoch {epoch + 1}"


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
    """The checkpoints of one run directory: epoch ends and the newest mid-epoch state."""

    def __init__(self, run_dir: str, keep: int = 3):
        self.run_dir = os.path.abspath(run_dir)
        self.directory = os.path.join(self.run_dir, "checkpoints")
        self.mid_directory = os.path.join(self.run_dir, "mid_epoch_checkpoint")
        self.manager = _manager(self.directory, keep)
        self._mid = None   # made when needed: most runs never have one

    @property
    def mid(self) -> ocp.CheckpointManager:
        if self._mid is None:
            self._mid = _manager(self.mid_directory, 1)
        return self._mid

    def epochs(self) -> list:
        """The epochs whose ends are checkpointed, oldest first."""
        return sorted(self.manager.all_steps())

    def mid_epoch_steps(self) -> list:
        """The run's step counts of the mid-epoch checkpoints (at most one, but for a crash)."""
        return sorted(self.mid.all_steps()) if os.path.isdir(self.mid_directory) else []

    def latest(self, steps_per_epoch: int) -> Optional[tuple]:
        """(epochs completed, steps done in the next) of the newest checkpoint, unread; None if none."""
        found = [(e * steps_per_epoch, e, 0) for e in self.epochs()]
        found += [(s, s // steps_per_epoch, s % steps_per_epoch) for s in self.mid_epoch_steps()]
        return max(found)[1:] if found else None

    def path_of(self, epoch: int, steps_in_epoch: int, steps_per_epoch: int) -> str:
        """The folder of the checkpoint at that position."""
        if steps_in_epoch:
            return os.path.join(self.mid_directory, str(epoch * steps_per_epoch + steps_in_epoch))
        return os.path.join(self.directory, str(epoch))

    def save(self, epoch: int, state: TrainState, records: list, history: dict, steps_in_epoch: int = 0, **info):
        """Checkpoint `state`, the state after `epoch` epochs and `steps_in_epoch` steps of the next
        one, described by `records` (of the completed epochs) and `history` (of every step)."""
        steps_per_epoch = state.config.steps_per_epoch
        step = epoch * steps_per_epoch + steps_in_epoch
        manager, name = (self.mid, step) if steps_in_epoch else (self.manager, epoch)
        meta = dict(info, epoch=epoch, steps_in_epoch=steps_in_epoch, config=state.config.to_dict(),
                    records=records, state_sha256=state_digest(state))
        history = {k: np.asarray(v, np.float32) for k, v in history.items()}
        where = self.path_of(epoch, steps_in_epoch, steps_per_epoch)
        self._check_space(where)
        try:
            manager.save(name, args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), history=ocp.args.StandardSave(history),
                meta=ocp.args.JsonSave(meta)))
            manager.wait_until_finished()
            if jax.process_index() == 0:  # orbax has finalized every process's files by now
                atomic_write(os.path.join(where, MANIFEST), json.dumps(file_digests(where), indent=0).encode())
        except BaseException as e:  # interrupts too: what orbax left half-written goes
            for entry in os.listdir(manager.directory):
                if entry.startswith(f"{name}.orbax-checkpoint-tmp"):
                    shutil.rmtree(os.path.join(manager.directory, entry), ignore_errors=True)
            manager.reload()
            if isinstance(e, Exception) and not isinstance(e, WriteError):
                raise WriteError(f"cannot write checkpoint {where}: {_cause(e)}") from None
            raise
        if not steps_in_epoch and jax.process_index() == 0:
            self._drop_mid_epoch(up_to=step)

    def _drop_mid_epoch(self, up_to: int):
        """Delete the mid-epoch checkpoints an epoch end at step `up_to` supersedes (and their
        folder, once empty)."""
        steps = self.mid_epoch_steps()
        for step in steps:
            if step <= up_to:
                self.mid.delete(step)
        if steps and not self.mid_epoch_steps() and not os.listdir(self.mid_directory):
            self.mid.close()
            self._mid = None
            os.rmdir(self.mid_directory)

    def _check_space(self, where: str):
        """Refuse a save the disk cannot hold, before orbax starts it.

        Orbax writes the new checkpoint before it deletes the oldest, so it needs about the room
        the last one took. A write failing midway is caught too (above), but orbax then abandons
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
        """The newest intact checkpoint (epoch end or mid-epoch), restored for `config`; None if
        there is none.

        A corrupt checkpoint is reported through `log`, moved aside and the previous one tried;
        one made for another config or architecture raises CheckpointError naming the mismatch.
        `place(abstract_state)` gives the ShapeDtypeStructs (with shardings) to restore into.
        """
        spe = config.steps_per_epoch
        found = [(e * spe, self.manager, e) for e in self.epochs()]
        found += [(s, self.mid, s) for s in self.mid_epoch_steps()]
        skipped = []
        for step, manager, name in sorted(found, key=lambda f: f[0], reverse=True):
            label = position(step // spe, step % spe, spe)
            try:
                restored = self._restore(manager, name, step, config, place)
            except CorruptCheckpoint as e:
                moved = self._move_aside(manager, name, mid_epoch=manager is not self.manager)
                log(f"warning: checkpoint of {label} is corrupt ({e}); moved to {moved}, "
                    f"falling back to the previous one")
                skipped.append(label)
                continue
            if skipped:
                log(f"resuming from the checkpoint of {label} (skipped corrupt: {', '.join(skipped)})")
            return restored
        if skipped:
            raise CheckpointError(f"{self.directory}: no intact checkpoint left (corrupt: {', '.join(skipped)}; "
                                  f"moved to corrupt_checkpoints/); {RESTART_HINT}")
        return None

    def _restore(self, manager, name: int, step: int, config: Config, place) -> Restored:
        where = os.path.join(str(manager.directory), str(name))
        _check_files(where)
        try:
            meta = manager.restore(name, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta
            saved = Config.from_dict(meta["config"])
            epoch, steps_in_epoch = meta["epoch"], meta.get("steps_in_epoch", 0)
        except Exception as e:  # any failure to read or parse: the files are damaged
            raise CorruptCheckpoint(f"meta unreadable: {_short(e)}") from None
        conflicts = config_conflicts(saved, config)
        if conflicts:
            raise ResumeConflict(f"{where}: {'; '.join(conflicts)} (a resumed run keeps its config)")
        if epoch * config.steps_per_epoch + steps_in_epoch != step:
            raise CorruptCheckpoint(f"its meta says {position(epoch, steps_in_epoch, config.steps_per_epoch)}, "
                                    f"its folder step {step}")
        abstract = place(jax.eval_shape(lambda: create_train_state(config, jax.random.key(0))))
        self._check_shapes(manager, name, abstract, where)
        try:
            items = manager.restore(name, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract), history=ocp.args.StandardRestore()))
        except Exception as e:
            raise CorruptCheckpoint(f"arrays unreadable: {_short(e)}") from None
        if state_digest(items.state) != meta["state_sha256"]:
            raise CorruptCheckpoint("state arrays differ from their saved sha256")
        if int(np.asarray(items.state.step.addressable_data(0))) != step:
            raise CorruptCheckpoint(f"its state has done {int(np.asarray(items.state.step.addressable_data(0)))} "
                                    f"steps, its folder says {step}")
        history = {k: np.asarray(v, np.float32) for k, v in items.history.items()}
        return Restored(epoch, items.state, meta["records"], history, meta, steps_in_epoch)

    def _check_shapes(self, manager, name: int, abstract: TrainState, where: str):
        try:
            saved = {_name(p): tuple(m.shape)
                     for p, m in jax.tree_util.tree_flatten_with_path(manager.item_metadata(name)["state"])[0]}
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

    def _move_aside(self, manager, name: int, mid_epoch: bool) -> str:
        target = os.path.join(self.run_dir, "corrupt_checkpoints", f"{'step' if mid_epoch else 'epoch'}_{name}")
        os.makedirs(os.path.dirname(target), exist_ok=True)
        n = 1
        while os.path.exists(target + (f".{n}" if n > 1 else "")):
            n += 1
        target += f".{n}" if n > 1 else ""
        os.replace(os.path.join(str(manager.directory), str(name)), target)
        manager.reload()
        return os.path.relpath(target, self.run_dir)

    def close(self):
        self.manager.close()
        if self._mid is not None:
            self._mid.close()


def _manager(directory: str, keep: int) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True, cleanup_tmp_directories=True,
                                           enable_async_checkpointing=False)
    return ocp.CheckpointManager(directory, options=options,
                                 item_handlers={"state": ocp.StandardCheckpointHandler(),
                                                "history": ocp.StandardCheckpointHandler(),
                                                "meta": ocp.JsonCheckpointHandler()})


@contextlib.contextmanager
def signals_deferred():
    """SIGINT and SIGTERM arriving inside the block are handled, as they would have been, when it
    ends. A checkpoint save is then whole or not started: one cut short leaves orbax's threads
    writing into a folder that the cleanup removes under them."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending = []
    handlers = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    for signum in handlers:
        signal.signal(signum, lambda signum, frame: pending.append((signum, frame)))
    try:
        yield
    finally:
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
        if pending:
            signum, frame = pending[0]
            if callable(handlers[signum]):
                handlers[signum](signum, frame)
            elif handlers[signum] == signal.SIG_DFL:
                os.kill(os.getpid(), signum)


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
