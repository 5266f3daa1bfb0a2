"""The training driver: data -> state -> epochs -> run directory. Host-side; the math is in train.py."""
import os
import time
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from . import outputs
from .config import Config
from .data import Dataset, load_mnist
from .train import (TrainState, create_train_state, epoch_key, generate, learning_rate, noise,
                    resolve_loop, run_keys, to_unit_range, train_epoch)


def load_train_data(config: Config) -> Dataset:
    data = load_mnist("train", config.data_dir, config.tfds_data_dir)
    if config.max_train_examples is not None:
        n = min(config.max_train_examples, len(data.images))
        data = Dataset(data.images[:n], data.labels[:n], data.source, data.genuine)
    return data


def summary_line(record: dict, epochs: int) -> str:
    return (f"epoch {record['epoch']:>3}/{epochs}  loss_d {record['loss_d']:.4f}  "
            f"loss_g {record['loss_g']:.4f}  D(x) {record['d_real']:.3f}  "
            f"D(G(z)) {record['d_fake']:.3f}  lr {record['lr']:.2e}  {record['seconds']:.1f}s")


def fit(config: Config, run_dir: str, *, overwrite: bool = False, progress: bool = True,
        log: Callable[[str], None] = print, data: Optional[Dataset] = None) -> TrainState:
    """Train `config` and write the run directory (layout in outputs.py). Returns the final state.

    Everything that can be checked (config, data, run dir) is checked before anything is written.
    """
    config = config.validate()
    data = data or load_train_data(config)
    config = config.for_dataset(len(data.images))
    outputs.prepare_run_dir(run_dir, overwrite)
    loop = resolve_loop(config.loop)
    outputs.write_config(run_dir, config, data_source=data.source, genuine_mnist=data.genuine,
                         backend=jax.default_backend(), devices=jax.device_count(),
                         loop_resolved=loop, jax_version=jax.__version__)
    log(f"{data.source}: {len(data.images)} images, {config.steps_per_epoch} steps of "
        f"{config.batch_size} per epoch, {config.epochs} epochs, order {config.order}, "
        f"dtype {config.dtype}, loop {loop} on {jax.default_backend()}")

    init_key, sample_key, train_key = run_keys(config.seed)
    state = create_train_state(config, init_key)
    fixed_z = noise(sample_key, config, config.num_samples)
    images = jax.device_put(data.images)
    records, history = [], {k: [] for k in outputs.METRIC_KEYS}

    for epoch in range(1, config.epochs + 1):
        start = time.perf_counter()
        bar = _progress_bar(epoch, config, progress and loop == "steps")
        state, metrics = train_epoch(state, images, epoch_key(train_key, epoch), loop=loop,
                                     on_step=bar and bar.on_step)
        metrics = jax.device_get(metrics)
        seconds = time.perf_counter() - start
        if bar:
            bar.close()
        for k in outputs.METRIC_KEYS:
            history[k].append(np.asarray(metrics[k]))
        record = {"epoch": epoch, **{k: float(np.mean(metrics[k], dtype=np.float64)) for k in outputs.METRIC_KEYS},
                  "lr": learning_rate(config, epoch), "seconds": seconds}
        records.append(record)
        samples = to_unit_range(generate(state, fixed_z, bn=config.samples_bn), config)
        outputs.save_grid(os.path.join(run_dir, "samples", f"epoch_{epoch:03d}.png"), jax.device_get(samples))
        outputs.write_metrics(run_dir, records)
        outputs.write_step_metrics(run_dir, {k: np.concatenate(v) for k, v in history.items()})
        log(summary_line(record, config.epochs))

    outputs.plot_losses(os.path.join(run_dir, "losses.png"), np.concatenate(history["loss_g"]),
                        np.concatenate(history["loss_d"]), config.steps_per_epoch)
    outputs.save_variables(run_dir, state.generator_variables, state.discriminator_variables)
    return state


class _Bar:
    """A tqdm bar over an epoch's steps, with live losses (fetched every few steps)."""

    def __init__(self, epoch, config):
        from tqdm.auto import tqdm
        self.tqdm = tqdm(total=config.steps_per_epoch, desc=f"epoch {epoch}/{config.epochs}",
                         leave=False, dynamic_ncols=True)

    def on_step(self, i, metrics):
        self.tqdm.update(1)
        if i % 5 == 0:
            self.tqdm.set_postfix(loss_d=f"{float(metrics['loss_d']):.4f}",
                                  loss_g=f"{float(metrics['loss_g']):.4f}")

    def close(self):
        self.tqdm.close()


def _progress_bar(epoch, config, enabled):
    return _Bar(epoch, config) if enabled else None
