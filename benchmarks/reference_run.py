"""The CLI run timed from process start, with the persistent compilation cache in CACHE_DIR.

  python -m benchmarks.reference_run CACHE_DIR [--timeline] --preset reference --data-dir DIR --out runs/ref

Runs experiments.train exactly as the CLI does, with `--compile-cache CACHE_DIR` (the CLI's own
default would be ~/.cache/dcgan_jax/jax, warm from any earlier run on the machine), and prints the
seconds from interpreter start to the final samples and weights on disk. Run it twice with the
same, first empty, CACHE_DIR for cold vs warm start.

--timeline also prints, per epoch, where the training loop's host thread spent its time: waiting
for the epoch's metrics (the device still training), dispatching the next epoch, saving the
checkpoint, writing samples and metrics. With overlapped epochs (scan), a wait near zero means the
loop waited on the host's own work, not on the device.

Exit status: experiments.train's; 2 without a CACHE_DIR.
"""
import collections
import functools
import sys
import time

import psutil


class Timeline:
    """Durations of the fit loop's host calls, patched in without changing the library."""

    def __init__(self):
        self.events = []    # (label, start, end), perf_counter seconds

    def wrap(self, owner, name, label, static=False):
        original = getattr(owner, name)

        @functools.wraps(original)
        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                tag = label(args) if callable(label) else label
                self.events.append((tag, start, time.perf_counter()))
        setattr(owner, name, staticmethod(timed) if static else timed)

    def install(self):
        from dcgan_jax import outputs, run
        from dcgan_jax.checkpoints import RunCheckpoints
        from dcgan_jax.parallel import DataParallel
        is_metrics = lambda args: "wait for metrics" if isinstance(args[0], dict) and "loss_d" in args[0] else "to host"
        self.wrap(DataParallel, "to_host", is_metrics, static=True)
        self.wrap(run, "train_epoch", "dispatch epoch")
        self.wrap(RunCheckpoints, "save", "checkpoint")
        self.wrap(run, "generate", "samples")
        for name in ("save_grid", "write_metrics", "write_step_metrics"):
            self.wrap(outputs, name, "write files")

    def report(self) -> str:
        """One line per epoch: the seconds between metrics arriving, split by what the host did."""
        ends = [end for tag, _, end in self.events if tag == "wait for metrics"]
        columns = ("wait for metrics", "dispatch epoch", "checkpoint", "samples", "to host", "write files")
        lines = ["host time of the training loop, seconds; row N: from epoch N-1's metrics to epoch N's",
                 "epoch  loop period  " + "  ".join(f"{c:>16}" for c in columns)]
        for i, end in enumerate(ends):
            before = ends[i - 1] if i else float("-inf")
            spent = collections.Counter()
            for tag, start, stop in self.events:
                if before < stop <= end:
                    spent[tag] += stop - start
            period = f"{end - before:11.3f}" if i else f"{'':>11}"
            lines.append(f"{i + 1:>5}  {period}  " + "  ".join(f"{spent[c]:16.3f}" for c in columns))
        return "\n".join(lines)


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    timeline = Timeline() if "--timeline" in argv else None
    if timeline:
        argv.remove("--timeline")
    if argv[:1] in (["-h"], ["--help"]):
        print(__doc__)
        return 0
    if not argv or argv[0].startswith("-"):
        print("error: the first argument is CACHE_DIR (see --help)", file=sys.stderr)
        return 2
    if timeline:
        timeline.install()
    from experiments.train import main as train
    code = train(["--compile-cache", argv[0], *argv[1:]])
    since_start = time.time() - psutil.Process().create_time()
    if timeline:
        print(timeline.report())
    print(f"process start to final samples and weights: {since_start:.1f} s")
    return code


if __name__ == "__main__":
    sys.exit(main())
