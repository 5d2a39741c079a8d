"""Why a trial failed, told apart: the kind decides whether it is retried or stops the worker.

Infrastructure kinds are retried with the same parameters (from the trial's last resume point),
at most `RETRIES[kind]` times in a row; a failed trial never counts against the budget.
- `oom`: CUDA ran out of memory; the retry waits for a GPU with no other trial on it.
- `storage`: the database or the artifact store could not be reached or written.
- `killed`: the worker stopped answering (stale heartbeat: Optuna queues the retry) or was
  stopped by SIGTERM / Ctrl-C (preemption).
- `data`: an image could not be read at run time; not retried (the file stays unreadable).
- `bug`: anything else; not retried, and the worker stops at once, with the cause in one line.
"""

import traceback
from pathlib import Path

import optuna

from carbrand_search.core.errors import first_line
from carbrand_search.data.imagefolder import BadImage
from carbrand_search.search.storage import database_unreachable

OOM, STORAGE, DATA, KILLED, BUG = "oom", "storage", "data", "killed", "bug"
RETRIES = {OOM: 3, STORAGE: 3, KILLED: 3}  # how often the same parameters run again, at most


class StoreUnwritable(OSError):
    """The artifact store refused a checkpoint or picture."""


def kind_of(error: BaseException) -> str:
    """The failure kind of an exception raised by a trial."""
    import torch  # here: `status` reads kinds without importing torch

    if isinstance(error, torch.cuda.OutOfMemoryError):
        return OOM
    if isinstance(error, StoreUnwritable) or database_unreachable(error):
        return STORAGE
    if type(error).__module__.startswith("botocore"):
        return STORAGE  # S3 still failing after the store's own retries
    if isinstance(error, BadImage):
        return DATA
    if isinstance(error, optuna.exceptions.UpdateFinishedTrialError | KeyboardInterrupt):
        # Its heartbeat lapsed (a paused machine) and the trial was run elsewhere, or the worker
        # was told to stop (SIGTERM, Ctrl-C).
        return KILLED
    return BUG


def describe(error: BaseException) -> str:
    """One line: type and message; for a bug also the innermost frame of this package."""
    if isinstance(error, KeyboardInterrupt):
        return "stopped by SIGTERM or Ctrl-C (preemption, docker stop, kill)"
    line = f"{type(error).__name__}: {first_line(error)}"
    if kind_of(error) != BUG:
        return line
    package = Path(__file__).resolve().parents[1]
    frames = traceback.extract_tb(error.__traceback__)
    ours = [f for f in frames if Path(f.filename).is_relative_to(package)]
    if ours:
        where = Path(ours[-1].filename).relative_to(package.parent)
        line += f" (at {where}:{ours[-1].lineno} in {ours[-1].name})"
    return line
