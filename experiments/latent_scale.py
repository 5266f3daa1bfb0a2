"""The tutorial's latent-scale experiment, answered: why G(c * z) barely changes with c.

  python -m experiments.latent_scale RUN_DIR [--out FIGURE]

The tutorial generates 20 images from z ~ N(0, 1), from z * (-10000) and from z * 50000 with a
generator left in train mode, sees digits every time, and leaves the reason open. This script
runs the same three experiments in train mode (BatchNorm with the batch's own statistics, what
the tutorial ran) and in eval mode (running statistics), saves the six 4x4 grids as one figure
(default RUN_DIR/latent_scale.png) and prints how far G(c * z) is from G(z) and from
G(sign(c) * z) in each mode.

Why: the generator's first layer is a ConvTranspose without bias, so its output is linear in z
and scaling every z by c scales that output, its batch mean and its batch std by c. Train-mode
BatchNorm divides by the batch std, which leaves sign(c) (and the eps term). Eval-mode BatchNorm
divides by a fixed running std, so c * z reaches the ReLUs c times larger.

An --out that exists is not overwritten (the default figure in RUN_DIR is this script's own).
Exit status: 0 done, 1 runtime error (not a finished run directory, a failed write), 2 bad
arguments, 130 interrupted (SIGINT), 143 terminated (SIGTERM).
"""
from experiments import interrupts  # first: a signal during the imports below ends the script too

if __name__ == "__main__":
    interrupts.install()

import argparse
import os
import sys

import jax
import numpy as np

from dcgan_jax.outputs import WriteError, image_grid, save_figure as write_figure
from dcgan_jax.train import generator_output
from experiments.common import check_count, check_new_files, check_out, load_run

MAX_NUM = 4096   # one train-mode batch through the generator: the tutorial's is 20

SCALES = (1.0, -10000.0, 50000.0)
MODES = (("batch", "train mode (batch statistics, as the tutorial)"),
         ("running", "eval mode (running statistics)"))


def measure(config, variables, z):
    """{mode: {scale: (outputs, max|G(cz) - G(z)|, max|G(cz) - G(sign(c) z)|)}} on raw outputs."""
    results = {}
    for mode, _ in MODES:
        base = {s: np.asarray(generator_output(config, variables, s * z, mode)) for s in (1.0, -1.0)}
        results[mode] = {}
        for c in SCALES:
            out = np.asarray(generator_output(config, variables, c * z, mode))
            results[mode][c] = (out, float(np.abs(out - base[1.0]).max()),
                                float(np.abs(out - base[np.sign(c)]).max()))
    return results


def answer(results) -> str:
    train = max(results["batch"][c][2] for c in SCALES[1:])
    evaluation = max(results["running"][c][2] for c in SCALES[1:])
    return (f"In train mode G(c*z) equals G(sign(c)*z) to within {train:.2e} for |c| up to "
            f"{max(abs(c) for c in SCALES):g} (the remainder is BatchNorm's eps): the first BatchNorm "
            f"divides the bias-free first layer's output by its batch std, which removes |c| (c < 0 "
            f"acts like feeding -z, another N(0, 1) sample), so the tutorial's outputs stay digits. In eval mode the running std is fixed "
            f"and the same change moves the outputs by up to {evaluation:.2f} (the Tanh range is 2): "
            f"the scale of z then matters.")


def save_figure(path: str, results, config, shown: int = 16):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(len(MODES), len(SCALES), figsize=(3.2 * len(SCALES), 3.6 * len(MODES)))
    for row, (mode, title) in enumerate(MODES):
        for col, c in enumerate(SCALES):
            out, vs_z, vs_sign = results[mode][c]
            images = (out[:shown] + 1) / 2 if config.data_range == "minus_one_one" else out[:shown]
            ax = axes[row, col]
            ax.imshow(image_grid(np.clip(images, 0, 1)), cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([]), ax.set_yticks([])
            ax.set_title(f"z x {c:g}\nmax|G(cz)-G(sign(c)z)| = {vs_sign:.1e}", fontsize=9)
            if col == 0:
                ax.set_ylabel(title, fontsize=9)
    fig.suptitle("The tutorial's latent-scale experiment: z ~ N(0, 1) scaled by c")
    fig.tight_layout()
    write_figure(fig, path, dpi=110)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m experiments.latent_scale", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", help="a finished run directory (python -m experiments.train)")
    p.add_argument("--out", help="figure path (default: RUN_DIR/latent_scale.png)")
    p.add_argument("--num", type=int, default=20,
                   help=f"batch of z, as the tutorial, 2 to {MAX_NUM} (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    out = args.out if args.out is not None else os.path.join(args.run_dir, "latent_scale.png")
    error = (check_count("--num", args.num, 2, MAX_NUM) or check_out(out, folder=False)
             or (check_new_files([out]) if args.out is not None else None))
    if error:
        p.error(error)
    config, g_vars, _ = load_run(args.run_dir)
    z = jax.random.normal(jax.random.key(args.seed), (args.num, config.latent_dim))
    results = measure(config, g_vars, z)

    print(f"{'mode':<8} {'c':>8}  {'max|G(cz)-G(z)|':>16}  {'max|G(cz)-G(sign(c)z)|':>23}")
    for mode, _ in MODES:
        for c in SCALES:
            _, vs_z, vs_sign = results[mode][c]
            print(f"{mode:<8} {c:>8g}  {vs_z:>16.3e}  {vs_sign:>23.3e}")
    print(answer(results))
    try:
        save_figure(out, results, config)
    except WriteError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"figure: {out}")
    return 0


if __name__ == "__main__":
    interrupts.exit_with(main)
