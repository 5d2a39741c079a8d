"""How a process of ours stops and ends: the first stop signal interrupts, later ones wait
their turn; exit handlers run, modules are not torn down one by one."""

import atexit
import os
import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, NoReturn


def stop_signals() -> tuple[int, ...]:
    """SIGTERM, and SIGINT unless this process was started with it ignored: a job started in
    the background of a non-interactive shell (`… &`) keeps that Unix convention, and so do
    the workers of `run`, which `run` stops itself."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        return (signal.SIGTERM,)
    return (signal.SIGTERM, signal.SIGINT)


@contextmanager
def stop_once(*signums: int, on_stop: Callable[[], None] | None = None) -> Iterator[None]:
    """Within the block the first of `signums` (SIGINT, SIGTERM) raises KeyboardInterrupt and
    every later one is ignored, so that what the stop does next (recording the interrupted
    trials, stopping workers) is never cut off half-way. `on_stop` runs first, in the handler.
    The previous handlers come back when the block ends."""
    previous = {signum: signal.getsignal(signum) for signum in signums}

    def stop(*_: Any) -> None:
        for signum in signums:
            signal.signal(signum, signal.SIG_IGN)
        if on_stop is not None:
            on_stop()
        raise KeyboardInterrupt

    for signum in signums:
        signal.signal(signum, stop)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def exit_now(code: int | str | None) -> NoReturn:
    """Exit as `sys.exit(code)` would, minus the interpreter's teardown of every module: with
    torch, timm and scikit-learn loaded that takes 2 s or more on 2 cores (bench/RESULTS.md),
    and everything worth keeping is written by then. Exit handlers (logging, MLflow,
    multiprocessing) still run."""
    if isinstance(code, str):
        print(code, file=sys.stderr)
        code = 1
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code or 0)
