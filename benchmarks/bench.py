"""Benchmark dcgan_jax against the PyTorch tutorial: same data, batch, device, one invocation.

  python -m benchmarks.bench --device gpu --epochs 3 --data-dir ../shared/data/mnist --json out.json
  python -m benchmarks.bench --device cpu --epochs 2 --steps-per-epoch 5     # minutes on a CPU

Each variant runs in its own subprocess (its own compile caches, allocator and peak memory);
the table and JSON report the steady epoch (median of the epochs after the first), the first
epoch (compilation included), images/s, speed-up over the tutorial loop, achieved TFLOP/s
(FLOPs counted from the layer shapes, benchmarks/flops.py) and peak memory.
Exit status: 0 every variant ran, 1 a variant failed (its row says why) or --json cannot be
written, 2 bad arguments, 130 interrupted (SIGINT), 143 terminated (SIGTERM).
"""
from experiments import interrupts  # first: a signal during the imports below ends the script too

if __name__ == "__main__":
    interrupts.install()

import argparse
import datetime
import json
import os
import platform
import resource
import subprocess
import sys
import time

import numpy as np

from benchmarks.flops import step_flops
from dcgan_jax.outputs import WriteError, atomic_write

TORCH_VARIANTS = ("torch_tutorial", "torch_device_data", "torch_compile")
JAX_VARIANTS = ("jax_scan_fp32", "jax_steps_fp32", "jax_scan_bf16", "jax_steps_bf16")
# CPU: torch.compile needs a C++ toolchain and minutes; XLA:CPU is slow inside a scan (docs/performance.md).
DEFAULT_VARIANTS = {"gpu": TORCH_VARIANTS + JAX_VARIANTS,
                    "cpu": ("torch_tutorial", "torch_device_data", "jax_steps_fp32", "jax_steps_bf16")}


def load_images(data_dir):
    from dcgan_jax.data import load_mnist
    return load_mnist("train", data_dir).images


def worker(args) -> dict:
    """Run one variant in this process and return its row."""
    if args.device == "cpu":
        os.environ["JAX_PLATFORMS"] = "cpu"
    images = load_images(args.data_dir)
    memory_tuned = None  # JAX variants: whether runtime.reuse_cpu_memory tuned malloc
    if args.variant.startswith("torch"):
        import torch
        from benchmarks import torch_loops
        init_s = None
        seconds, peak, last = torch_loops.run(args.variant, images, args.device, args.epochs,
                                              args.steps_per_epoch, args.batch_size)
        framework, versions = "pytorch", {"torch": torch.__version__}
        dtype = "float32"
        device_name = torch.cuda.get_device_name() if args.device == "gpu" else "cpu"
    else:
        import jax
        from dcgan_jax.runtime import enable_compile_cache, enable_threefry_kernel, reuse_cpu_memory
        if os.environ.get("DCGAN_THREEFRY_KERNEL", "1") == "1":  # as the CLI; 0 for the A/B
            enable_threefry_kernel()
        if args.compile_cache:
            enable_compile_cache(args.compile_cache)
        memory_tuned = reuse_cpu_memory() if not args.no_cpu_memory_reuse else False  # as the CLI
        from benchmarks import jax_loops
        seconds, peak, last, init_s = jax_loops.run(args.variant, images, args.epochs, args.steps_per_epoch,
                                            args.batch_size)
        import flax
        framework, versions = "jax", {"jax": jax.__version__, "flax": flax.__version__}
        dtype = jax_loops.VARIANTS[args.variant][1]
        device_name = jax.devices()[0].device_kind
    steady = float(np.median(seconds[1:])) if len(seconds) > 1 else seconds[0]
    step_s = steady / args.steps_per_epoch
    return {
        "variant": args.variant + (f"[{args.tag}]" if args.tag else ""),
        "framework": framework, "device": args.device, "device_name": device_name, "dtype": dtype,
        "steady_epoch_s": steady, "first_epoch_s": seconds[0], "epoch_s": seconds,
        "step_ms": 1e3 * step_s, "images_per_s": args.batch_size / step_s,
        "tflops": step_flops(args.batch_size) / step_s / 1e12,
        "peak_mem_mb": (peak / 2**20 if peak is not None
                        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "peak_mem_kind": "device" if peak is not None else "host_rss",
        "process_to_first_epoch_s": time.time() - args.t0 - sum(seconds[1:]), "init_s": init_s,
        "steps_per_epoch": args.steps_per_epoch, "batch_size": args.batch_size, "epochs": args.epochs,
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "threefry_kernel": os.environ.get("DCGAN_THREEFRY_KERNEL", "1") == "1",
        "cpu_memory_reuse": memory_tuned,
        "malloc_env": {k: v for k, v in os.environ.items() if k == "GLIBC_TUNABLES" or k.startswith("MALLOC_")},
        "compile_cache": args.compile_cache, "last_losses": last, "versions": versions,
    }


def spawn(variant, args) -> dict:
    cmd = [sys.executable, "-m", "benchmarks.bench", "--worker", variant, "--device", args.device,
           "--epochs", str(args.epochs), "--steps-per-epoch", str(args.steps_per_epoch),
           "--batch-size", str(args.batch_size), "--t0", repr(time.time())]
    for flag in ("data_dir", "compile_cache", "tag"):
        if getattr(args, flag):
            cmd += ["--" + flag.replace("_", "-"), getattr(args, flag)]
    if args.no_cpu_memory_reuse:
        cmd.append("--no-cpu-memory-reuse")
    proc = subprocess.run(cmd, capture_output=True, text=True)
    rows = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
    if proc.returncode or not rows:
        sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-3000:])
        return {"variant": variant, "error": (proc.stderr.strip().splitlines() or ["no output"])[-1]}
    return json.loads(rows[-1][len("RESULT "):])


