"""Run a study end to end: check everything before the storage is touched, create or resume the
study, start the workers, watch them until the budget is met or the run is stopped, stop them.

`run` and `worker` call `run_study` and `join_study`; tests call them without a subprocess. What
happens along the way goes to a `RunProgress`, which the CLI draws with rich.
"""

import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing.connection import wait
from typing import Protocol

import optuna
import torch
from optuna.trial import FrozenTrial

from carbrand_search.core.errors import UserError
from carbrand_search.core.process import stop_once, stop_signals
from carbrand_search.data.imagefolder import scan
from carbrand_search.search import record
from carbrand_search.search.budget import finished
from carbrand_search.search.launcher import plan_devices, stop_workers
from carbrand_search.search.options import LaunchOptions, RunOptions
from carbrand_search.search.outage import Backoff, riding_out
from carbrand_search.search.prestart import WaitingWorkers
from carbrand_search.search.retry import open_for_work
from carbrand_search.search.spec import StudySpec
from carbrand_search.search.storage import artifact_store, database_unreachable, mask
from carbrand_search.search.study import (
    budget,
    ensure_study,
    open_study,
    pin_teacher,
    remember_data,
    stored_spec,
    trials,
)
from carbrand_search.search.teacher import Teacher, study_teacher
from carbrand_search.search.tracking import check_tracking
from carbrand_search.search.views import dashboard_note
from carbrand_search.search.warmstart import enqueue_from
from carbrand_search.search.worker import WorkerPlan, run_worker
from carbrand_search.training.parts import build_model, load_split


class RunProgress(Protocol):
    """Receives what a run does, as it does it."""

    def note(self, text: str) -> None:
        """A line worth showing (what will run, what was queued)."""

    def warning(self, text: str) -> None:
        """Something the user should reconsider; the run goes on."""

    def decoding(self, split: str, done: int, total: int) -> None:
        """The image cache of `split` is being built."""

    def trials(self, found: Sequence[FrozenTrial], budget: int) -> None:
        """The study's trials and its budget, about once a second while workers run."""


@dataclass(frozen=True)
class RunOutcome:
    """How a run ended."""

    study: str
    budget: int
    finished: int
    direction: str
    trials: tuple[FrozenTrial, ...] = ()
    worker_exit_codes: tuple[int, ...] = ()
    interrupted: bool = False
    nothing_to_do: bool = False  # the budget was already met when the run began

    @property
    def budget_met(self) -> bool:
        return self.finished >= self.budget

    @property
    def crashed(self) -> list[int]:
        """Non-zero worker exit codes."""
        return [code for code in self.worker_exit_codes if code]


def preflight(spec: StudySpec, options: RunOptions, progress: RunProgress) -> None:
    """Everything that can be wrong before the storage is touched: the data, the model's
    weights, the image cache (built here, once, for all workers), the artifact store."""
    tree = scan(options.data)
    if clutter := tree.clutter_line():
        progress.note(f"{options.data}: {clutter}")
    build_model(spec.resolve(spec.defaults()), len(tree.classes))  # missing weights stop here
    for split in ("train", "val"):
        load_split(
            tree, split, spec.base.data, options.cache_root, options.skip_bad, progress.decoding
        )
    artifact_store(options.artifacts)
    check_tracking(spec.tracking, spec.name)


def run_study(
    spec: StudySpec,
    options: RunOptions,
    launch: LaunchOptions,
    progress: RunProgress,
    waiting: WaitingWorkers | None = None,
) -> RunOutcome:
    """Create or resume the study of `spec` and run workers until its budget is met, the
    workers stop, or the run is interrupted (Ctrl-C, SIGTERM); running trials of stopped
    workers are marked FAIL, so a later run resumes them. `waiting`: workers the caller spawned
    before importing this module (they are cancelled if the run does not need them)."""
    waiting = waiting or WaitingWorkers()
    try:
        return _run_study(spec, options, launch, progress, waiting)
    finally:
        waiting.cancel()


def _run_study(
    spec: StudySpec,
    options: RunOptions,
    launch: LaunchOptions,
    progress: RunProgress,
    waiting: WaitingWorkers,
) -> RunOutcome:
    devices = plan_devices(options.device, launch.workers, launch.workers_per_gpu, launch.threads)
    cores = os.cpu_count() or 1
    if devices[0][0] == "cpu" and launch.workers > cores:
        progress.warning(
            f"{launch.workers} workers on {cores} CPU cores compete for them: more workers "
            "than cores give no more trials per hour (bench/RESULTS.md, trials per hour)"
        )
    preflight(spec, options, progress)
    store = open_for_work(options.storage, options.heartbeat_s)
    teacher = _check_teacher(spec, options, store, devices[0][0], progress)
    source = _source_study(launch.warm_from, store)
    study = ensure_study(spec, store, launch.n_trials)
    if teacher is not None:
        pin_teacher(study, teacher.ref)
    remember_data(study, options.data, options.cache, options.skip_bad)
    total = budget(study)
    found = trials(study)
    record.check_all(found)  # a record changed by hand is one line now, not a worker's trace
    done = finished(found)
    if done >= total:
        _save_note(study, spec)
        return RunOutcome(spec.name, total, done, spec.direction, nothing_to_do=True)
    if source is not None:
        _warm_start(study, spec, source, launch.warm_top, progress)
    progress.note(
        f"{spec.name}: {total - done} trials to go with {launch.workers} worker(s) on "
        f"{', '.join(sorted({d for d, _ in devices}))}; storage {mask(options.storage)}; "
        f"study file {spec.path}"
    )
    plans = [
        WorkerPlan(spec.name, options, device, threads, launcher=os.getpid())
        for device, threads in devices
    ]
    processes = waiting.release(plans)
    interrupted = False
    # A database restart is waited out here as in the workers, which go on training meanwhile.
    outage = Backoff(say=progress.warning)
    # SIGTERM (`kill`, `docker stop`) stops a run like Ctrl-C: workers are never orphaned. The
    # workers `run` started ignore Ctrl-C: they stop when told, once, by stop_workers.
    with stop_once(*stop_signals()):
        try:
            # The note now, not only at the end: the dashboard shows it during the run, and
            # optuna-dashboard (it loads scikit-learn) is imported while the workers start.
            riding_out(lambda: _save_note(study, spec), outage)
            while any(p.is_alive() for p in processes):
                progress.trials(riding_out(lambda: trials(study), outage), total)
                wait([p.sentinel for p in processes if p.is_alive()], timeout=1)
        except KeyboardInterrupt:
            interrupted = True
        finally:
            riding_out(lambda: stop_workers(processes, study), outage)
    riding_out(lambda: _save_note(study, spec), outage)
    found = riding_out(lambda: trials(study), outage)
    progress.trials(found, total)  # the last trials may have ended after the last look
    return RunOutcome(
        study=spec.name,
        budget=total,
        finished=finished(found),
        direction=spec.direction,
        trials=tuple(found),
        worker_exit_codes=tuple(p.exitcode or 0 for p in processes),
        interrupted=interrupted,
    )


