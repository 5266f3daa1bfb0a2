"""Where a dcgan_jax train step spends its time: the top XLA ops from a profiler trace.

  python -m benchmarks.profile --loop scan --steps 50          # GPU: one scanned epoch of 50 steps
  python -m benchmarks.profile --loop steps --steps 3          # CPU: three jitted steps

Runs the programs train.train_epoch runs (train.epoch_programs). Compiles first, then traces;
sums each HLO op's device time (GPU kernels, or XLA:CPU thunks) over the traced steps and prints
the top ops per step with their opcode, cuDNN call and shape.
"""
import argparse
import collections
import glob
import re
import tempfile

import jax
import numpy as np

from dcgan_jax.config import KERNELS, preset
from dcgan_jax.kernels import resolve
from dcgan_jax.train import create_train_state, epoch_programs, mesh_of

INSTR = re.compile(r"^\s*(?:ROOT )?%?([\w.\-]+) = (.+?) ([\w\-]+)\(")


def describe_ops(hlo_text: str) -> dict:
    """HLO op name -> 'opcode shape [custom-call target]' from a compiled module's text."""
    out = {}
    for line in hlo_text.splitlines():
        m = INSTR.match(line)
        if not m:
            continue
        name, shape, opcode = m.groups()
        target = re.search(r'custom_call_target="([^"]+)"', line)
        calls = re.search(r"calls=%?([\w.\-]+)", line)
        detail = target.group(1) if target else (calls.group(1) if calls else "")
        out[name] = f"{opcode} {detail} {shape[:60]}".strip()
    return out


def device_op_times(trace_dir: str) -> collections.Counter:
    """Sum of durations (ns) per HLO op over the device planes (GPU) or XLA:CPU worker threads."""
    path = sorted(glob.glob(f"{trace_dir}/**/*.xplane.pb", recursive=True))[-1]
    data = jax.profiler.ProfileData.from_file(path)
    gpu = [p for p in data.planes if p.name.startswith("/device:GPU")]
    totals = collections.Counter()
    for plane in gpu or [p for p in data.planes if p.name == "/host:CPU"]:
        for line in plane.lines:
            if not gpu and line.name == "python":
                continue
            for event in line.events:
                stats = dict(event.stats)
                op = stats.get("hlo_op") or (event.name if gpu else None)
                if op:
                    totals[op] += event.duration_ns
    return totals


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.profile", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--loop", choices=("scan", "steps"), default="scan")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--top", type=int, default=30)
    p.add_argument("--kernels", choices=KERNELS, default="auto", help="the layer forms (as the CLI's --kernels)")
    args = p.parse_args(argv)
    from dcgan_jax.runtime import enable_threefry_kernel, reuse_cpu_memory
    enable_threefry_kernel()
    reuse_cpu_memory()  # as the CLI
    config = preset("reference", dtype=args.dtype, kernels=args.kernels, steps_per_epoch=args.steps,
                    batch_size=args.batch_size).for_dataset(args.steps * args.batch_size)
    state = create_train_state(config, jax.random.key(0))
    images = jax.device_put(np.random.default_rng(0).integers(
        0, 256, (args.steps * args.batch_size, 28, 28, 1), dtype=np.uint8))
    key_data = np.asarray(jax.random.key_data(jax.random.key(1)))
    plan, step, scan = epoch_programs(mesh_of(images))
    if args.loop == "scan":
        compiled = scan.lower(state, images, key_data, 0).compile()
        run = lambda s: compiled(s, images, key_data)[0]
    else:
        idx, keys = plan(key_data, len(images), args.steps, args.batch_size)
        compiled = step.lower(state, images, idx, keys, np.int32(0)).compile()

        def run(s):
            for i in range(args.steps):
                s = compiled(s, images, idx, keys, np.int32(i))[0]
            return s
    names = describe_ops(compiled.as_text())
    state = jax.block_until_ready(run(state))           # warm-up (autotuning, allocations)
    with tempfile.TemporaryDirectory() as trace_dir:
        jax.profiler.start_trace(trace_dir)
        state = jax.block_until_ready(run(state))
        jax.profiler.stop_trace()
        totals = device_op_times(trace_dir)
    total = sum(totals.values())
    print(f"{jax.devices()[0].device_kind}, loop={args.loop}, {args.dtype}, kernels {resolve(args.kernels)}, "
          f"batch {args.batch_size}: "
          f"{total / 1e6 / args.steps:.3f} ms of op time per step over {args.steps} steps, {len(totals)} ops")
    by_kind = collections.Counter()
    for op, ns in totals.items():
        desc = names.get(op, op).split(" ")
        by_kind[" ".join(desc[:2]) if desc[0] == "custom-call" else desc[0]] += ns
    print("by opcode: " + ", ".join(f"{k} {100 * v / total:.1f}%" for k, v in by_kind.most_common(8)))
    print(f"{'op':40s} {'ms/step':>8s} {'%':>5s}  what")
    for op, ns in totals.most_common(args.top):
        print(f"{op[:40]:40s} {ns / 1e6 / args.steps:8.3f} {100 * ns / total:5.1f}  {names.get(op, '?')}")


if __name__ == "__main__":
    main()
