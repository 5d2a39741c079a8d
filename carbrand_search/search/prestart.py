"""Worker processes started before `run` has checked anything, so that their imports (torch,
Optuna, the trainer) overlap the run's own start-up and checks; each then gets its plan, or is
told to exit. This module imports nothing heavy: `run` can spawn before it loads torch."""

import contextlib
import multiprocessing as mp
import signal
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

from carbrand_search.core.process import exit_now


@dataclass
class WaitingWorkers:
    """Spawned processes waiting for their plans; `release` hands them out, `cancel` ends any
    still waiting (a refused run, a run with nothing to do). Both may be called more than once."""

    waiting: list[tuple[BaseProcess, Connection]] = field(default_factory=list)

    @classmethod
    def spawn(cls, count: int) -> "WaitingWorkers":
        """`count` processes (spawn: CUDA and forked torch threads do not mix)."""
        context = mp.get_context("spawn")
        started = cls()
        for _ in range(max(0, count)):
            ours, theirs = context.Pipe()
            process = context.Process(target=_await_plan, args=(theirs,), daemon=False)
            process.start()
            theirs.close()
            started.waiting.append((process, ours))
        return started

    def release(self, plans: list[Any]) -> list[BaseProcess]:
        """One process per plan (a WorkerPlan), spawning more if fewer are waiting."""
        if len(plans) > len(self.waiting):
            self.waiting += WaitingWorkers.spawn(len(plans) - len(self.waiting)).waiting
        released = []
        for plan, (process, conn) in zip(plans, self.waiting, strict=False):
            with contextlib.suppress(OSError):  # it died starting: its exit code tells the run
                conn.send(plan)
            conn.close()
            released.append(process)
        self.waiting = self.waiting[len(released) :]
        self.cancel()
        return released

    def cancel(self) -> None:
        for process, conn in self.waiting:
            conn.close()
            process.terminate()
        for process, _ in self.waiting:
            process.join()
        self.waiting = []


def _await_plan(conn: Connection) -> None:
    """A waiting worker: import the trainer while `run` checks, then run the plan it sends."""
    # Ctrl-C in a terminal reaches the whole process group; `run` stops its workers itself, once
    # (SIGTERM), so that none is interrupted again while it records its interrupted trial.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    from carbrand_search.search.worker import worker_main

    try:
        plan = conn.recv()
    except EOFError:  # the run ended without sending one
        return
    finally:
        conn.close()
    try:
        worker_main(plan)
    except SystemExit as stop:
        exit_now(stop.code)
    exit_now(0)
