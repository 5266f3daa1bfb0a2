"""In-process A/B of model-code variants on the reference train step (CPU timings are too noisy
across processes for 1-5 % changes: consecutive harness runs differ by 5-8 % on a shared VM).

  python -m benchmarks.ab_step VARIANTS.py [--rounds 30] [--batch-size 100]

VARIANTS.py defines VARIANTS = {name: {attribute of dcgan_jax.models: replacement}}; the first
entry is the baseline ({} is the code as it is). Each variant's step is compiled under its
patches (caches cleared in between, so no traced function is shared), then the variants' steps
alternate (order reversed every other round) and the paired ratio, the median over rounds of
variant / baseline step time, is printed. Identical programs read 1.00 +- 0.02.
"""
import argparse
import importlib.util
import time

import jax
import numpy as np

from dcgan_jax import models
from dcgan_jax.config import preset
from dcgan_jax.runtime import reuse_cpu_memory
from dcgan_jax.train import STEP_JIT_KWARGS, _train_step, create_train_state


def compile_variants(variants: dict, state, images, key) -> dict:
    programs = {}
    for name, patches in variants.items():
        jax.clear_caches()
        saved = {attr: getattr(models, attr) for attr in patches}
        try:
            for attr, value in patches.items():
                setattr(models, attr, value)
            programs[name] = jax.jit(_train_step, **STEP_JIT_KWARGS).lower(state, images, key).compile()
        finally:
            for attr, value in saved.items():
                setattr(models, attr, value)
    return programs


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.ab_step", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("variants")
    p.add_argument("--rounds", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=100)
    args = p.parse_args(argv)
    reuse_cpu_memory()  # as the CLI: without it ~110 ms of each CPU step is page faults
    spec = importlib.util.spec_from_file_location("ab_variants", args.variants)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = preset("reference", steps_per_epoch=10, batch_size=args.batch_size).for_dataset(10 * args.batch_size)
    state = create_train_state(config, jax.random.key(0))
    images = np.random.default_rng(0).integers(0, 256, (args.batch_size, 28, 28, 1), dtype=np.uint8)
    keys = jax.random.split(jax.random.key(1), args.rounds + 2)
    programs = compile_variants(module.VARIANTS, state, images, keys[0])
    states = dict.fromkeys(programs, state)
    for name, program in programs.items():  # warm-up; the losses show each variant trains alike
        for key in keys[:2]:
            states[name], metrics = program(states[name], images, key)
        print(f"{name:24s} after 2 steps: " + ", ".join(f"{k} {float(v):.6f}" for k, v in metrics.items()))
    times = {name: [] for name in programs}
    for r in range(args.rounds):
        for name in (list(programs) if r % 2 == 0 else list(programs)[::-1]):
            start = time.perf_counter()
            states[name], _ = programs[name](states[name], images, keys[r + 2])
            jax.block_until_ready(states[name])
            times[name].append(time.perf_counter() - start)
    baseline = np.array(next(iter(times.values())))
    for name, t in times.items():
        t = np.array(t)
        print(f"{name:24s} median {1e3 * np.median(t):7.1f} ms  min {1e3 * t.min():7.1f} ms  "
              f"paired ratio {np.median(t / baseline):.3f}")


if __name__ == "__main__":
    main()
