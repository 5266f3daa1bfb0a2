"""`python -m parity.check`: dcgan_jax against the PyTorch tutorial, one table row per layer and
quantity, with its max abs / rel difference and pass or fail. Exit code 0 if every row passes.

Three JAX train steps compile, so it takes a while on a CPU. Same comparisons as `pytest parity`;
see parity/compare.py for what each group measures. The tutorial's trained file (--pth, default
$PARITY_TUTORIAL_PTH) is compared too when given; it is read before anything else.
Exit status: 0 every row passes, 1 a row fails or the --pth file cannot be read, 2 bad arguments,
130 interrupted (SIGINT), 143 terminated (SIGTERM).
"""
from experiments import interrupts  # first: a signal while torch and JAX import ends the check too

if __name__ == "__main__":
    interrupts.install()

import argparse
import math
import os
import sys
import time

import numpy as np

from . import compare
from .tutorial_files import TutorialFileError, load_tutorial_module

MAX_SIZE = 1024   # --batch, --trajectory-batch and --steps: larger only makes the check slower
CHECKS = {"abs": "max abs", "rel": "max rel", "exact": "equal", "ratio": "ratio"}


def _first_line(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return text[0][:200] if text else type(e).__name__


def format_table(rows) -> str:
    def num(x):
        return "" if math.isnan(x) else f"{x:.2e}"

    name_width = max(len(r.name) for r in rows)
    header = f"{'quantity':<{name_width}}  {'max abs':>9}  {'max rel':>9}  {'judged':>7}  {'limit':>7}  result"
    lines, group = [], None
    for r in rows:
        if r.group != group:
            group = r.group
            lines += ["", f"## {group}", header, "-" * len(header)]
        lines.append(f"{r.name:<{name_width}}  {num(r.max_abs):>9}  {num(r.max_rel):>9}  {CHECKS[r.check]:>7}  "
                     f"{r.limit:>7.0e}  {'PASS' if r.passed else 'FAIL'}  {r.note}".rstrip())
    return "\n".join(lines[1:])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m parity.check", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=None, help="weights, inputs and keys (default: fresh)")
    parser.add_argument("--batch", type=int, default=8, help="batch of the forward/gradient checks")
    parser.add_argument("--trajectory-batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=20, help="training iterations per trajectory")
    parser.add_argument("--pth", default=os.environ.get("PARITY_TUTORIAL_PTH"),
                        help="the tutorial's DCGAN_Discriminator.pth (default: $PARITY_TUTORIAL_PTH, else none)")
    args = parser.parse_args(argv)
    for flag in ("batch", "trajectory_batch", "steps"):
        if not 2 <= getattr(args, flag) <= MAX_SIZE:
            parser.error(f"--{flag.replace('_', '-')} {getattr(args, flag)}: must lie in [2, {MAX_SIZE}]")
    if args.seed is not None and not 0 <= args.seed < 2**31:
        parser.error(f"--seed {args.seed}: must lie in [0, 2**31)")
    if args.pth == "":
        parser.error("--pth is empty: name the tutorial's file or leave the flag out")
    if args.pth:
        try:  # before the minutes of the other comparisons
            load_tutorial_module(args.pth)
        except (TutorialFileError, OSError, RuntimeError, EOFError, ValueError) as e:
            print(f"error: --pth {args.pth}: cannot be read as a tutorial model ({_first_line(e)})", file=sys.stderr)
            return 1
    seed = args.seed if args.seed is not None else int(np.random.SeedSequence().entropy % 2**31)

    start = time.time()
    rows = compare.forward_rows(seed, args.batch) + compare.gradient_rows(seed, args.batch)
    rows += compare.trajectory_rows(compare.trajectories(seed, args.trajectory_batch, args.steps))
    rows += compare.round_trip_rows(seed)
    pth_note = f"tutorial file: {args.pth}" if args.pth else "no tutorial file (--pth), not checked"
    if args.pth:
        rows += compare.tutorial_file_rows(args.pth, seed)
    failed = [r for r in rows if not r.passed]
    print(format_table(rows))
    print(f"\nseed {seed}; {pth_note}; {time.time() - start:.0f} s")
    print(f"{len(rows) - len(failed)}/{len(rows)} rows pass" + (f", {len(failed)} FAIL" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    interrupts.exit_with(main)
