"""The CLI run timed from process start, with the persistent compilation cache in CACHE_DIR.

  python -m benchmarks.reference_run CACHE_DIR --preset reference --data-dir DIR --out runs/ref

Runs experiments.train exactly as the CLI does, with `--compile-cache CACHE_DIR` (the CLI's own
default would be ~/.cache/dcgan_jax/jax, warm from any earlier run on the machine), and prints the
seconds from interpreter start to the final samples and weights on disk. Run it twice with the
same, first empty, CACHE_DIR for cold vs warm start.
"""
import sys
import time

import psutil


def main():
    from experiments.train import main as train
    code = train(["--compile-cache", sys.argv[1], *sys.argv[2:]])
    since_start = time.time() - psutil.Process().create_time()
    print(f"process start to final samples and weights: {since_start:.1f} s")
    return code


if __name__ == "__main__":
    sys.exit(main())
