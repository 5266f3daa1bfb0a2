"""Train the PyTorch reference and dcgan_jax with the same preset and seeds; compare them.

  # CPU, small (minutes):
  python -m experiments.compare_frameworks --preset quick --seeds 2 --num-samples 2000 \\
      --data-dir ../shared/data/mnist --out runs/compare-quick
  # GPU, the tutorial's full training (20 epochs of 600 steps) on both sides:
  python -m experiments.compare_frameworks --preset reference --seeds 3 \\
      --data-dir ../shared/data/mnist --out runs/compare-reference

Each framework trains `--seeds` runs (seeds seed, seed+1, ...) of the same config on the same
data; PyTorch uses parity.reference (the tutorial rebuilt), dcgan_jax its run driver. Both are
scored with dcgan_jax.metrics on --num-samples generated images. Writes OUT/compare.json (every
run, the summary, the machine), OUT/compare.md (the table: mean ± std over seeds) and the
dcgan_jax runs, OUT/jax_seedN/; a non-empty OUT is refused unless --overwrite.
Epoch times exclude the first epoch (compilation, warm-up), which is listed separately. On CPU,
--cpu-memory-reuse (default on, as in the training CLI) tunes the process's malloc for both
frameworks, so that neither pays for page faults the other does not (docs/performance.md).
Exit status: 0 done, 1 runtime error (data, a non-empty --out, a failed write), 2 bad arguments
or config, 130 interrupted (SIGINT), 143 terminated (SIGTERM).
"""
from experiments import interrupts  # first: a signal during the imports below ends the script too

if __name__ == "__main__":
    interrupts.install()

import argparse
import json
import os
import platform
import sys
import time

import jax
import numpy as np

from dcgan_jax import metrics
from dcgan_jax.config import PRESETS, ConfigError, preset
from dcgan_jax.data import DataError, load_mnist
from dcgan_jax.outputs import RunDirError, atomic_write, load_variables
from experiments.common import (MAX_SAMPLES, add_cpu_memory_reuse_flag, apply_cpu_memory_reuse, check_count,
                                check_cpu_memory_reuse, check_out, generate_images)

MAX_SEEDS = 100

COLUMNS = (("epoch_seconds", "s/epoch", "{:.2f}"), ("first_epoch_seconds", "1st epoch s", "{:.2f}"),
           ("loss_d", "final loss_d", "{:.3f}"), ("loss_g", "final loss_g", "{:.3f}"),
           ("fid", "FID", "{:.2f}"), ("kid", "KID", "{:.4f}"), ("inception_score", "IS", "{:.2f}"),
           ("precision", "precision", "{:.3f}"), ("recall", "recall", "{:.3f}"),
           ("density", "density", "{:.3f}"), ("coverage", "coverage", "{:.3f}"),
           ("class_entropy", "class entropy", "{:.2f}"), ("num_missing_digits", "missing digits", "{:.1f}"))


def epoch_summary(epoch_seconds, last_losses) -> dict:
    return {"epoch_seconds": float(np.mean(epoch_seconds[1:])), "first_epoch_seconds": float(epoch_seconds[0]),
            "loss_d": float(last_losses["loss_d"]), "loss_g": float(last_losses["loss_g"])}


def train_jax(config, data, run_dir: str, num_samples: int):
    from dcgan_jax.run import fit
    fit(config, run_dir, overwrite=True, progress=False, log=lambda s: None, data=data)
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f]
    _, g_vars, _ = load_variables(run_dir)
    samples = generate_images(config, g_vars, num_samples, jax.random.key(config.seed + 10**6),
                              config.samples_bn)
    return epoch_summary([r["seconds"] for r in records], records[-1]), samples


def train_torch(config, data, num_samples: int, device: str = "cpu"):
    """The tutorial's loop with parity.reference, seeded by config.seed, on `device`.

    Runs inside `torch.device(device)` so that every tensor the reference creates (its loss
    labels included) lands on that device.
    """
    import torch
    with torch.device(device):
        return _train_torch(config, data, num_samples)