def table(rows) -> str:
    ok = [r for r in rows if "error" not in r]
    base = next((r["steady_epoch_s"] for r in ok if r["variant"] == "torch_tutorial"), None)
    lines = ["| variant | dtype | steady epoch (s) | first epoch (s) | step (ms) | images/s | "
             "× tutorial | TFLOP/s | peak mem (MiB) |", "|---" * 9 + "|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['variant']} | failed: {r['error'][:80]} |" + " |" * 7)
            continue
        speedup = f"{base / r['steady_epoch_s']:.1f}" if base else "-"
        lines.append(f"| {r['variant']} | {r['dtype']} | {r['steady_epoch_s']:.2f} | "
                     f"{r['first_epoch_s']:.2f} | {r['step_ms']:.1f} | {r['images_per_s']:.0f} | "
                     f"{speedup} | {r['tflops']:.3g} | {r['peak_mem_mb']:.0f} |")
    return "\n".join(lines)


def bad_arguments(args, variants) -> str:
    """The first bad argument, checked before any variant starts (each takes minutes), or ''."""
    unknown = sorted(set(variants) - set(TORCH_VARIANTS + JAX_VARIANTS))
    if unknown:
        return f"unknown variant(s): {', '.join(unknown)}"
    for flag, value, high in (("--epochs", args.epochs, 1000), ("--steps-per-epoch", args.steps_per_epoch, 100_000),
                              ("--batch-size", args.batch_size, 60_000)):
        if not 1 <= value <= high:
            return f"{flag} {value}: must lie in [1, {high}]"
    if args.data_dir is not None and not os.path.isdir(args.data_dir):
        return f"--data-dir {args.data_dir!r} is not a folder"
    for flag, path in (("--json", args.json), ("--compile-cache", args.compile_cache)):
        if path == "":
            return f"{flag} is empty"
    if args.json and (os.path.isdir(args.json) or not os.path.isdir(os.path.dirname(os.path.abspath(args.json)))):
        return f"--json {args.json}: " + ("is a folder" if os.path.isdir(args.json) else "its folder does not exist")
    return ""


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=("cpu", "gpu"), default="gpu")
    p.add_argument("--epochs", type=int, default=3, help="epochs per variant (>= 2: the first compiles)")
    p.add_argument("--steps-per-epoch", type=int, default=600)
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--data-dir", help="folder with the MNIST IDX files (default: TFDS 'mnist')")
    p.add_argument("--variants", help=f"comma-separated, from {', '.join(TORCH_VARIANTS + JAX_VARIANTS)} "
                                      "(default: all on gpu, no scan/compile on cpu)")
    p.add_argument("--json", help="write the rows here (a list of objects)")
    p.add_argument("--compile-cache", help="JAX variants: persistent compilation cache folder")
    p.add_argument("--tag", help="label appended to the variant names (A/B runs)")
    p.add_argument("--no-cpu-memory-reuse", action="store_true",
                   help="JAX variants: skip dcgan_jax.runtime.reuse_cpu_memory (the CLI calls it)")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--t0", type=float, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    variants = (args.worker or args.variants or ",".join(DEFAULT_VARIANTS[args.device])).split(",")
    if error := bad_arguments(args, variants):
        p.error(error)
    if args.worker:
        args.variant = args.worker
        print("RESULT " + json.dumps(worker(args)), flush=True)
        return 0
    started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    rows = []
    for v in variants:
        row = spawn(v, args)
        rows.append(row)
        print(json.dumps(row), flush=True)
    meta = {"date": started,
            "host": platform.node(), "cpus": os.cpu_count(), "command": " ".join(sys.argv)}
    print(f"\n{meta['date']}  {meta['command']}\n" + table(rows), flush=True)
    if args.json:
        try:
            atomic_write(args.json, json.dumps([dict(r, **meta) for r in rows], indent=1).encode())
        except WriteError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    interrupts.exit_with(main)
