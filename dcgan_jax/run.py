"""The training driver: data -> state -> epochs -> run directory. Host-side; the math is in train.py.

A run checkpoints every `checkpoint_every` epochs and at its last, every `checkpoint_every_steps`
steps inside an epoch if asked, and when it is interrupted (KeyboardInterrupt: Ctrl-C, or the
CLI's SIGTERM) at the last step it completed (checkpoints.py). Resuming restores the newest intact
checkpoint and replays from the step after it: every epoch's batches and noise come from (seed,
epoch) and the step's index alone, so a run killed at any point and resumed ends with the same
state, bit for bit on CPU, as one never interrupted.
"""
import contextlib
import hashlib
import os
import time
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from . import outputs, startup
from .checkpoints import (RESTART_HINT, CheckpointError, ResumeConflict, RunCheckpoints, config_conflicts,
                          position as checkpoint_position, signals_deferred)
from .config import Config, ConfigError
from .data import Dataset, load_mnist
from .parallel import DataParallel
from .kernels import resolve as resolve_kernels
from .runtime import out_of_memory
from .train import (TrainState, create_train_state, epoch_key, generate, generator_output, learning_rate, noise,
                    resolve_loop, run_keys, train_epoch)


FINAL_FILES = ("losses.png", "generator.msgpack", "discriminator.msgpack")

# One program for the whole copy, not one per array shape.
_copy = jax.jit(lambda tree: jax.tree.map(jnp.copy, tree))


class TrainingDiverged(RuntimeError):
    """A loss became NaN or Inf; the message names the step and the last good checkpoint."""


def load_train_data(config: Config) -> Dataset:
    data = load_mnist("train", config.data_dir, config.tfds_data_dir)
    if config.max_train_examples is not None:
        n = min(config.max_train_examples, len(data.images))
        data = Dataset(data.images[:n], data.labels[:n], data.source, data.genuine)
    return data


def resume_config(run_dir: str, **overrides) -> Config:
    """The config a run directory was made with, with `overrides` applied (fit checks them)."""
    outputs.check_resumable(run_dir)
    info = _run_info(run_dir)
    if not info:
        raise outputs.RunDirError(f"{os.path.join(run_dir, 'config.json')} holds no config (an empty object)")
    try:
        saved = Config.from_dict({k: v for k, v in info.items() if k in Config.__dataclass_fields__})
    except ValueError as e:
        raise outputs.RunDirError(f"{os.path.join(run_dir, 'config.json')}: {e}") from None
    return saved.replace(**overrides).validate()


def _run_info(run_dir: str) -> dict:
    try:
        return outputs.read_run_info(run_dir)
    except (OSError, ValueError) as e:
        raise outputs.RunDirError(f"{os.path.join(run_dir, 'config.json')} is unreadable ({e})") from None


def summary_line(record: dict, epochs: int) -> str:
    return (f"epoch {record['epoch']:>3}/{epochs}  loss_d {record['loss_d']:.4f}  "
            f"loss_g {record['loss_g']:.4f}  D(x) {record['d_real']:.3f}  "
            f"D(G(z)) {record['d_fake']:.3f}  lr {record['lr']:.2e}  {record['seconds']:.1f}s")