def _train_torch(config, data, num_samples: int):
    import torch
    from parity import reference
    torch.manual_seed(config.seed)
    G, D = reference.Generator(config.latent_dim), reference.Discriminator()
    G.apply(reference.weights_init)
    D.apply(reference.weights_init)
    opt_g, opt_d, sched_g, sched_d = reference.make_optimizers(G, D, config.lr, (config.beta1, config.beta2))
    step = reference.g_then_d_step if config.order == "g_then_d" else reference.d_then_g_step
    images = torch.tensor(data.images).permute(0, 3, 1, 2).float() / 255
    if config.data_range == "minus_one_one":
        images = images * 2 - 1
    G.train(), D.train()
    epoch_seconds, losses = [], {}
    for _ in range(config.epochs):
        start = time.perf_counter()
        order = torch.randperm(len(images))
        history = []
        for i in range(config.steps_per_epoch):
            real = images[order[i * config.batch_size:(i + 1) * config.batch_size]]
            z = torch.randn(config.batch_size, config.latent_dim, 1, 1)
            history.append(step(G, D, opt_g, opt_d, real, z))
        sched_g.step(), sched_d.step()
        epoch_seconds.append(time.perf_counter() - start)
        losses = {k: np.mean([h[k] for h in history]) for k in ("loss_d", "loss_g")}
    if config.samples_bn == "running":
        G.eval()
    out = []
    with torch.no_grad():
        for start in range(0, num_samples, config.batch_size):
            z = torch.randn(config.batch_size, config.latent_dim, 1, 1)
            out.append(G(z).permute(0, 2, 3, 1).cpu().numpy())
    samples = np.concatenate(out)[:num_samples]
    if config.data_range == "minus_one_one":
        samples = (samples + 1) / 2
    return epoch_summary(epoch_seconds, losses), np.clip(samples, 0, 1).astype(np.float32)


def check_reference_supports(config):
    """parity.reference implements the tutorial's optimiser schedule and one D step only."""
    if config.d_steps != 1:
        raise ConfigError(f"d_steps={config.d_steps}: the PyTorch reference does one D step per G step")
    if (config.lr_decay_every, config.lr_decay) != (5, 0.5):
        raise ConfigError("lr_decay_every/lr_decay: the PyTorch reference uses StepLR(5, 0.5) only")
    if config.dtype != "float32":
        raise ConfigError(f"dtype={config.dtype!r}: the comparison runs float32 on both sides")


def summarise(runs: list) -> dict:
    keys = [k for k, _, _ in COLUMNS]
    return {k: (float(np.mean([r[k] for r in runs])), float(np.std([r[k] for r in runs]))) for k in keys}


