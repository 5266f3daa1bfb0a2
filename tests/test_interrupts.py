"""SIGINT and SIGTERM at any moment of the CLI and of the parity check, from their first import on:
status 130 or 143, one line, no traceback, and a run directory that --resume or --out can take up
again."""
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import make_idx_dir
from dcgan_jax import outputs

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def signalled(args, delay: float, signum: int):
    """(exit status, stderr) of `python ARGS` run in the repository and sent `signum` after `delay` s."""
    env = dict(os.environ, DCGAN_JAX_COMPILE_CACHE="off", PYTHONWARNINGS="ignore")
    proc = subprocess.Popen([sys.executable] + args, cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    time.sleep(delay)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=120)
    return proc.returncode, err


@pytest.mark.slow
@pytest.mark.parametrize("signum,status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
@pytest.mark.parametrize("delay", [0.2, 4.0])  # importing jax; loading or compiling
def test_a_signal_at_any_moment_ends_the_cli_with_one_line(tmp_path, signum, status, delay):
    data = make_idx_dir(tmp_path / "mnist", n_train=16, n_test=4)
    out = str(tmp_path / "run")
    code, err = signalled(["-m", "experiments.train", "--preset", "quick", "--batch-size", "4", "--steps-per-epoch",
                           "3", "--data-dir", data, "--out", out, "--no-progress"], delay, signum)
    if code == 0:
        pytest.skip("the run finished before the signal")  # a very fast machine
    assert code == status, err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "interrupted" in errors[0], err
    if os.path.isfile(os.path.join(out, "config.json")):
        outputs.check_resumable(out)          # --resume takes it
    else:
        assert outputs.prepare_run_dir(out) is None  # --out takes it, nothing to move aside


@pytest.mark.parametrize("signum,status,delay", [(signal.SIGINT, 130, 0.3), (signal.SIGINT, 130, 2.0),
                                                 (signal.SIGTERM, 143, 2.0)])  # while jax, then torch, import
def test_a_signal_while_the_parity_check_imports_ends_it_with_one_line(signum, status, delay):
    assert signalled(["-m", "parity.check"], delay, signum) == (status, "error: interrupted\n")


WRAPPED = """
import os, signal
from experiments import interrupts
interrupts.install()

def main():
    try:
        os.kill(os.getpid(), signal.{sig})
    except KeyboardInterrupt as e:  # as JAX does inside a trace: the interrupt becomes another error
        raise ValueError("exception raised while checking equality of metadata fields") from e
    return 0

interrupts.exit_with(main)
"""


@pytest.mark.parametrize("sig,status", [("SIGINT", 130), ("SIGTERM", 143)])
def test_an_interrupt_a_library_turns_into_another_error_still_ends_with_one_line(sig, status):
    proc = subprocess.run([sys.executable, "-c", WRAPPED.replace("{sig}", sig)], cwd=REPO, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == status and proc.stderr == "error: interrupted\n", proc.stderr


IN_A_DESTRUCTOR = """
import gc, os, signal, time
from experiments import interrupts
interrupts.install()

class Finalized:
    def __del__(self):  # where JAX's gc callback runs: an exception there is only printed
        os.kill(os.getpid(), signal.SIGINT)

def main():
    Finalized()
    gc.collect()
    time.sleep(30)  # a training run going on as if nothing happened
    return 0

interrupts.exit_with(main)
"""


def test_an_interrupt_raised_where_python_can_only_print_it_ends_at_once():
    proc = subprocess.run([sys.executable, "-c", IN_A_DESTRUCTOR], cwd=REPO, capture_output=True, text=True,
                          timeout=20)
    assert proc.returncode == 130 and proc.stderr == "error: interrupted\n", proc.stderr
