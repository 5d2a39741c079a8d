"""Why a trial failed, told apart: the kind decides whether it is retried or stops the worker.

- `oom`: CUDA ran out of memory; the same parameters are queued again (memory may be there later).
- `storage`: the database or the artifact store could not be reached or written.
- `data`: an image could not be read at run time.
- `killed`: the worker stopped answering (no heartbeat) or was stopped; Optuna re-queues it.
- `bug`: anything else; the worker stops at the first one, with the cause in one line.
"""

import traceback
from pathlib import Path

import optuna
import sqlalchemy

from carbrand_search.core.errors import first_line
from carbrand_search.data.imagefolder import BadImage

OOM, STORAGE, DATA, KILLED, BUG = "oom", "storage", "data", "killed", "bug"
MAX_OOM_RETRIES = 3  # the same parameters queued again after an out-of-memory error at most


class StoreUnwritable(OSError):
    """The artifact store refused a checkpoint or picture."""


def kind_of(error: BaseException) -> str:
    """The failure kind of an exception raised by a trial."""
    import torch  # here: `status` reads kinds without importing torch

    if isinstance(error, torch.cuda.OutOfMemoryError):
        return OOM
    if isinstance(error, sqlalchemy.exc.OperationalError | StoreUnwritable):
        return STORAGE
    if isinstance(error, BadImage):
        return DATA
    if isinstance(error, optuna.exceptions.UpdateFinishedTrialError):
        return KILLED  # its heartbeat lapsed (a paused machine) and the trial was run elsewhere
    return BUG


def describe(error: BaseException) -> str:
    """One line: type and message; for a bug also the innermost frame of this package."""
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
