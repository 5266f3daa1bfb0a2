"""The dcgan_jax side of the benchmark: the `reference` preset through train_epoch, the state and
images placed on the devices as run.fit places them."""
import time

import jax
import numpy as np

from dcgan_jax.config import preset
from dcgan_jax.parallel import DataParallel
from dcgan_jax.train import create_train_state, epoch_key, run_keys, train_epoch

# variant -> (loop, dtype)
VARIANTS = {
    "jax_scan_fp32": ("scan", "float32"),
    "jax_steps_fp32": ("steps", "float32"),
    "jax_scan_bf16": ("scan", "bfloat16"),
    "jax_steps_bf16": ("steps", "bfloat16"),
}


def run(variant: str, images: np.ndarray, epochs: int, steps: int, batch: int = 100):
    loop, dtype = VARIANTS[variant]
    config = preset("reference", dtype=dtype, loop=loop, epochs=epochs, steps_per_epoch=steps,
                    batch_size=batch).for_dataset(len(images))
    init_key, _, train_key = run_keys(config.seed)
    dp = DataParallel()
    start = time.perf_counter()
    # replicated on the mesh, as every epoch's output: a state on one device would compile the
    # epoch's program a second time for the next epoch
    state = jax.block_until_ready(dp.replicate(create_train_state(config, init_key)))
    init_s = time.perf_counter() - start
    images = dp.replicate(images)
    seconds = []
    for epoch in range(1, epochs + 1):
        jax.block_until_ready(state)
        start = time.perf_counter()
        state, metrics = train_epoch(state, images, epoch_key(train_key, epoch))
        jax.block_until_ready((state, metrics))
        seconds.append(time.perf_counter() - start)
    stats = jax.devices()[0].memory_stats() or {}
    last = {k: float(metrics[k][-1]) for k in ("loss_g", "loss_d")}
    return seconds, stats.get("peak_bytes_in_use"), last, init_s
