"""One worker process: load the study, run trials until the budget is met, survive outages."""

import logging
import os
import socket
import sys
import time
from dataclasses import dataclass

import optuna
import torch
from optuna.trial import FrozenTrial, TrialState

from carbrand_search.core.process import stop_once, stop_signals
from carbrand_search.search import record
from carbrand_search.search.admission import wait_reason
from carbrand_search.search.budget import finished, places_taken
from carbrand_search.search.checkpoints import CheckpointKeeper
from carbrand_search.search.failures import BUG
from carbrand_search.search.objective import Objective
from carbrand_search.search.options import RunOptions
from carbrand_search.search.outage import Backoff, WorkerStopped
from carbrand_search.search.pruners import make_pruner
from carbrand_search.search.resume import sweep
from carbrand_search.search.retry import open_for_work
from carbrand_search.search.samplers import make_sampler
from carbrand_search.search.storage import (
    artifact_store,
    close,
    database_unreachable,
    finds_stale,
)
from carbrand_search.search.study import budget, stored_spec, trials
from carbrand_search.search.teacher import study_teacher
from carbrand_search.training.device import available_memory
from carbrand_search.training.parts import load_training_data


@dataclass(frozen=True)
class WorkerPlan:
    """Everything one worker process needs: the command's options, plus where this worker
    trains; plain values, so it pickles under spawn."""

    study: str
    options: RunOptions
    device: str  # resolved: cpu, cuda:N
    threads: int
    # The pid of the `run` that started this worker: once it is gone (SIGKILLed, its machine's
    # session closed) nothing supervises the worker, which stops after its current trial.
    launcher: int | None = None


def worker_label(pid: int | None = None) -> str:
    """host:pid, as stored on each trial a worker runs."""
    return f"{socket.gethostname()}:{pid or os.getpid()}"


def worker_main(plan: WorkerPlan) -> None:
    """A spawned worker process: `run_worker`, with a stopped worker's cause on stderr and
    exit code 3 for the `run` that started it."""
    try:
        run_worker(plan)
    except WorkerStopped as e:
        print(f"error: worker {worker_label()}: {e}", file=sys.stderr, flush=True)
        raise SystemExit(3) from None


def run_worker(plan: WorkerPlan) -> None:
    """Run trials until the study's budget is finished. SIGTERM and Ctrl-C end the running
    trial as FAIL (recorded and queued for retry; further signals wait until it is) and
    return; WorkerStopped when trials keep failing or the database stays away."""
    with stop_once(*stop_signals(), on_stop=_quiet_optuna):
        try:
            _work(plan)
        except KeyboardInterrupt:  # Optuna marked the running trial FAIL, then re-raised
            return


def _quiet_optuna() -> None:
    """Optuna logs an interrupted trial's KeyboardInterrupt with its whole traceback; the
    trial's record already says it was stopped, and the run says so in one line."""
    logging.getLogger("optuna.study._optimize").setLevel(logging.ERROR)


def _work(plan: WorkerPlan) -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # `run` shows progress itself
    torch.set_num_threads(plan.threads)
    options = plan.options
    storage = open_for_work(options.storage, options.heartbeat_s)
    study = optuna.load_study(study_name=plan.study, storage=storage)
    spec = stored_spec(study)
    study.sampler = make_sampler(spec.sampler)
    study.pruner = make_pruner(spec.pruner, spec.max_epochs)
    total = budget(study)
    data = load_training_data(
        options.data,
        spec.base.data,
        options.cache_root,
        torch.device(plan.device),
        skip_bad=options.skip_bad,
    )
    artifacts = artifact_store(options.artifacts)
    teacher = study_teacher(
        spec.base.distill, spec.base.data, storage, artifacts, data.tree, options.cache_root,
        options.skip_bad, data.train.device, student=plan.study,
    )  # fmt: skip
    objective = Objective(spec, data, artifacts, total, worker_label(), teacher)
    keeper = CheckpointKeeper(artifacts, spec.study.keep_checkpoints, spec.direction)
    # Storages with heartbeats can find a dead worker's trial and queue it again (through a proxy,
    # the proxy does): a worker with nothing to start waits for that instead of leaving.
    waits_for_stale = finds_stale(storage)
    failures = FailureGuard()
    outage = Backoff()
    memory = MemoryWait()
    try:
        while True:
            if plan.launcher is not None and os.getppid() != plan.launcher:
                print(
                    f"worker {worker_label()}: its run (pid {plan.launcher}) is gone; stopping",
                    file=sys.stderr, flush=True,
                )  # fmt: skip
                break
            try:
                everything = trials(study)
                if finished(everything) >= total:
                    sweep(everything, artifacts)
                    break
                if places_taken(everything, total):
                    if not waits_for_stale:
                        break
                    # The last trials belong to others; wait in case one dies and is re-queued.
                    time.sleep(2)
                    optuna.storages.fail_stale_trials(study)
                    continue
                free = available_memory(data.train.device)
                device, host = str(data.train.device), socket.gethostname()
                if memory.holds(wait_reason(everything, device, host, free)):
                    continue
                # Any exception fails just its trial (Optuna logs why); FailureGuard stops a
                # worker whose trials keep failing, since that is a bug or a broken setup.
                study.optimize(
                    objective, n_trials=1, catch=(Exception,), callbacks=[failures, keeper],
                    gc_after_trial=True,
                )  # fmt: skip
                outage.reset()
            except Exception as e:
                if not database_unreachable(e):
                    raise
                # The database went away (restart, network): wait and retry; a trial cut off
                # mid-way (its tell may have failed) stays RUNNING until its heartbeat lapses,
                # then is re-queued and resumes from its last resume point.
                outage.wait(e)
    finally:
        close(storage)


class FailureGuard:
    """Optuna callback: stop at the first bug, or after `limit` failed trials in a row of any
    other kind (a broken store, a dead GPU), saying why."""

    def __init__(self, limit: int = 3):
        self.limit = limit
        self.in_a_row = 0

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        stored = record.read(trial)
        if trial.state != TrialState.FAIL or stored.surplus:
            self.in_a_row = 0
            return
        self.in_a_row += 1
        if stored.failure_kind == BUG:
            raise WorkerStopped(f"trial {trial.number} failed with a bug: {stored.fail_reason}")
        if self.in_a_row >= self.limit:
            reason = stored.fail_reason or "unknown error"
            raise WorkerStopped(
                f"{self.limit} trials in a row failed; the last (trial {trial.number}): {reason}"
            )


class MemoryWait:
    """Waits (5 s at a time, saying why once) while `admission` holds the next trial back; after
    `patience_s` the worker starts it anyway: memory held outside the study may never come free,
    and an out-of-memory error is retried."""

    def __init__(self, patience_s: float = 600, poll_s: float = 5) -> None:
        self.patience_s, self.poll_s = patience_s, poll_s
        self.since: float | None = None
        self.said: str | None = None

    def holds(self, reason: str | None) -> bool:
        """Whether to wait now (it has slept already when it says so)."""
        now = time.monotonic()
        if reason is None or now - (self.since or now) > self.patience_s:
            self.since = self.said = None
            return False
        self.since = self.since or now
        if reason != self.said:
            print(f"worker {worker_label()} waits: {reason}", file=sys.stderr, flush=True)
            self.said = reason
        time.sleep(self.poll_s)
        return True
