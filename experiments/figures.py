"""Figures for a course, from a finished run directory.

  python -m experiments.figures RUN_DIR [--data-dir ../shared/data/mnist] [--out DIR]

Writes into DIR (default RUN_DIR/figures):
  samples.gif              the fixed-noise 4x4 grid after each epoch (samples/epoch_*.png), animated
  losses.png               per-step G and D losses with the equilibrium levels log(2) and log(4),
                           and D(x), D(G(z)) with their equilibrium 1/2
  interpolation.png        G along straight (linear) and great-circle (spherical) paths between
                           pairs of latent vectors
  real_vs_generated.png    MNIST test images next to generated ones
Files of those names in an --out DIR are not overwritten (RUN_DIR/figures is this script's own).
Exit status: 0 done, 1 runtime error (not a finished run directory, data, a failed write), 2 bad
arguments, 130 interrupted (SIGINT), 143 terminated (SIGTERM).
"""
from experiments import interrupts  # first: a signal during the imports below ends the script too

if __name__ == "__main__":
    interrupts.install()

import argparse
import os
import re
import sys

import jax
import numpy as np

from dcgan_jax.data import DataError, load_mnist
from dcgan_jax.outputs import WriteError, atomic_write, image_grid, save_figure
from dcgan_jax.train import generator_output
from experiments.common import check_new_files, check_out, generate_images, load_run

FILES = ("samples.gif", "losses.png", "interpolation.png", "real_vs_generated.png")


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def epoch_grids(run_dir: str):
    """[(epoch, path)] of samples/epoch_NNN.png in epoch order. The number is parsed, not sliced,
    and sorted as a number: past epoch 999 the names have 4 digits and sort wrongly as text."""
    folder = os.path.join(run_dir, "samples")
    names = os.listdir(folder) if os.path.isdir(folder) else []
    grids = sorted((int(m.group(1)), os.path.join(folder, n))
                   for n in names if (m := re.fullmatch(r"epoch_(\d+)\.png", n)))
    if not grids:
        raise FileNotFoundError(f"{folder} holds no epoch_*.png grids")
    return grids


def samples_gif(run_dir: str, path: str, frame_ms: int = 600):
    """Animate samples/epoch_*.png with the epoch written on each frame."""
    from PIL import Image, ImageDraw
    frames = []
    for epoch, f in epoch_grids(run_dir):
        img = Image.open(f).convert("L")
        canvas = Image.new("L", (img.width, img.height + 16), 255)
        canvas.paste(img, (0, 16))
        ImageDraw.Draw(canvas).text((4, 2), f"epoch {epoch}", fill=0)
        frames.append(canvas)
    atomic_write(path, lambda f: frames[0].save(f, format="GIF", save_all=True, append_images=frames[1:],
                                                duration=frame_ms, loop=0))
    return len(frames)


def moving_average(y, window: int):
    """(steps, means): the mean of y over `window` steps, each placed at the last step it covers,
    so that smoothed curves line up with the per-step ones (and with each other across panels)."""
    y = np.asarray(y)
    window = max(1, min(window, len(y)))
    return np.arange(window - 1, len(y)), np.convolve(y, np.ones(window) / window, mode="valid")


def loss_figure(run_dir: str, path: str, steps_per_epoch: int):
    save_figure(loss_plot(np.load(os.path.join(run_dir, "step_metrics.npz")), steps_per_epoch), path, dpi=100)