def fit(config: Config, run_dir: str, *, overwrite: bool = False, resume: bool = False,
        checkpoint_every: Optional[int] = None, keep: Optional[int] = None,
        checkpoint_every_steps: Optional[int] = None, progress: bool = True,
        log: Callable[[str], None] = print, data: Optional[Dataset] = None,
        parallel: Optional[DataParallel] = None) -> TrainState:
    """Train `config` and write the run directory (layout in outputs.py). Returns the final state.

    resume=True continues the run in `run_dir` from its newest intact checkpoint (a finished run
    is not retrained); `config` may differ from the run's only in checkpoints.RESUMABLE_FIELDS.
    checkpoint_every and keep default to the resumed run's, else to 1 and 3;
    checkpoint_every_steps (0: never; needs loop "steps") to the resumed run's, else 0.
    An interrupt (KeyboardInterrupt) checkpoints the state after the last completed step, then
    propagates.
    Everything that can be checked (config, data, run dir, devices) is checked before anything
    is written. `parallel` defaults to a DataParallel over all devices. A new run that runs out of
    memory before its first checkpoint leaves no run directory.
    """
    config = _absolute_paths(config.validate())
    if resume and overwrite:
        raise outputs.RunDirError("--resume continues a run and --overwrite replaces it: pass one")
    if resume:
        outputs.check_resumable(run_dir)
    saved = _run_info(run_dir) if resume else {}
    checkpoint_every = saved.get("checkpoint_every", 1) if checkpoint_every is None else checkpoint_every
    keep = saved.get("keep", 3) if keep is None else keep
    every_steps = saved.get("checkpoint_every_steps", 0) if checkpoint_every_steps is None else checkpoint_every_steps
    for name, value, least in (("checkpoint_every", checkpoint_every, 1), ("keep", keep, 1),
                               ("checkpoint_every_steps", every_steps, 0)):
        if not (isinstance(value, int) and not isinstance(value, bool) and value >= least):
            raise ConfigError(f"{name}={value!r}: must be a {'positive' if least else 'non-negative'} integer")
    if every_steps and resolve_loop(config.loop) == "scan":
        raise ConfigError(f"checkpoint_every_steps={every_steps} needs loop 'steps': a scanned epoch runs "
                          f"as one program (--loop steps, or --checkpoint-every-steps 0)")
    data = data or load_train_data(config)
    config = config.for_dataset(len(data.images))
    dp = parallel or DataParallel()
    dp.check_batch_size(config.batch_size)
    primary = jax.process_index() == 0
    log = log if primary else (lambda _: None)
    made_folder = False
    if not resume and primary:
        protected = (config.data_dir, config.tfds_data_dir, jax.config.jax_compilation_cache_dir)
        existed = os.path.isdir(run_dir)
        moved = outputs.prepare_run_dir(run_dir, overwrite, protected=[p for p in protected if p and "://" not in p])
        made_folder = not existed or moved is not None
        if moved:
            log(f"moved the previous run in {run_dir} aside to {moved}")
    _sync("run dir ready")

    try:
        with outputs.run_dir_lock(run_dir) if primary else contextlib.nullcontext():
            checkpoints = RunCheckpoints(run_dir, keep)
            try:
                return _fit(config, run_dir, data, dp, checkpoints, resume,
                            dict(checkpoint_every=checkpoint_every, keep=keep, checkpoint_every_steps=every_steps),
                            progress, log)
            finally:  # orbax's threads, left open, print tracebacks at exit
                checkpoints.close()
    except Exception as e:
        # A new run too large for the memory leaves no folder to clean up (runtime.out_of_memory
        # names what ran out): only a start that checkpointed nothing, provably ours, goes.
        if not resume and primary and out_of_memory(e):
            outputs.remove_unstarted_run(run_dir, remove_folder=made_folder)
        raise


