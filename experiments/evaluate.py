"""Score a trained run's generator against the MNIST test set.

  python -m experiments.evaluate RUN_DIR [--data-dir ../shared/data/mnist] [--num-samples 10000]

Draws --num-samples images from the run's final generator, scores them with
dcgan_jax.metrics.sample_quality (FID, KID, Inception Score, precision/recall, density/coverage,
class coverage, all on the committed MNIST classifier) and prints them beside what real data
scores: a train subset of the same size against the test set, and the test set's own Inception
Score. Writes RUN_DIR/eval.json and RUN_DIR/eval.png (predicted-digit histogram and a grid of
samples). MNIST is found as training found it (the run's data_dir, else TFDS) unless --data-dir
is given.
Exit status: 0 done, 1 runtime error (not a finished run directory, data, a failed write), 2 bad
arguments, 130 interrupted (SIGINT), 143 terminated (SIGTERM).
"""
from experiments import interrupts  # first: a signal during the imports below ends the script too

if __name__ == "__main__":
    interrupts.install()

import argparse
import json
import os
import sys

import jax
import numpy as np

from dcgan_jax import metrics
from dcgan_jax.data import DataError
from dcgan_jax.outputs import WriteError, atomic_write, image_grid, save_figure as write_figure
from experiments.common import MAX_SAMPLES, check_count, generate_images, load_run

ROWS = (("fid", "FID", "{:.3f}"), ("kid", "KID", "{:.5f}"), ("inception_score", "Inception Score", "{:.3f}"),
        ("precision", "precision (k=3)", "{:.3f}"), ("recall", "recall (k=3)", "{:.3f}"),
        ("density", "density (k=5)", "{:.3f}"), ("coverage", "coverage (k=5)", "{:.3f}"),
        ("class_entropy", "class entropy (bits)", "{:.3f}"))


def table(scores: dict, baselines: dict | None) -> str:
    """Plain-text table: generated samples next to the real-data baselines."""
    real = baselines["train_subset_vs_test"] if baselines else {}
    lines = [f"{'metric':<22}{'generated':>24}{'real train subset':>24}"]

    def cell(values, key, fmt):
        if key not in values:
            return ""
        return fmt.format(values[key]) + (f" ± {values['kid_std']:.5f}" if key == "kid" else "")
    for key, name, fmt in ROWS:
        lines.append(f"{name:<22}{cell(scores, key, fmt):>24}{cell(real, key, fmt):>24}")
        if key == "inception_score" and baselines:
            lines.append(f"{'  (MNIST test set)':<22}{'':>24}{baselines['inception_score_test']:>24.3f}")
    hist = " ".join(f"{d}:{h:.1%}" for d, h in enumerate(scores["class_histogram"]))
    lines.append(f"predicted digits: {hist}")
    lines.append(f"missing digits (< {metrics.COVERAGE_THRESHOLD:.0%}): {scores['missing_digits'] or 'none'}")
    return "\n".join(lines)


def save_figure(path: str, scores: dict, samples: np.ndarray, test_histogram=None):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (ax_hist, ax_grid) = plt.subplots(1, 2, figsize=(11, 4.5), gridspec_kw={"width_ratios": [3, 2]})
    digits = np.arange(10)
    ax_hist.bar(digits - 0.2, scores["class_histogram"], 0.4, label="generated")
    if test_histogram is not None:
        ax_hist.bar(digits + 0.2, test_histogram, 0.4, label="MNIST test")
    ax_hist.axhline(metrics.COVERAGE_THRESHOLD, color="k", lw=0.8, ls="--", label="missing below")
    ax_hist.set_xticks(digits)
    ax_hist.set_xlabel("digit predicted by the MNIST classifier")
    ax_hist.set_ylabel("share of samples")
    ax_hist.set_title(f"FID {scores['fid']:.2f}   IS {scores['inception_score']:.2f}   "
                      f"P {scores['precision']:.2f}   R {scores['recall']:.2f}")
    ax_hist.legend()
    ax_grid.imshow(image_grid(samples[:64], ncol=8), cmap="gray", vmin=0, vmax=1)
    ax_grid.set_axis_off()
    ax_grid.set_title("samples")
    fig.tight_layout()
    write_figure(fig, path, dpi=100)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m experiments.evaluate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", help="a finished run directory (python -m experiments.train)")
    p.add_argument("--data-dir", help="MNIST IDX folder (default: the run's, else TFDS)")
    p.add_argument("--num-samples", type=int, default=10000,
                   help=f"generated images, 10 to {MAX_SAMPLES} (default: %(default)s)")
    p.add_argument("--bn", choices=("batch", "running"),
                   help="generator BatchNorm: batch (train mode) or running (eval mode); default: the run's samples_bn")
    p.add_argument("--seed", type=int, default=0, help="seed of the evaluation noise and KID subsets")
    p.add_argument("--no-baselines", action="store_true", help="skip the real-data baselines")
    args = p.parse_args(argv)
    if error := check_count("--num-samples", args.num_samples, 10, MAX_SAMPLES):
        p.error(error)
    config, g_vars, _ = load_run(args.run_dir)
    data_dir = args.data_dir or config.data_dir
    bn = args.bn or config.samples_bn

    try:
        test_probs, _ = metrics.test_set_outputs(data_dir, config.tfds_data_dir)
        baselines = None if args.no_baselines else metrics.real_baselines(
            data_dir, tfds_data_dir=config.tfds_data_dir, num_train=args.num_samples, seed=args.seed)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    samples = generate_images(config, g_vars, args.num_samples, jax.random.key(args.seed), bn)
    scores = metrics.sample_quality(samples, data_dir, tfds_data_dir=config.tfds_data_dir, seed=args.seed)

    print(f"{args.run_dir}: {args.num_samples} samples (BatchNorm: {bn}) vs "
          f"{scores['num_reference']} MNIST test images")
    print(table(scores, baselines))
    report = {"run_dir": os.path.abspath(args.run_dir), "bn": bn, "seed": args.seed,
              "generated": scores, "real_baselines": baselines,
              "extractor": {"file": "dcgan_jax/assets/mnist_extractor.msgpack",
                            "version": metrics.extractor.WEIGHTS_VERSION}}
    try:
        atomic_write(os.path.join(args.run_dir, "eval.json"), json.dumps(report, indent=2).encode())
        save_figure(os.path.join(args.run_dir, "eval.png"), scores, samples,
                    metrics.class_coverage(test_probs)["class_histogram"])
    except WriteError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {os.path.join(args.run_dir, 'eval.json')} and eval.png")
    return 0


if __name__ == "__main__":
    interrupts.exit_with(main)
