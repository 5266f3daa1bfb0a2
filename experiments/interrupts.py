"""SIGINT and SIGTERM at any moment end a script with one line and status 130 or 143.

A script calls `install()` first thing when run as one (before `import jax`, which takes
seconds), then `exit_with(main)`. Until main runs, a signal ends the process at once; inside it,
both signals raise `Interrupted` (a KeyboardInterrupt, so the code's own cleanup runs) and are
recorded, so that one swallowed by a library still ends the process with its status. Imports
nothing heavy.
"""
import os
import signal
import sys
from typing import Callable

INTERRUPTED, TERMINATED = 128 + signal.SIGINT, 128 + signal.SIGTERM   # a shell's statuses: 130, 143
_received = []
_in_main = []


class Interrupted(KeyboardInterrupt):
    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.status = 128 + signum


def _raise(signum, frame):
    _received.append(signum)
    if not _in_main:  # importing: nothing to clean up
        _leave("error: interrupted", 128 + signum)
    raise Interrupted(signum)


def _leave(line: str, code: int):
    print(line, file=sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def install():
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _raise)
    default_hook = sys.unraisablehook

    def leave_if_interrupted(unraisable):  # raised where Python can only print it (a __del__, a gc callback)
        if isinstance(unraisable.exc_value, Interrupted):
            _leave("error: interrupted", unraisable.exc_value.status)
        default_hook(unraisable)
    sys.unraisablehook = leave_if_interrupted


def status() -> int:
    """The status for the first signal received (130 for a plain KeyboardInterrupt)."""
    return 128 + _received[0] if _received else INTERRUPTED


def exit_with(main: Callable[[], int], message: str = "interrupted"):
    """sys.exit(main()), or on a signal one line and 130 / 143. An interrupted process leaves with
    os._exit: it does not wait for work XLA cannot stop (compilations in other threads); nothing
    else is left to finish, every file being written whole or not at all."""
    _in_main.append(True)
    try:
        code = main()
    except KeyboardInterrupt:
        _leave(f"error: {message}", status())
    except BaseException:
        if _received:  # a library turned the interrupt into an error of its own
            _leave(f"error: {message}", status())
        raise
    if _received and code not in (INTERRUPTED, TERMINATED):  # swallowed somewhere inside
        _leave(f"error: {message}", status())
    if code in (INTERRUPTED, TERMINATED):
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)
