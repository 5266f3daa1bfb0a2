"""Train the DCGAN and write a run directory.

  python -m experiments.train --preset reference --data-dir ../shared/data/mnist --out runs/ref
  python -m experiments.train --preset quick --out /tmp/quick          # TFDS 'mnist' (online)

Presets: reference (the tutorial exactly: G-then-D, [0, 1] data, 20 epochs of 600 steps of 100),
default (the same with D-then-G), quick (2 epochs of 4 steps of 16, a smoke test). Every config
field has a flag overriding the preset; see --help.
"""
import argparse
import dataclasses
import sys
import time
import typing

from dcgan_jax import config as C

CHOICES = {"order": C.ORDERS, "dtype": C.DTYPES, "data_range": C.DATA_RANGES, "loop": C.LOOPS,
           "samples_bn": C.SAMPLE_BN}
HELP = {
    "latent_dim": "size of z", "dtype": "compute dtype (params stay float32; float64 enables x64)",
    "order": "alternation: d_then_g, or the tutorial's g_then_d", "d_steps": "D updates per G update",
    "batch_size": "images per step", "epochs": "epochs to train",
    "steps_per_epoch": "steps per epoch (default: all full batches)", "lr": "Adam learning rate",
    "beta1": "Adam beta1", "beta2": "Adam beta2", "lr_decay_every": "StepLR step size, in epochs",
    "lr_decay": "StepLR gamma", "data_range": "real-image scaling: zero_one (tutorial) or minus_one_one",
    "seed": "PRNG seed", "loop": "epoch loop: auto (scan on accelerators, jitted steps on CPU), scan, steps",
    "samples_bn": "BN statistics for sample grids: batch (tutorial, train mode) or running (eval mode)",
    "num_samples": "images in each sample grid", "data_dir": "folder with the four MNIST IDX files (offline)",
    "tfds_data_dir": "TFDS data_dir (default: TFDS's own)",
    "max_train_examples": "use only the first N training images",
}


def _type(field):
    t = field.type if not isinstance(field.type, str) else eval(field.type, vars(typing))
    args = [a for a in typing.get_args(t) if a is not type(None)]
    return args[0] if args else t


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m experiments.train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="default", choices=list(C.PRESETS),
                   help="named configuration the flags below override (default: %(default)s)")
    p.add_argument("--out", help="run directory to create (default: runs/PRESET-TIMESTAMP)")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty run directory")
    p.add_argument("--no-progress", action="store_true", help="no per-step progress bar")
    group = p.add_argument_group("config overrides (default: the preset's value)")
    for f in dataclasses.fields(C.Config):
        group.add_argument("--" + f.name.replace("_", "-"), dest=f.name, type=_type(f),
                           choices=CHOICES.get(f.name), default=None, help=HELP[f.name])
    return p


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    overrides = {f.name: getattr(args, f.name) for f in dataclasses.fields(C.Config)
                 if getattr(args, f.name) is not None}
    try:
        config = C.preset(args.preset, **overrides)
    except C.ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if config.dtype == "float64":
        import jax
        jax.config.update("jax_enable_x64", True)
    from dcgan_jax.data import DataError
    from dcgan_jax.outputs import RunDirError
    from dcgan_jax.run import fit
    out = args.out or f"runs/{args.preset}-{time.strftime('%Y%m%d-%H%M%S')}"
    start = time.perf_counter()
    try:
        fit(config, out, overwrite=args.overwrite, progress=not args.no_progress)
    except C.ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (DataError, RunDirError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"done in {time.perf_counter() - start:.1f}s: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
