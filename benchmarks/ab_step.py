"""In-process A/B of variants of the reference training step (timings across processes are too
noisy for changes of a few per cent on a shared machine).

  python -m benchmarks.ab_step VARIANTS.py [--rounds 30] [--batch-size 100]        # CPU: jitted steps
  python -m benchmarks.ab_step VARIANTS.py --loop scan --steps 100 --rounds 10      # GPU: scanned steps

VARIANTS.py defines VARIANTS = {name: {key: value}}; the first entry is the baseline. The key
"kernels" gives the variant's layers: a kernel set's name ("flax", "xla", "cpu"), a kernels.Forms
(`dataclasses.replace(kernels.CPU_FORMS, channel_sum=...)`) or a models.Kernels; without it the
layers are config.kernels' ("auto"). Any other key is an attribute of a dcgan_jax module that the
variant replaces ("train.build_optimizers", "kernels._batch_moments"). Each variant's state and
program (one train step, or a scan of --steps steps as train_epoch runs it) are made under its
replacements (caches cleared in between, so no traced function is shared), then the variants'
programs alternate (order reversed every other round) and the paired ratio, the median over
rounds of variant / baseline time, is printed. Identical programs read 1.00 +- 0.02 on the CPU.
"""
import argparse
import importlib.util
import time

import jax
import jax.numpy as jnp
import numpy as np

from dcgan_jax import kernels, models, train
from dcgan_jax.config import preset
from dcgan_jax.runtime import enable_threefry_kernel, reuse_cpu_memory


def _layers(choice) -> models.Kernels:
    if isinstance(choice, str):
        return kernels.select(choice)
    return kernels.from_forms(choice) if isinstance(choice, kernels.Forms) else choice


def replacements(variant: dict) -> dict:
    """(module, attribute name) -> replacement for one VARIANTS entry; its layers reach the step
    through train.build_models' call of kernels.select."""
    out = {}
    for attr, value in variant.items():
        if attr == "kernels":
            attr, value = "kernels.select", lambda name, layers=_layers(value): layers
        module_name, _, name = attr.rpartition(".")
        try:
            module = importlib.import_module(f"dcgan_jax.{module_name}") if module_name else None
        except ImportError:
            module = None
        if not hasattr(module, name):
            raise ValueError(f"variant key {attr!r} names no attribute of a dcgan_jax module")
        out[module, name] = value
    return out


def compile_variants(variants: dict, build) -> dict:
    """name -> (state, compiled program), each from `build()` -> (state, lowered) under its replacements."""
    programs = {}
    for name, variant in variants.items():
        jax.clear_caches()
        patches = replacements(variant)
        saved = {target: getattr(*target) for target in patches}
        try:
            for (module, attr), value in patches.items():
                setattr(module, attr, value)
            start = time.perf_counter()
            state, lowered = build()
            programs[name] = state, lowered.compile()
            print(f"{name:32s} compiled in {time.perf_counter() - start:.1f} s", flush=True)
        finally:
            for (module, attr), value in saved.items():
                setattr(module, attr, value)
    return programs


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.ab_step", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("variants")
    p.add_argument("--rounds", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--loop", choices=("steps", "scan"), default="steps",
                   help="steps: one jitted step per call; scan: --steps steps per call (the epoch's loop)")
    p.add_argument("--steps", type=int, default=100, help="steps per scanned call (--loop scan)")
    p.add_argument("--dtype", default="float32")
    args = p.parse_args(argv)
    enable_threefry_kernel()  # as the CLI: a GPU compiles the random initialisers far faster
    reuse_cpu_memory()  # as the CLI: without it CPU steps pay for page faults
    spec = importlib.util.spec_from_file_location("ab_variants", args.variants)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    try:  # every variant's keys checked before the minutes of compilation
        for variant in module.VARIANTS.values():
            replacements(variant)
    except ValueError as e:
        p.error(str(e))
    steps = args.steps if args.loop == "scan" else 1
    config = preset("reference", steps_per_epoch=steps, batch_size=args.batch_size,
                    dtype=args.dtype).for_dataset(steps * args.batch_size)
    rng = np.random.default_rng(0)
    images = jnp.asarray(rng.integers(0, 256, (steps * args.batch_size, 28, 28, 1), dtype=np.uint8))
    keys = jax.random.split(jax.random.key(1), args.rounds + 2)
    if args.loop == "scan":  # the scanned epoch takes the key's data, as train_epoch passes it
        keys = [np.asarray(jax.random.key_data(key)) for key in keys]

    base = train.create_train_state(config, jax.random.key(0))

    def build():  # each variant its own copy (the scan donates it) and optimizer states (it may replace them)
        g_tx, d_tx = train.build_optimizers(config)
        state = jax.tree.map(jnp.copy, base).replace(g_opt=g_tx.init(base.g_params), d_opt=d_tx.init(base.d_params))
        if args.loop == "scan":
            _, _, scan = train.epoch_programs(train.mesh_of(images))
            return state, scan.lower(state, images, keys[0], 0)
        return state, train.jitted_train_step.lower(state, images, keys[0])
    built = compile_variants(module.VARIANTS, build)
    states = {name: state for name, (state, _) in built.items()}
    programs = {name: program for name, (_, program) in built.items()}
    for name, program in programs.items():  # warm-up; the losses show each variant trains alike
        for key in keys[:2]:
            states[name], metrics = program(states[name], images, key)
        print(f"{name:32s} after 2 calls: " + ", ".join(f"{k} {float(np.mean(v)):.6f}" for k, v in metrics.items()))
    times = {name: [] for name in programs}
    for r in range(args.rounds):
        for name in (list(programs) if r % 2 == 0 else list(programs)[::-1]):
            start = time.perf_counter()
            states[name], _ = programs[name](states[name], images, keys[r + 2])
            jax.block_until_ready(states[name])
            times[name].append((time.perf_counter() - start) / steps)
    baseline = np.array(next(iter(times.values())))
    print(f"{jax.devices()[0].device_kind}, {args.dtype}, batch {args.batch_size}, loop {args.loop}"
          f"{f' ({steps} steps per call)' if steps > 1 else ''}, {args.rounds} rounds; time per step:")
    for name, t in times.items():
        t = np.array(t)
        print(f"{name:32s} median {1e3 * np.median(t):8.3f} ms  min {1e3 * t.min():8.3f} ms  "
              f"paired ratio {np.median(t / baseline):.3f}")


if __name__ == "__main__":
    main()
