"""Train the DCGAN and write a run directory.

  python -m experiments.train --preset reference --data-dir ../shared/data/mnist --out runs/ref
  python -m experiments.train --preset quick --out /tmp/quick          # TFDS 'mnist' (online)
  python -m experiments.train --resume runs/ref                          # continue a killed run

Presets: reference (the tutorial exactly: G-then-D, [0, 1] data, 20 epochs of 600 steps of 100),
default (the same with D-then-G), quick (2 epochs of 4 steps of 16, a smoke test). Every config
field has a flag overriding the preset; see --help. A run checkpoints every --checkpoint-every
epochs (and every --checkpoint-every-steps steps inside one); --resume RUN_DIR continues it from its
newest intact checkpoint with its own config (only --epochs, --data-dir, --tfds-data-dir, --loop,
--kernels, --checkpoint-every, --checkpoint-every-steps and --keep may be given again).
The batch is split across all devices; --distributed first joins the processes of a multi-host run.

Exit status: 0 done, 1 runtime error (data, run dir, checkpoint, a failed write, out of memory: a new
run that checkpointed nothing leaves no run dir), 2 bad flag or config (a resume conflict included),
3 training diverged, 130 interrupted by SIGINT (Ctrl-C), 143 by SIGTERM: an interrupted run first
checkpoints the last step it completed, and --resume continues from there.
"""
from experiments import interrupts  # first: a signal during the imports below ends the script too

if __name__ == "__main__":
    interrupts.install()

import argparse
import dataclasses
import os
import sys
import time
import typing

import jax

from dcgan_jax import config as C
from experiments.common import add_cpu_memory_reuse_flag, apply_cpu_memory_reuse, check_cpu_memory_reuse

CHOICES = {"order": C.ORDERS, "dtype": C.DTYPES, "data_range": C.DATA_RANGES, "loop": C.LOOPS,
           "kernels": C.KERNELS, "samples_bn": C.SAMPLE_BN}
SIZES = "--batch-size, --num-samples or --latent-dim"   # the flags that set the memory a run needs
HELP = {
    "latent_dim": "size of z", "dtype": "compute dtype (params stay float32; float64 enables x64)",
    "order": "alternation: d_then_g, or the tutorial's g_then_d", "d_steps": "D updates per G update",
    "batch_size": "images per step", "epochs": "epochs to train",
    "steps_per_epoch": "steps per epoch (default: all full batches)", "lr": "Adam learning rate",
    "beta1": "Adam beta1", "beta2": "Adam beta2", "lr_decay_every": "StepLR step size, in epochs",
    "lr_decay": "StepLR gamma", "data_range": "real-image scaling: zero_one (tutorial) or minus_one_one",
    "seed": "PRNG seed", "loop": "epoch loop: auto (scan on accelerators, jitted steps on CPU), scan, steps",
    "kernels": "layer forms, same values: flax (models.py's plain layers), xla / cpu (faster programs "
               "there; dcgan_jax/kernels.py), auto (cpu on a CPU backend, else xla)",
    "samples_bn": "BN statistics for sample grids: batch (tutorial, train mode) or running (eval mode)",
    "num_samples": "images in each sample grid", "data_dir": "folder with the four MNIST IDX files (offline)",
    "tfds_data_dir": "TFDS data_dir (default: TFDS's own)",
    "max_train_examples": "use only the first N training images",
}


def _type(field):
    t = field.type if not isinstance(field.type, str) else eval(field.type, vars(typing))
    args = [a for a in typing.get_args(t) if a is not type(None)]
    return args[0] if args else t


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, not argparse's usage block
        self.exit(2, f"error: {message} (see --help)\n")


def parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m experiments.train", description=__doc__,
                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=list(C.PRESETS),
                   help="named configuration the flags below override (default: default)")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--out", help="run directory to create (default: runs/PRESET-TIMESTAMP)")
    where.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its newest checkpoint")
    p.add_argument("--overwrite", action="store_true",
                   help="move a previous run of ours in --out aside to OUT.old-N first (nothing is deleted); "
                        "refused for a folder this project did not make, the current folder or one above it, "
                        "one holding the data or the compile cache, and a run in use")
    p.add_argument("--checkpoint-every", type=int, metavar="EPOCHS",
                   help="checkpoint every EPOCHS epochs, and always at the last (default: 1, or the resumed run's)")
    p.add_argument("--checkpoint-every-steps", type=int, metavar="STEPS",
                   help="also checkpoint every STEPS steps inside an epoch, for long CPU epochs; 0: never "
                        "(default: 0, or the resumed run's; needs --loop steps, the CPU's default)")
    p.add_argument("--keep", type=int, metavar="N", help="keep the last N checkpoints (default: 3, or the resumed run's)")
    p.add_argument("--deterministic", action="store_true",
                   help="deterministic GPU kernels (XLA_FLAGS --xla_gpu_deterministic_ops=true; slower)")
    p.add_argument("--no-progress", action="store_true", help="no per-step progress bar")
    p.add_argument("--compile-cache", metavar="DIR|off",
                   default=os.environ.get("DCGAN_JAX_COMPILE_CACHE", "~/.cache/dcgan_jax/jax"),
                   help="persistent XLA compilation cache, or 'off' (default: $DCGAN_JAX_COMPILE_CACHE, "
                        "else %(default)s)")
    add_cpu_memory_reuse_flag(p)
    multi = p.add_argument_group("multi-host (one process per host; see the README)")
    multi.add_argument("--distributed", action="store_true", help="call jax.distributed.initialize() first")
    multi.add_argument("--coordinator-address", help="HOST:PORT of process 0 (default: detected from the cluster)")
    multi.add_argument("--num-processes", type=int, help="number of processes (default: detected)")
    multi.add_argument("--process-id", type=int, help="this process's index (default: detected)")
    group = p.add_argument_group("config overrides (default: the preset's value)")
    for f in dataclasses.fields(C.Config):
        group.add_argument("--" + f.name.replace("_", "-"), dest=f.name, type=_type(f),
                           choices=CHOICES.get(f.name), default=None, help=HELP[f.name])
    return p


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    overrides = {f.name: getattr(args, f.name) for f in dataclasses.fields(C.Config)
                 if getattr(args, f.name) is not None}
    if args.deterministic:  # read when the backend starts, so before any computation
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_gpu_deterministic_ops=true").strip()
    for flag in ("out", "resume"):
        if getattr(args, flag) == "":
            return _fail(f"--{flag} '': an empty path names no run directory", 2)
    if args.distributed and not (args.out or args.resume):
        return _fail("--distributed needs --out (or --resume): every process must name the same run dir", 2)
    if error := check_cpu_memory_reuse(args):
        return _fail(error, 2)
    if args.resume and args.preset:
        return _fail(f"--preset {args.preset} with --resume: a resumed run keeps the config it was made with", 2)
    from dcgan_jax.checkpoints import CheckpointError
    from dcgan_jax.data import DataError
    from dcgan_jax.outputs import RunDirError
    from dcgan_jax.run import TrainingDiverged, fit, resume_config
    from dcgan_jax.runtime import out_of_memory
    preset = args.preset or "default"
    try:
        config = resume_config(args.resume, **overrides) if args.resume else C.preset(preset, **overrides)
    except C.ConfigError as e:
        return _fail(e, 2)
    except RunDirError as e:
        return _fail(e, 1)
    if config.dtype == "float64":
        jax.config.update("jax_enable_x64", True)
    if args.distributed:
        from dcgan_jax.parallel import initialize_distributed
        try:
            initialize_distributed(args.coordinator_address, args.num_processes, args.process_id)
        except (ValueError, RuntimeError) as e:
            return _fail(f"--distributed: {e} (outside SLURM, Open MPI or Cloud TPU give --coordinator-address, "
                         f"--num-processes and --process-id)", 2)
    from dcgan_jax.runtime import enable_compile_cache, enable_threefry_kernel
    enable_threefry_kernel()
    if args.compile_cache != "off":
        enable_compile_cache(args.compile_cache)
    apply_cpu_memory_reuse(args)  # starts the backends: after every setting they read
    out = args.resume or args.out or f"runs/{preset}-{time.strftime('%Y%m%d-%H%M%S')}"
    start = time.perf_counter()
    try:
        fit(config, out, overwrite=args.overwrite, resume=bool(args.resume), checkpoint_every=args.checkpoint_every,
            keep=args.keep, checkpoint_every_steps=args.checkpoint_every_steps, progress=not args.no_progress)
    except C.ConfigError as e:
        return _fail(e, 2)
    except (DataError, RunDirError, CheckpointError) as e:
        return _fail(e, 1)
    except TrainingDiverged as e:
        return _fail(e, 3)
    except (jax.errors.JaxRuntimeError, MemoryError) as e:
        if not (memory := out_of_memory(e)):
            raise
        if args.resume:
            return _fail(f"{memory}: {out} is kept; its {SIZES} need more memory than there is", 1)
        return _fail(f"{memory}: reduce {SIZES}", 1)   # fit removed the run dir it had started
    except KeyboardInterrupt:
        return _fail(_interrupted(out), interrupts.status())
    print(f"done in {time.perf_counter() - start:.1f}s: {out}")
    return 0


def _interrupted(run_dir: str) -> str:
    if not os.path.isfile(os.path.join(run_dir, "config.json")):
        return f"interrupted before {run_dir} was started: nothing to resume"
    from dcgan_jax.checkpoints import RunCheckpoints, position
    from dcgan_jax.outputs import read_config
    steps_per_epoch = read_config(run_dir).steps_per_epoch
    checkpoints = RunCheckpoints(run_dir)
    saved = checkpoints.latest(steps_per_epoch)
    checkpoints.close()
    where = f"after {position(*saved, steps_per_epoch)}, its last checkpoint" if saved else \
        "from epoch 1 (none was checkpointed)"
    return f"interrupted; python -m experiments.train --resume {run_dir} continues {where}"


def _fail(message, status: int) -> int:
    print(f"error: {message}", file=sys.stderr)
    return status


if __name__ == "__main__":
    interrupts.exit_with(main)
