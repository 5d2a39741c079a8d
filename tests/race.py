"""The child side of the SQLite race test, in a module of its own so that a spawned process
imports only Optuna and the storage (not the test module, with torch and the CLI)."""

from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier

import optuna

from carbrand_search.search.storage import open_storage


def ask_together(url: str, rounds: int, queued: Queue, barrier: Barrier, out: Queue) -> None:
    """Each round: wait until a trial was queued, then ask at the same instant as the others."""
    study = optuna.load_study(study_name="race", storage=open_storage(url))
    for _ in range(rounds):
        queued.get(timeout=120)
        barrier.wait(timeout=120)
        out.put(study.ask().number)


def open_together(url: str, barrier: Barrier, out: Queue) -> None:
    """Open a storage at the same instant as the others (on a fresh database: create its
    tables), and say how it went."""
    barrier.wait(timeout=120)
    try:
        open_storage(url)
        out.put("ok")
    except Exception as e:  # reported to the test, which shows it
        out.put(f"{type(e).__name__}: {e}")
