"""Create a study once, start N worker processes (spawn), assign devices, keep the trial budget."""

import multiprocessing as mp
import os
import signal
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy
from optuna.trial import FrozenTrial, TrialState

from carbrand_search.core.config import SamplerConfig
from carbrand_search.core.errors import UserError
from carbrand_search.search.pruners import make_pruner
from carbrand_search.search.spec import StudySpec, spec_from_text
from carbrand_search.search.warmstart import enqueue_defaults

TEXT_ATTR, HASH_ATTR, BUDGET_ATTR = "study_text", "study_hash", "n_trials"
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


@dataclass(frozen=True)
class WorkerPlan:
    """Everything one worker process needs; plain values so it pickles under spawn."""

    study: str
    storage: str
    artifacts: str
    data: str
    cache: str
    device: str
    threads: int
    index: int
    heartbeat_s: int
    skip_bad: bool = False


def worker_label(pid: int | None = None) -> str:
    return f"{socket.gethostname()}:{pid or os.getpid()}"


def make_sampler(cfg: SamplerConfig, offset: int) -> optuna.samplers.BaseSampler:
    """The study file's sampler; each worker gets its own seed so they do not sample alike."""
    seed = cfg.seed + offset
    if cfg.name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if cfg.name == "gp":
        return optuna.samplers.GPSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed, constant_liar=True)


def stored_spec(study: optuna.Study) -> StudySpec:
    """The study file as stored in the study when it was created, checked against its stored
    hash: whoever can write to the database must not change what workers train unnoticed."""
    text, stored_hash = study.user_attrs.get(TEXT_ATTR), study.user_attrs.get(HASH_ATTR)
    if not isinstance(text, str) or not isinstance(stored_hash, str):
        raise UserError(f"study '{study.study_name}' has no stored study file; create it with run")
    spec = spec_from_text(text, Path(f"{study.study_name}.toml"))
    if spec.text_hash != stored_hash:
        raise UserError(
            f"study '{study.study_name}': its stored study file does not match its stored hash "
            f"({spec.text_hash[:12]} vs {stored_hash[:12]}); refusing to run a changed study"
        )
    return spec


def ensure_study(
    spec: StudySpec, storage: optuna.storages.BaseStorage, n_trials: int | None
) -> optuna.Study:
    """Create the study once or load it; a different study file under the same name is refused."""

    study = optuna.create_study(
        study_name=spec.name,
        storage=storage,
        direction=spec.direction,
        sampler=make_sampler(spec.sampler, 0),
        pruner=make_pruner(spec.pruner, spec.max_epochs),
        load_if_exists=True,
    )
    stored_hash = study.user_attrs.get(HASH_ATTR)
    if stored_hash is None:
        study.set_user_attr(TEXT_ATTR, spec.text)
        study.set_user_attr(HASH_ATTR, spec.text_hash)
        enqueue_defaults(study, spec)
    elif stored_hash != spec.text_hash:
        raise UserError(
            f"study '{spec.name}' in this storage was created from a different study file "
            f"(hash {stored_hash[:12]} vs {spec.text_hash[:12]} of {spec.path}); "
            "restore that file or give the study a new name"
        )
    else:
        stored_spec(study)  # the text workers will read must still match that hash
    if n_trials is not None or BUDGET_ATTR not in study.user_attrs:
        study.set_user_attr(BUDGET_ATTR, n_trials or spec.n_trials)
    return study


def count(study: optuna.Study, *states: TrialState) -> int:
    return len(study.get_trials(deepcopy=False, states=states))


