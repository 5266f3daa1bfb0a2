"""Compile a run's programs in background threads while it loads its data and initialises.

A cold start on a CPU spends most of its time in XLA compilations that do not depend on each
other: the init, the epoch's step and the sampling program. Lowered and compiled ahead from
abstract arguments (ShapeDtypeStructs with the shardings the real arrays will have) in two
threads, they overlap with each other and with the host work; the jitted functions then find them
compiled. Only the driver (run.fit) uses this module: everything runs without it, compiling at
the first call. docs/performance.md has the measurements.
"""
import concurrent.futures
from typing import Callable

import jax
import numpy as np

from . import train


def compile_epoch(state, images, key, loop: str, starts=(0,)):
    """Compile what train.train_epoch(state, images, key, loop, start=start) runs for each of
    `starts`, without running it. `state` may be abstract; `images` are the arrays (or
    ShapeDtypeStructs) the epochs will get."""
    cfg = state.config
    plan, step, scan = train.epoch_programs(train.mesh_of(images))
    key_data = np.asarray(jax.random.key_data(key))
    if loop == "scan":
        for start in starts:
            scan.lower(state, images, key_data, start).compile()
        return
    idx, keys = plan.lower(key_data, images.shape[0], cfg.steps_per_epoch, cfg.batch_size).compile().out_info
    compiled = step.lower(state, images, idx, keys, np.int32(0)).compile()
    for start in starts:
        train.stack_metrics.lower([compiled.out_info[1]] * (cfg.steps_per_epoch - start)).compile()


class Precompiler:
    """A pool of compile threads. Interrupted (Ctrl-C) or failed, the run does not wait for the
    compilations, which XLA cannot stop: the CLI exits without joining the threads."""

    def __init__(self, threads: int = 2):
        self.pool = concurrent.futures.ThreadPoolExecutor(threads, thread_name_prefix="compile")
        self.futures = []

    def submit(self, compile_fn: Callable, *args, **kwargs):
        self.futures.append(self.pool.submit(compile_fn, *args, **kwargs))

    def wait(self):
        try:
            for future in self.futures:
                future.result()
        except BaseException:
            self.abandon()
            raise
        self.pool.shutdown()

    def abandon(self):
        self.pool.shutdown(wait=False, cancel_futures=True)


def lowered_and_compiled(jitted: Callable, *args, **kwargs):
    """jitted.lower(*args, **kwargs).compile(): a job for Precompiler.submit."""
    return jitted.lower(*args, **kwargs).compile()