def _check_teacher(
    spec: StudySpec,
    options: RunOptions,
    store: optuna.storages.BaseStorage,
    device: str,
    progress: RunProgress,
) -> Teacher | None:
    """A study with a teacher: refuse a teacher that cannot teach before any trial, and
    compute its outputs for the training views here, once, for every worker (unless it runs
    on every batch)."""
    cfg = spec.base.distill
    # A teacher that runs on every batch is only checked here (and its images decoded): each
    # worker puts it on its own device.
    where = torch.device("cpu" if cfg.live else device)
    teacher = study_teacher(
        cfg, spec.base.data, store, artifact_store(options.artifacts), scan(options.data),
        options.cache_root, options.skip_bad, where, student=spec.name,
        on_progress=lambda done, total: progress.decoding("teacher views", done, total),
    )  # fmt: skip
    if teacher is None:
        return None
    t = teacher.targets
    if t is None:
        progress.note(f"teacher: {teacher.ref}; it runs on every batch, a fresh view each step")
        return teacher
    how = "from the cache" if teacher.reused else "computed now"
    progress.note(
        f"teacher: {teacher.ref}; {cfg.views} views per training image ({how}); its top "
        f"class is the label on {t.agreement:.1%} of them; at T {cfg.temperature:g} it gives "
        f"the label {t.label_prob:.2f} on average and spreads the rest at "
        f"{t.others_entropy:.2f} of the uniform entropy"
    )
    return teacher


def _save_note(study: optuna.Study, spec: StudySpec) -> None:
    """The study's note in optuna-dashboard; imported here, as the package loads scikit-learn."""
    from optuna_dashboard import save_note

    save_note(study, dashboard_note(study, spec))


def _source_study(name: str | None, store: optuna.storages.BaseStorage) -> optuna.Study | None:
    if name is None:
        return None
    try:
        return optuna.load_study(study_name=name, storage=store)
    except KeyError:
        raise UserError(f"--from {name}: no such study in this storage") from None


def _warm_start(
    study: optuna.Study, spec: StudySpec, source: optuna.Study, top: int, progress: RunProgress
) -> None:
    """`run --from`: queue the other study's best fitting parameter sets and say which."""
    result = enqueue_from(study, spec, source, stored_spec(source), top)
    for number, reason in result.skipped:
        progress.note(f"--from {source.study_name}: skipped trial {number}: {reason}")
    queued = ", ".join(str(n) for n in result.enqueued) or "none"
    progress.note(f"--from {source.study_name}: queued trials {queued} as warm starts")


WATCH_EVERY_S = 2.0  # how often `worker` looks at the study for its progress lines


def join_study(
    name: str, options: RunOptions, threads: int | None = None, progress: RunProgress | None = None
) -> None:
    """`worker`: run trials of an existing study in this process until its budget is met,
    showing the study's trials to `progress` meanwhile. Raises WorkerStopped when its trials keep
    failing."""
    study = open_study(name, options.storage)  # a missing study is a clear error, not a trace
    device = plan_devices(options.device, 1, 1)[0][0]
    plan = WorkerPlan(name, options, device, threads or os.cpu_count() or 1)
    if progress is None:
        run_worker(plan)
        return
    total = budget(study)
    progress.trials(trials(study), total)  # the first look: what ends from now on is news
    stop = threading.Event()
    # Its own reads, beside the worker's: the worker blocks in training for minutes at a time.
    watcher = threading.Thread(
        target=lambda: _watch(study, total, progress, stop), name="progress", daemon=True
    )
    watcher.start()
    try:
        run_worker(plan)
    finally:
        stop.set()
        watcher.join()
        progress.trials(trials(study), total)


def _watch(study: optuna.Study, total: int, progress: RunProgress, stop: threading.Event) -> None:
    while not stop.wait(WATCH_EVERY_S):
        try:
            progress.trials(trials(study), total)
        except Exception as e:  # the worker itself rides out outages and says so
            if not database_unreachable(e):
                raise
