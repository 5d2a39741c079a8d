"""How a process of ours ends: exit handlers run, modules are not torn down one by one."""

import atexit
import os
import sys
from typing import NoReturn


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
