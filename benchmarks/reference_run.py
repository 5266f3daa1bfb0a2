"""The CLI run timed from process start, with the persistent compilation cache on.

  python -m benchmarks.reference_run CACHE_DIR --preset reference --data-dir DIR --out runs/ref

Runs experiments.train exactly as the CLI does, after dcgan_jax.runtime.enable_compile_cache
(the call the CLI makes by default), and prints the seconds from interpreter start to the final
samples and weights on disk. Run it twice with the same CACHE_DIR for cold vs warm start.
"""
import sys
import time

import psutil


def main():
    from dcgan_jax.runtime import enable_compile_cache
    enable_compile_cache(sys.argv[1])
    from experiments.train import main as train
    code = train(sys.argv[2:])
    since_start = time.time() - psutil.Process().create_time()
    print(f"process start to final samples and weights: {since_start:.1f} s")
    return code


if __name__ == "__main__":
    sys.exit(main())