def _fit(config: Config, run_dir: str, data: Dataset, dp: DataParallel, checkpoints: RunCheckpoints, resume: bool,
         schedule: dict, progress: bool, log: Callable[[str], None]) -> TrainState:
    primary = jax.process_index() == 0
    restored = checkpoints.restore_latest(config, dp.abstract, log) if resume else None
    images_sha256 = hashlib.sha256(data.images.tobytes()).hexdigest()   # 0.1 s for MNIST
    if restored and restored.meta.get("num_examples") != len(data.images):
        raise CheckpointError(f"{checkpoints.directory}/{restored.epoch}: made with {restored.meta.get('num_examples')} "
                              f"training images, this data has {len(data.images)} ({data.source})")
    if restored and restored.meta.get("images_sha256", images_sha256) != images_sha256:  # older ones lack it
        raise CheckpointError(f"{checkpoints.directory}/{restored.epoch}: made with other training images than "
                              f"{data.source} (sha256 of the image arrays differs); its epochs would not replay")
    if restored and restored.epoch + (restored.steps_in_epoch > 0) > config.epochs:
        trained = restored.position() if restored.steps_in_epoch else f"{restored.epoch} epochs"
        raise ResumeConflict(f"epochs={config.epochs}: {run_dir} has trained and checkpointed {trained}; "
                             f"--epochs can only extend a resumed run")
    if resume and restored is None and os.path.isdir(os.path.join(run_dir, "corrupt_checkpoints")):
        raise CheckpointError(f"{checkpoints.directory}: no intact checkpoint left (the corrupt ones are in "
                              f"corrupt_checkpoints/); {RESTART_HINT}")
    final_weights = os.path.join(run_dir, FINAL_FILES[1])
    if resume and os.path.exists(final_weights):
        finished_epochs = _run_info(run_dir).get("epochs")
        if restored is None or restored.epoch < finished_epochs:
            newest = restored.position() if restored else "none"
            raise CheckpointError(f"{run_dir} finished {finished_epochs} epochs ({final_weights} exists) but its "
                                  f"newest intact checkpoint is {newest}: resuming would train it again; "
                                  f"--out starts a new run")
    if resume and restored is None:  # killed before its first checkpoint: start it again
        conflicts = config_conflicts(outputs.read_config(run_dir), config)
        if conflicts:
            raise ResumeConflict(f"{os.path.join(run_dir, 'config.json')}: {'; '.join(conflicts)} "
                                 f"(a resumed run keeps its config)")
    loop = resolve_loop(config.loop)
    # A scanned epoch is one asynchronous dispatch: the next one starts before this one's
    # checkpoint, samples and logs are written, so the device trains meanwhile (docs/performance.md).
    # Steps keep the order.
    overlap = loop == "scan"
    start, first_step = (restored.epoch + 1, restored.steps_in_epoch) if restored else (1, 0)
    finished = start > config.epochs
    done = finished and all(os.path.exists(os.path.join(run_dir, f)) for f in FINAL_FILES)
    # Written before the start-up's compilations: a run stopped during them (Ctrl-C) is then one
    # that --resume starts again, not a folder only --overwrite can reuse.
    if primary and not done:
        outputs.write_config(run_dir, config, data_source=data.source, genuine_mnist=data.genuine,
                             backend=jax.default_backend(), devices=jax.device_count(),
                             processes=jax.process_count(), loop_resolved=loop,
                             kernels_resolved=resolve_kernels(config.kernels), jax_version=jax.__version__,
                             **schedule)
    if not finished:
        log("compiling the training programs (the first epoch's time includes what is left of it; the "
            "compile cache makes the next start faster)")
    state, images, fixed_z, train_key, learning_rates, initialised = _start(
        config, dp, data, restored.state if restored else None, None if finished else start, first_step, loop)
    if done:
        log(f"{run_dir} already finished: epoch {start - 1} of {config.epochs} is checkpointed; nothing to do")
        return state

    if finished:  # killed after its last checkpoint, before its final files
        log(f"{run_dir} already finished: epoch {start - 1} of {config.epochs} is checkpointed; "
            f"writing its final files")
    else:
        if restored:
            log(f"resuming {run_dir} after {restored.position()} (step {int(dp.to_host(state.step))})")
        log(f"{data.source}: {len(data.images)} images, {config.steps_per_epoch} steps of "
            f"{config.batch_size} per epoch, epochs {start}..{config.epochs}, order {config.order}, "
            f"dtype {config.dtype}, loop {loop}, kernels {resolve_kernels(config.kernels)} on "
            f"{dp.num_devices} {jax.default_backend()} device(s)")
    bar = _Bar(start, first_step, config) if progress and primary and not finished else None
    record = _Progress(state, restored)
    meta = dict(num_examples=len(data.images), images_sha256=images_sha256, data_source=data.source)
    every_steps, spe = schedule["checkpoint_every_steps"], config.steps_per_epoch

    def save(epoch, state, steps_in_epoch=0):
        with signals_deferred():  # an interrupt waits for the save, then finds it saved
            checkpoints.save(epoch, state, record.records[:epoch], record.history(epoch * spe + steps_in_epoch),
                             steps_in_epoch, **meta)
            record.saved = (epoch, steps_in_epoch)

    def start_epoch(state, epoch, begin=None, first_step=0):
        def on_step(i, state, metrics):
            if i + 1 < spe:  # the epoch's last step is published with its record, at its end
                record.step_done(epoch, i, state, metrics)
                if every_steps and (i + 1) % every_steps == 0:
                    save(epoch - 1, state, i + 1)
            if bar:
                bar.on_step(i, metrics)
        record.epoch_started()
        begin = begin or time.perf_counter()
        new_state, metrics = train_epoch(state, images, epoch_key(train_key, epoch), loop=loop,
                                         on_step=on_step, start=first_step)
        return begin, new_state, metrics

    try:
        running = None if finished else start_epoch(state, start, initialised, first_step)
        for epoch in range(start, config.epochs + 1):
            begin, new_state, ran = running
            ran = dp.to_host(ran)
            metrics = record.whole_epoch(epoch, spe, ran)
            seconds = time.perf_counter() - begin
            if bar:
                bar.epoch_done(epoch, len(ran["loss_d"]), loop == "scan")
            _check_finite(metrics, epoch, config, checkpoints)
            state = new_state
            record.epoch_done(epoch, state, ran, {
                "epoch": epoch, **{k: float(np.mean(metrics[k], dtype=np.float64)) for k in outputs.METRIC_KEYS},
                "lr": learning_rates[epoch - 1], "seconds": seconds})
            is_saved = epoch % schedule["checkpoint_every"] == 0 or epoch == config.epochs
            # Everything the device computes for this epoch's outputs is queued before the next epoch:
            # an op queued after it would wait for it (one stream), and the writes below with it.
            samples = generate(state, fixed_z, config.samples_bn, unit_range=True) if primary else None
            snapshot = state
            if overlap and epoch < config.epochs:
                if is_saved:  # the next epoch donates `state`'s buffers
                    snapshot = _copy(state)
                running = start_epoch(state, epoch + 1)
            if is_saved:
                save(epoch, snapshot)
            if primary:
                samples = dp.to_host(samples)
                outputs.save_grid(os.path.join(run_dir, "samples", f"epoch_{epoch:03d}.png"), samples)
            if primary and is_saved:  # the metrics files describe checkpointed epochs only
                outputs.write_metrics(run_dir, record.records)
                outputs.write_step_metrics(run_dir, record.history(epoch * spe))
            _above(bar, log, summary_line(record.records[-1], config.epochs))
            if not overlap and epoch < config.epochs:
                running = start_epoch(state, epoch + 1)
    except KeyboardInterrupt:
        _save_interrupted(record, save, checkpoints, config, bar, log)
        raise

    if bar:
        bar.close()
    if primary:
        steps = record.history(config.epochs * spe)
        outputs.plot_losses(os.path.join(run_dir, "losses.png"), steps["loss_g"], steps["loss_d"], spe)
        outputs.write_step_metrics(run_dir, steps)
        outputs.save_variables(run_dir, dp.to_host(state.generator_variables),
                               dp.to_host(state.discriminator_variables))
    return state