def worker_main(plan: WorkerPlan) -> None:
    """Run trials until the study's budget is finished; SIGTERM/SIGINT end the trial as FAIL."""
    import torch

    from carbrand_search.data.cache import default_cache_root
    from carbrand_search.search.objective import Objective, trials_taken
    from carbrand_search.search.storage import artifact_store, open_storage
    from carbrand_search.training.run import load_training_data

    def interrupt(*_: Any) -> None:
        raise KeyboardInterrupt  # Optuna marks the running trial FAIL, then re-raises

    signal.signal(signal.SIGTERM, interrupt)
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # `run` shows progress itself
    torch.set_num_threads(plan.threads)
    storage = open_storage(plan.storage, plan.heartbeat_s)
    study = optuna.load_study(study_name=plan.study, storage=storage)
    spec = stored_spec(study)
    study.sampler = make_sampler(spec.sampler, plan.index + 1)
    study.pruner = make_pruner(spec.pruner, spec.max_epochs)
    budget = int(study.user_attrs[BUDGET_ATTR])
    data = load_training_data(
        Path(plan.data),
        spec.base.data,
        Path(plan.cache) if plan.cache else default_cache_root(),
        torch.device(plan.device),
        plan.skip_bad,
    )
    objective = Objective(spec, data, artifact_store(plan.artifacts), budget, worker_label())
    reaps_stale = isinstance(storage, optuna.storages.RDBStorage)
    failures = FailureGuard()
    outage = Backoff()
    try:
        while True:
            try:
                if count(study, *FINISHED) >= budget:
                    break
                queued = count(study, TrialState.WAITING)  # retries of trials whose worker died
                if not queued and trials_taken(study) >= budget:
                    if not reaps_stale:
                        break
                    # The last trials belong to others; wait in case one dies and is re-queued.
                    time.sleep(2)
                    optuna.storages.fail_stale_trials(study)
                    continue
                # Any exception fails just its trial (Optuna logs why); FailureGuard stops a
                # worker whose trials keep failing, since that is a bug or a broken setup.
                study.optimize(
                    objective, n_trials=1, catch=(Exception,), callbacks=[failures],
                    gc_after_trial=True,
                )  # fmt: skip
                outage.reset()
            except sqlalchemy.exc.OperationalError as e:
                # The database went away (restart, network): wait and retry; a trial cut off
                # mid-way stays RUNNING until its heartbeat lapses, then is re-queued.
                outage.wait(e)
    except KeyboardInterrupt:
        return
    except WorkerStopped as e:
        print(f"error: worker {worker_label()}: {e}", file=sys.stderr, flush=True)
        raise SystemExit(3) from None
    finally:
        if reaps_stale:
            storage.engine.dispose()  # type: ignore[attr-defined]


class FailureGuard:
    """Optuna callback: stop after `limit` failed trials in a row, saying why."""

    def __init__(self, limit: int = 3):
        self.limit = limit
        self.in_a_row = 0

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        if trial.state != TrialState.FAIL or trial.user_attrs.get("surplus"):
            self.in_a_row = 0
            return
        self.in_a_row += 1
        if self.in_a_row >= self.limit:
            reason = trial.user_attrs.get("fail_reason", "unknown error")
            raise WorkerStopped(
                f"{self.limit} trials in a row failed; the last (trial {trial.number}): {reason}"
            )


class WorkerStopped(Exception):
    """A worker gave up: its trials keep failing for the same reason."""


class Backoff:
    """Waits 1, 2, 4 … 30 s between retries while the database is unreachable; gives up after
    `patience_s` without success."""

    def __init__(self, patience_s: float = 300):
        self.patience_s = patience_s
        self.delay = 1.0
        self.since: float | None = None

    def reset(self) -> None:
        self.delay, self.since = 1.0, None

    def wait(self, error: Exception) -> None:
        now = time.monotonic()
        self.since = self.since or now
        if now - self.since > self.patience_s:
            raise WorkerStopped(f"database unreachable for {self.patience_s:.0f}s: {error}")
        time.sleep(self.delay)
        self.delay = min(30.0, self.delay * 2)


def plan_devices(device: str, workers: int, workers_per_gpu: int) -> list[tuple[str, int]]:
    """(device, torch threads) per worker: GPUs round-robin, or CPU cores split evenly."""
    import torch

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        gpus = torch.cuda.device_count()
        if gpus == 0:
            raise UserError("--device cuda: torch sees no CUDA GPU")
        if workers > gpus * workers_per_gpu:
            raise UserError(
                f"--workers {workers} is more than {gpus} GPU(s) × --workers-per-gpu "
                f"{workers_per_gpu}"
            )
        cores = max(1, (os.cpu_count() or 1) // workers)
        return [(f"cuda:{i % gpus}", cores) for i in range(workers)]
    if device != "cpu":
        raise UserError(f"--device must be auto, cpu or cuda, got {device!r}")
    cores = os.cpu_count() or 1
    return [("cpu", max(1, cores // workers)) for _ in range(workers)]


def start_workers(plans: list[WorkerPlan]) -> list[Any]:
    """One spawned process per plan (spawn: CUDA and forked torch threads do not mix)."""
    context = mp.get_context("spawn")
    processes = [context.Process(target=worker_main, args=(plan,), daemon=False) for plan in plans]
    for process in processes:
        process.start()
    return processes


def stop_workers(
    processes: list[Any],
    study: optuna.Study,
    storage: optuna.storages.BaseStorage,
    timeout_s: float = 15,
) -> None:
    """Stop workers; any trial of theirs still RUNNING afterwards is marked FAIL."""
    for process in processes:
        if process.is_alive():
            process.terminate()
    deadline = time.monotonic() + timeout_s
    for process in processes:
        process.join(max(0.1, deadline - time.monotonic()))
        if process.is_alive():
            process.kill()
            process.join()
    labels = {worker_label(p.pid) for p in processes}
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if trial.user_attrs.get("worker") in labels:
            storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