def markdown_table(summary: dict, header: str) -> str:
    lines = [header, "", "| framework | " + " | ".join(name for _, name, _ in COLUMNS) + " |",
             "|---|" + "---:|" * len(COLUMNS)]
    for framework, stats in summary.items():
        cells = [f"{fmt.format(stats[k][0])} ± {fmt.format(stats[k][1])}" for k, _, fmt in COLUMNS]
        lines.append(f"| {framework} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def machine() -> dict:
    import torch
    cpu = platform.processor() or platform.machine()
    if os.path.exists("/proc/cpuinfo"):
        names = [l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")]
        cpu = f"{names[0]} x{len(names)}" if names else cpu
    return {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "cpu": cpu, "jax_backend": jax.default_backend(),
            "jax_devices": [str(d) for d in jax.devices()], "jax": jax.__version__, "torch": torch.__version__,
            "torch_cuda": torch.cuda.is_available(), "torch_threads": torch.get_num_threads()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m experiments.compare_frameworks", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="quick", choices=list(PRESETS))
    p.add_argument("--seeds", type=int, default=2, help=f"runs per framework, 1 to {MAX_SEEDS} (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="first seed")
    p.add_argument("--num-samples", type=int, default=10000,
                   help=f"generated images scored per run, 10 to {MAX_SAMPLES} (default: %(default)s)")
    p.add_argument("--data-dir", help="MNIST IDX folder (default: TFDS)")
    p.add_argument("--epochs", type=int, help="override the preset's epochs")
    p.add_argument("--steps-per-epoch", type=int, help="override the preset's steps per epoch")
    p.add_argument("--out", default="runs/compare", help="output folder (default: %(default)s)")
    p.add_argument("--overwrite", action="store_true", help="replace the runs and tables of a non-empty --out")
    p.add_argument("--torch-device", default="auto",
                   help="device of the PyTorch runs: auto (cuda when available, else cpu), cpu, cuda")
    add_cpu_memory_reuse_flag(p)   # tunes the process's malloc: PyTorch's steps gain from it too
    args = p.parse_args(argv)
    error = (check_count("--seeds", args.seeds, 1, MAX_SEEDS)
             or check_count("--num-samples", args.num_samples, 10, MAX_SAMPLES)
             or check_out(args.out, folder=True) or check_cpu_memory_reuse(args))
    if error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    apply_cpu_memory_reuse(args)
    overrides = {k: v for k, v in (("epochs", args.epochs), ("steps_per_epoch", args.steps_per_epoch),
                                   ("data_dir", args.data_dir)) if v is not None}
    if os.path.isdir(args.out) and os.listdir(args.out) and not args.overwrite:
        print(f"error: --out {args.out} exists and is not empty: pass --overwrite to replace its runs "
              f"and tables, or another --out", file=sys.stderr)
        return 1
    try:
        base = preset(args.preset, **overrides)
        check_reference_supports(base)
        if base.epochs < 2:
            raise ConfigError(f"epochs={base.epochs}: the epoch times are those after the first "
                              f"(compilation, warm-up), so the comparison needs 2 or more")
        data = load_mnist("train", base.data_dir, base.tfds_data_dir)
        base = base.for_dataset(len(data.images))
        metrics.test_set_outputs(base.data_dir, base.tfds_data_dir)   # fail before training if missing
        import torch
        from parity import reference  # noqa: F401
        torch_device = args.torch_device if args.torch_device != "auto" else (
            "cuda" if torch.cuda.is_available() else "cpu")
        try:
            torch.empty(0, device=torch_device)
        except (RuntimeError, AssertionError) as e:  # an unknown name; a device this torch lacks
            raise ConfigError(f"--torch-device {torch_device}: {str(e).splitlines()[0][:200]}") from None
    except (ConfigError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2 if isinstance(e, ConfigError) else 1
    except ImportError as e:
        print(f"error: the PyTorch reference needs torch and parity/ ({e}); pip install -e .[parity]",
              file=sys.stderr)
        return 1

    try:
        return compare(args, base, data, torch_device)
    except RunDirError as e:  # WriteError too: a full disk, an unwritable --out
        print(f"error: {e}", file=sys.stderr)
        return 1


def compare(args, base, data, torch_device: str) -> int:
    runs = {"pytorch": [], "dcgan_jax": []}
    for i in range(args.seeds):
        config = base.replace(seed=args.seed + i)
        for framework in runs:
            if framework == "pytorch":
                summary, samples = train_torch(config, data, args.num_samples, torch_device)
            else:
                summary, samples = train_jax(config, data, os.path.join(args.out, f"jax_seed{config.seed}"),
                                             args.num_samples)
            scores = metrics.sample_quality(samples, base.data_dir, tfds_data_dir=base.tfds_data_dir,
                                            seed=config.seed)
            record = dict(summary, seed=config.seed, num_missing_digits=len(scores["missing_digits"]),
                          **{k: v for k, v in scores.items() if k not in summary})
            runs[framework].append(record)
            print(f"{framework:<10} seed {config.seed}: {summary['epoch_seconds']:.2f} s/epoch, "
                  f"FID {scores['fid']:.2f}, IS {scores['inception_score']:.2f}", flush=True)

    summary = {framework: summarise(r) for framework, r in runs.items()}
    info = dict(machine(), torch_device=torch_device)
    header = (f"Preset `{args.preset}` ({base.epochs} epochs x {base.steps_per_epoch} steps of "
              f"{base.batch_size}, order {base.order}), {args.seeds} seed(s), {args.num_samples} samples "
              f"per run vs the MNIST test set; mean ± std over seeds. {info['date']}, "
              f"{info['cpu']}, JAX {info['jax']} on {info['jax_backend']}, "
              f"torch {info['torch']} on {torch_device}.")
    table = markdown_table(summary, header)
    atomic_write(os.path.join(args.out, "compare.md"), table.encode())
    atomic_write(os.path.join(args.out, "compare.json"), json.dumps(
        {"config": base.to_dict(), "machine": info, "runs": runs, "summary": summary}, indent=2).encode())
    print(table)
    print(f"wrote {args.out}/compare.md and compare.json")
    return 0


if __name__ == "__main__":
    interrupts.exit_with(main)