class _Progress:
    """The newest state the loop has, with the per-epoch records and per-step metrics that describe
    it, so that an interrupt can checkpoint it at any moment. Metrics are appended before the state
    that follows them is published (`latest`, one assignment), so `latest` never runs ahead of them."""

    def __init__(self, state: TrainState, restored):
        self.records = list(restored.records) if restored else []
        self.chunks = [restored.history] if restored else []   # per-step metrics, in order, as chunks
        position = (restored.epoch, restored.steps_in_epoch) if restored else (0, 0)
        self.latest = (state, *position)   # (state, epochs completed, steps done in the next)
        self.saved = position              # the newest checkpoint's position
        self.mark = 0                      # where the running epoch's per-step chunks start

    def history(self, steps: int) -> dict:
        """The per-step metrics of the run's first `steps` steps, on the host."""
        return {k: v[:steps] for k, v in _concatenate(self.chunks).items()}

    def epoch_started(self):
        self.mark = len(self.chunks)

    def step_done(self, epoch: int, i: int, state: TrainState, metrics: dict):
        self.chunks.append(metrics)
        self.latest = (state, epoch - 1, i + 1)

    def whole_epoch(self, epoch: int, steps_per_epoch: int, ran: dict) -> dict:
        """The metrics of all of `epoch`'s steps from those of the steps this process `ran` (host
        arrays): a resumed epoch's first steps come from its checkpoint."""
        before = {k: v[(epoch - 1) * steps_per_epoch:] for k, v in _concatenate(self.chunks[:self.mark]).items()}
        return {k: np.concatenate([before[k], ran[k]]) for k in outputs.METRIC_KEYS}

    def epoch_done(self, epoch: int, state: TrainState, ran: dict, record: dict):
        self.chunks[self.mark:] = [ran]   # one store: the steps run, stacked, replace their per-step chunks
        self.records.append(record)
        self.latest = (state, epoch, 0)


def _concatenate(chunks: list) -> dict:
    """Metric chunks (dicts of arrays of some steps, or of one step's scalars) -> one host array per metric."""
    return {k: np.concatenate([np.zeros(0, np.float32)] + [np.atleast_1d(DataParallel.to_host(c[k])) for c in chunks])
            for k in outputs.METRIC_KEYS}


def _save_interrupted(progress: _Progress, save: Callable, checkpoints: RunCheckpoints, config: Config, bar,
                      log: Callable[[str], None]):
    """Checkpoint the newest state an interrupt left, if no checkpoint has it yet. Not done for a
    scanned epoch's state, given to the next epoch (its checkpoint, if any, is the newest)."""
    state, epoch, steps_in_epoch = progress.latest
    if jax.process_count() > 1:  # a signal reaches one process, and a save needs them all
        return
    if (epoch, steps_in_epoch) <= progress.saved or any(
            leaf.is_deleted() for leaf in jax.tree.leaves(state) if isinstance(leaf, jax.Array)):
        return
    if bar:
        bar.close()
    where = checkpoint_position(epoch, steps_in_epoch, config.steps_per_epoch)
    try:
        save(epoch, state, steps_in_epoch)
    except Exception as e:   # the interrupt stays the reason the run ends
        log(f"interrupted; could not save the state after {where}: {e}")
        return
    log(f"interrupted; saved the state after {where} (--resume continues from there)")


