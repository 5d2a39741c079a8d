"""Worker processes: plan their devices, stop them and fail what they left (they are started by
`prestart`)."""

import os
import time
from multiprocessing.process import BaseProcess

import optuna
import torch
from optuna.trial import TrialState

from carbrand_search.core.errors import UserError
from carbrand_search.search import record
from carbrand_search.search.failures import KILLED
from carbrand_search.search.retry import queue_retry
from carbrand_search.search.study import trials
from carbrand_search.search.worker import worker_label
from carbrand_search.training.device import pinned_gpu, resolve_device


def plan_devices(
    device: str, workers: int, workers_per_gpu: int | None = None, threads: int | None = None
) -> list[tuple[str, int]]:
    """(device, torch threads) per worker: `cuda` spreads them round-robin over the visible GPUs
    (as evenly as possible: no GPU holds two more than another), `cuda:N` puts them all on GPU
    N. Each worker gets `threads`, or else an even share of the cores. `workers_per_gpu`, when
    given, is an upper bound."""
    resolved = resolve_device(device)
    cores = threads or max(1, (os.cpu_count() or 1) // workers)
    if resolved.type == "cpu":
        return [("cpu", cores) for _ in range(workers)]
    gpus = [resolved.index or 0] if pinned_gpu(device) else list(range(torch.cuda.device_count()))
    if workers_per_gpu is not None and workers > len(gpus) * workers_per_gpu:
        raise UserError(
            f"--workers {workers} is more than {len(gpus)} GPU(s) × --workers-per-gpu "
            f"{workers_per_gpu}"
        )
    return [(f"cuda:{gpus[i % len(gpus)]}", cores) for i in range(workers)]


def stop_workers(processes: list[BaseProcess], study: optuna.Study, timeout_s: float = 15) -> None:
    """Stop workers; any trial of theirs still RUNNING afterwards (a worker killed or dead) is
    marked FAIL and its parameters queued again, to resume from its last resume point."""
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
    for trial in trials(study, TrialState.RUNNING):
        if record.read(trial).worker in labels:
            study.tell(trial.number, state=TrialState.FAIL, skip_if_finished=True)
            queue_retry(study, trial.number, trial.params, KILLED)
