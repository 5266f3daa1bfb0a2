"""Wall time of the README's quick start (`python -m experiments.train --preset quick`), cold (an
empty compile cache) and warm (the cache a cold run filled), for one or more checkouts, the runs
interleaved so that a change in the machine's load affects every checkout alike.

  python -m benchmarks.quick_start --data-dir ../shared/data/mnist --rounds 5 --json out.json \
      --checkout before=/path/to/old/checkout --checkout after=.
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time


def one_run(checkout: str, data_dir: str, cache: str, out: str) -> float:
    command = [sys.executable, "-m", "experiments.train", "--preset", "quick", "--data-dir", data_dir,
               "--out", out, "--no-progress", "--compile-cache", cache]
    begin = time.perf_counter()
    subprocess.run(command, cwd=checkout, check=True, capture_output=True)
    return time.perf_counter() - begin


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", required=True, help="folder with the four MNIST IDX files")
    p.add_argument("--checkout", action="append", required=True, metavar="NAME=DIR",
                   help="a checkout of dcgan_jax to time (repeatable)")
    p.add_argument("--rounds", type=int, default=5, help="cold and warm runs per checkout")
    p.add_argument("--json", help="write the times here")
    args = p.parse_args(argv)
    checkouts = dict(item.split("=", 1) for item in args.checkout)
    data_dir = os.path.abspath(args.data_dir)
    times = {name: {"cold": [], "warm": []} for name in checkouts}
    with tempfile.TemporaryDirectory() as scratch:
        for r in range(args.rounds):
            for name, checkout in checkouts.items():
                cache = os.path.join(scratch, f"cache-{name}-{r}")
                for kind in ("cold", "warm"):
                    out = os.path.join(scratch, f"run-{name}-{r}-{kind}")
                    times[name][kind].append(one_run(os.path.abspath(checkout), data_dir, cache, out))
                    shutil.rmtree(out)
                shutil.rmtree(cache)
                print(f"round {r + 1}: {name} cold {times[name]['cold'][-1]:.1f} s, warm {times[name]['warm'][-1]:.1f} s",
                      flush=True)
    for name, t in times.items():
        print(f"{name}: cold median {statistics.median(t['cold']):.1f} s, warm median {statistics.median(t['warm']):.1f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"checkouts": checkouts, "times_s": times, "cpus": os.cpu_count(),
                       "date": time.strftime("%Y-%m-%d"), "command": " ".join(sys.argv)}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