def _absolute_paths(config: Config) -> Config:
    """config.json is read from other working directories (evaluate.py, --resume): local data
    paths are saved absolute."""
    return config.replace(**{k: os.path.abspath(v) for k in ("data_dir", "tfds_data_dir")
                             if (v := getattr(config, k)) and "://" not in v})


def _start(config: Config, dp: DataParallel, data: Dataset, restored: Optional[TrainState], first_epoch: Optional[int],
           first_step: int, loop: str):
    """What the epochs need, on the mesh: (state, images, fixed noise, training key, learning rate
    per epoch, the time the state was ready). The programs the loop runs from step `first_step` of
    `first_epoch` on (None: nothing is left to run) compile meanwhile in other threads (startup.py)."""
    init_key, sample_key, train_key = run_keys(config.seed)
    images = dp.replicate(data.images)
    ahead = startup.Precompiler()
    try:
        if first_epoch is not None:
            state_type = dp.abstract(jax.eval_shape(lambda key: create_train_state(config, key), init_key))
            # a run resumed mid-epoch runs a shorter first epoch, then whole ones
            starts = sorted({first_step, 0}) if first_epoch < config.epochs else [first_step]
            ahead.submit(startup.compile_epoch, state_type, images, epoch_key(train_key, first_epoch), loop, starts)
            if jax.process_index() == 0:
                z_type = dp.abstract(jax.eval_shape(lambda key: noise(key, config, config.num_samples), sample_key))
                ahead.submit(startup.lowered_and_compiled, generator_output, config, state_type.generator_variables,
                             z_type, config.samples_bn, True)
            if loop == "scan":
                ahead.submit(startup.lowered_and_compiled, _copy, state_type)
        fixed_z = dp.replicate(noise(sample_key, config, config.num_samples))
        learning_rates = [learning_rate(config, epoch) for epoch in range(1, config.epochs + 1)]
        state = restored if restored is not None else dp.replicate(create_train_state(config, init_key))
        initialised = time.perf_counter()
    except BaseException:
        ahead.abandon()
        raise
    ahead.wait()
    return state, images, fixed_z, train_key, learning_rates, initialised


def _check_finite(metrics: dict, epoch: int, config: Config, checkpoints: RunCheckpoints):
    """Stop at the first NaN/Inf loss, before anything of this epoch is written or saved."""
    bad = {k: int(np.argmin(np.isfinite(metrics[k]))) for k in outputs.METRIC_KEYS
           if not np.all(np.isfinite(metrics[k]))}
    if not bad:
        return
    name = min(bad, key=bad.get)
    i = bad[name]
    saved = checkpoints.latest(config.steps_per_epoch)
    last = (f"last good checkpoint: {checkpoint_position(*saved, config.steps_per_epoch)} "
            f"({checkpoints.path_of(*saved, config.steps_per_epoch)})" if saved else "no checkpoint was saved yet")
    raise TrainingDiverged(f"training diverged: {name} is {float(metrics[name][i])} at step "
                           f"{(epoch - 1) * config.steps_per_epoch + i + 1} (epoch {epoch}, step {i + 1} of "
                           f"{config.steps_per_epoch}); stopped without saving epoch {epoch}; {last}")


def _sync(name: str):
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices(name)


def _above(bar, log, line: str):
    """log(line), above the progress bar if there is one."""
    if bar is None:
        return log(line)
    with bar.tqdm.external_write_mode():
        log(line)


class _Bar:
    """One tqdm bar over the steps left in the run (its ETA is the run's), with live losses
    (fetched every few steps); a scanned epoch advances it by a whole epoch."""

    def __init__(self, first_epoch: int, first_step: int, config: Config):
        from tqdm.auto import tqdm
        self.config = config
        self.tqdm = tqdm(total=(config.epochs - first_epoch + 1) * config.steps_per_epoch - first_step,
                         desc=f"epoch {first_epoch}/{config.epochs}", dynamic_ncols=True, leave=False)

    def on_step(self, i, metrics):
        self.tqdm.update(1)
        if i % 5 == 0:
            host = DataParallel.to_host({k: metrics[k] for k in ("loss_d", "loss_g")})
            self.tqdm.set_postfix(loss_d=f"{float(host['loss_d']):.4f}", loss_g=f"{float(host['loss_g']):.4f}")

    def epoch_done(self, epoch: int, steps: int, scanned: bool):
        if scanned:
            self.tqdm.update(steps)
        self.tqdm.set_description(f"epoch {min(epoch + 1, self.config.epochs)}/{self.config.epochs}")

    def close(self):
        self.tqdm.close()
