"""Running a failed trial's parameters again, unchanged, a bounded number of times per kind."""

import optuna
from optuna.trial import FrozenTrial

from carbrand_search.search import record
from carbrand_search.search.failures import KILLED, RETRIES, describe, kind_of
from carbrand_search.search.outage import Backoff, riding_out
from carbrand_search.search.storage import open_storage
from carbrand_search.search.study import trials


def settle_failure(
    trial: optuna.Trial, error: BaseException, outage: Backoff | None = None
) -> bool:
    """Record why `trial` failed and queue its retry if its kind is retried; whether one is
    queued. Both wait out a database outage (with `outage`'s back-off): once Optuna has told the
    trial FAIL, nothing else would queue its parameters again. Call it outside the `except` that
    caught `error`, or an error of its own would carry `error` as its context."""
    kind = kind_of(error)
    outage = outage or Backoff()
    riding_out(lambda: record.failed(trial, describe(error), kind), outage)
    return riding_out(lambda: queue_retry(trial.study, trial.number, trial.params, kind), outage)


def queue_retry(study: optuna.Study, number: int, params: dict[str, object], kind: str) -> bool:
    """Queue trial `number`'s `params` again if failures of `kind` are retried and its chain of
    retries is under that kind's limit; whether it did. The retry resumes from the failed
    trial's last resume point."""
    found = trials(study)
    if any(record.read(t).retry_of == number for t in found):
        return True  # queued already (the worker did, then died before its trial ended)
    if retries_before(found, number) >= RETRIES.get(kind, 0):
        return False
    study.enqueue_trial(params, user_attrs=record.retry(number))
    return True


def retries_before(found: list[FrozenTrial], number: int) -> int:
    """How many failed tries of the same parameters came before trial `number`."""
    by_number = {t.number: t for t in found}
    chain = 0
    while (previous := record.read(by_number[number]).retry_of) is not None:
        chain, number = chain + 1, previous
    return chain


def open_for_work(url: str, heartbeat_s: int) -> optuna.storages.BaseStorage:
    """The storage as `run` and its workers open it: heartbeats on, and a trial whose worker
    died queued again as often as a killed trial is retried."""
    return open_storage(url, heartbeat_s, stale_retries=RETRIES[KILLED])