def loss_plot(metrics, steps_per_epoch: int):
    """Losses against their equilibrium values.

    At the GAN equilibrium D outputs 1/2 everywhere, so each cross-entropy term is log 2: the
    generator loss and this project's D loss (the tutorial's mean of the real and fake terms)
    both tend to log 2. log 4 is the same D loss written as a sum (the GAN paper's -V(D, G)).
    """
    plt = _pyplot()
    fig, (ax, ax_p) = plt.subplots(2, 1, figsize=(10, 7), sharex=True)
    window = max(1, steps_per_epoch // 10)

    def per_step_and_smoothed(axis, key, label):
        line, = axis.plot(np.arange(len(metrics[key])), metrics[key], lw=0.5, alpha=0.35)
        axis.plot(*moving_average(metrics[key], window), lw=1.2, color=line.get_color(), label=label)

    for key, label in (("loss_g", "G loss"), ("loss_d", "D loss (mean of real and fake terms)")):
        per_step_and_smoothed(ax, key, label)
    ax.axhline(np.log(2), color="k", ls="--", lw=0.9, label="log 2: G and mean-D loss at equilibrium")
    ax.axhline(np.log(4), color="gray", ls=":", lw=0.9, label="log 4: the D loss summed over real and fake")
    ax.set_ylabel("cross-entropy")
    ax.legend(fontsize=8)
    for key, label in (("d_real", "D(x)"), ("d_fake", "D(G(z))")):
        per_step_and_smoothed(ax_p, key, label)
    ax_p.axhline(0.5, color="k", ls="--", lw=0.9, label="1/2 at equilibrium")
    ax_p.set_ylim(0, 1)
    ax_p.set_xlabel(f"iteration ({steps_per_epoch} per epoch; light: per step, dark: mean over {window})")
    ax_p.set_ylabel("mean probability of 'real'")
    ax_p.legend(fontsize=8)
    fig.tight_layout()
    return fig


def slerp(a, b, t):
    """Great-circle interpolation between latent vectors a and b (rows), t in [0, 1]."""
    cos = np.sum(a * b, -1, keepdims=True) / (np.linalg.norm(a, axis=-1, keepdims=True)
                                             * np.linalg.norm(b, axis=-1, keepdims=True))
    omega = np.arccos(np.clip(cos, -1, 1))
    so = np.sin(omega)
    return np.where(so < 1e-6, (1 - t) * a + t * b,
                    np.sin((1 - t) * omega) / np.where(so < 1e-6, 1, so) * a
                    + np.sin(t * omega) / np.where(so < 1e-6, 1, so) * b)


def interpolation_paths(key, latent_dim: int, pairs: int, steps: int):
    """{'linear': z, 'spherical': z}, each (pairs * steps, latent_dim), rows of one path each."""
    a, b = np.asarray(jax.random.normal(key, (2, pairs, 1, latent_dim)))
    t = np.linspace(0, 1, steps)[None, :, None]
    return {"linear": ((1 - t) * a + t * b).reshape(-1, latent_dim),
            "spherical": slerp(a, b, t).reshape(-1, latent_dim)}


def interpolation_figure(config, variables, path: str, key, pairs: int = 6, steps: int = 10):
    plt = _pyplot()
    paths = interpolation_paths(key, config.latent_dim, pairs, steps)
    fig, axes = plt.subplots(1, 2, figsize=(12, 0.72 * pairs + 1))
    for ax, (name, z) in zip(axes, paths.items()):
        images = np.asarray(generator_output(config, variables, z, config.samples_bn, unit_range=True))
        ax.imshow(image_grid(images, ncol=steps), cmap="gray", vmin=0, vmax=1)
        ax.set_axis_off()
        ax.set_title(f"{name} interpolation (one pair of z per row)")
    fig.tight_layout()
    save_figure(fig, path, dpi=100)


def real_vs_generated(real, generated, path: str):
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 5.3))
    for ax, images, title in ((axes[0], real, "real (MNIST test)"), (axes[1], generated, "generated")):
        ax.imshow(image_grid(images, ncol=8), cmap="gray", vmin=0, vmax=1)
        ax.set_axis_off()
        ax.set_title(title)
    fig.tight_layout()
    save_figure(fig, path, dpi=100)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m experiments.figures", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", help="a finished run directory (python -m experiments.train)")
    p.add_argument("--out", help="output folder (default: RUN_DIR/figures)")
    p.add_argument("--data-dir", help="MNIST IDX folder for the real images (default: the run's, else TFDS)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    out = args.out if args.out is not None else os.path.join(args.run_dir, "figures")
    error = check_out(out, folder=True) or (
        check_new_files(os.path.join(out, f) for f in FILES) if args.out is not None else None)
    if error:
        p.error(error)
    config, g_vars, _ = load_run(args.run_dir)
    interp_key, sample_key, real_key = jax.random.split(jax.random.key(args.seed), 3)
    # Every input is checked before --out is created: an error leaves no empty folder behind.
    try:
        epoch_grids(args.run_dir)
        if not os.path.isfile(os.path.join(args.run_dir, "step_metrics.npz")):
            raise FileNotFoundError(f"{args.run_dir} holds no step_metrics.npz")
        real = load_mnist("test", args.data_dir or config.data_dir, config.tfds_data_dir).images
    except (DataError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    try:
        frames = samples_gif(args.run_dir, os.path.join(out, "samples.gif"))
        loss_figure(args.run_dir, os.path.join(out, "losses.png"), config.steps_per_epoch)
        interpolation_figure(config, g_vars, os.path.join(out, "interpolation.png"), interp_key)
        n = min(64, len(real))
        pick = np.asarray(jax.random.choice(real_key, len(real), (n,), replace=False))
        real_vs_generated(real[pick].astype(np.float32) / 255,
                          generate_images(config, g_vars, n, sample_key, config.samples_bn),
                          os.path.join(out, "real_vs_generated.png"))
    except WriteError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {out}/: samples.gif ({frames} epochs), losses.png, interpolation.png, real_vs_generated.png")
    return 0


if __name__ == "__main__":
    interrupts.exit_with(main)
