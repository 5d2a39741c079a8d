"""Admission: a worker starts a trial only when its GPU has the memory finished trials needed, and
a trial queued after an out-of-memory error only on a GPU no other trial is using. The GPU's free
memory is a number passed in, so these run without a GPU."""

import optuna
import pytest
from optuna.trial import TrialState

from carbrand_search.search import record, worker
from carbrand_search.search.admission import GIB, known_peak, wait_reason
from carbrand_search.search.failures import OOM
from carbrand_search.search.retry import queue_retry
from carbrand_search.search.study import trials

HOST = "gpu-box"


def finished_trial(study: optuna.Study, device: str, peak: int | None) -> None:
    trial = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
    record.started(trial, f"{HOST}:11", device)
    if peak is not None:
        record.peak_memory(trial, peak)
    study.tell(trial, 0.5)


def running_trial(study: optuna.Study, device: str, host: str = HOST) -> optuna.Trial:
    trial = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
    record.started(trial, f"{host}:12", device)
    return trial


@pytest.fixture
def study() -> optuna.Study:
    return optuna.create_study(direction="maximize")


def test_the_cpu_and_a_study_without_measurements_never_wait(study: optuna.Study) -> None:
    assert wait_reason(trials(study), "cpu", HOST, None) is None
    finished_trial(study, "cuda:0", None)  # trained on a GPU, but its peak was not stored
    assert known_peak(trials(study)) is None
    assert wait_reason(trials(study), "cuda:0", HOST, 1 * GIB) is None


def test_a_trial_starts_only_when_the_measured_peak_fits(study: optuna.Study) -> None:
    finished_trial(study, "cuda:0", 4 * GIB)
    finished_trial(study, "cuda:1", 10 * GIB)
    assert known_peak(trials(study)) == 10 * GIB
    reason = wait_reason(trials(study), "cuda:0", HOST, 11 * GIB)  # under the 20% margin
    assert reason == "11.0 GiB free on cuda:0; trials needed up to 10.0 GiB"
    assert wait_reason(trials(study), "cuda:0", HOST, 13 * GIB) is None


def test_an_out_of_memory_retry_waits_to_run_alone_on_its_gpu(study: optuna.Study) -> None:
    finished_trial(study, "cuda:0", 1 * GIB)
    failed = running_trial(study, "cuda:0")
    record.failed(failed, "OutOfMemoryError: CUDA out of memory", OOM)
    study.tell(failed, state=TrialState.FAIL)
    other = running_trial(study, "cuda:0")
    assert queue_retry(study, failed.number, failed.params, OOM)
    reason = wait_reason(trials(study), "cuda:0", HOST, 80 * GIB)
    assert reason == (
        f"trial {other.number + 1} (out of memory before) waits to run alone on cuda:0; "
        f"trial {other.number} is running there"
    )
    # The same GPU name on another machine, or another GPU here, is not shared.
    assert wait_reason(trials(study), "cuda:1", HOST, 80 * GIB) is None
    assert wait_reason(trials(study), "cuda:0", "other-box", 80 * GIB) is None
    study.tell(other, 0.5)
    assert wait_reason(trials(study), "cuda:0", HOST, 80 * GIB) is None  # alone now


def test_retries_are_bounded_per_kind_and_never_queued_twice(study: optuna.Study) -> None:
    first = running_trial(study, "cuda:0")
    study.tell(first, state=TrialState.FAIL)
    assert queue_retry(study, first.number, first.params, "killed")
    assert queue_retry(study, first.number, first.params, "killed")  # already queued: no second
    assert len(trials(study, TrialState.WAITING)) == 1
    broken = running_trial(study, "cuda:0")  # takes the queued retry
    study.tell(broken, state=TrialState.FAIL)
    assert not queue_retry(study, broken.number, broken.params, "bug")
    assert not queue_retry(study, broken.number, broken.params, "data")
    assert not trials(study, TrialState.WAITING)
    for _ in range(2):  # killed twice more: the third retry of the same parameters is the last
        assert queue_retry(study, broken.number, broken.params, "killed")
        broken = running_trial(study, "cuda:0")
        study.tell(broken, state=TrialState.FAIL)
    assert not queue_retry(study, broken.number, broken.params, "killed")


def test_memory_wait_says_why_once_and_gives_up_after_its_patience(
    capsys: pytest.CaptureFixture[str],
) -> None:
    wait = worker.MemoryWait(patience_s=3600, poll_s=0)
    assert wait.holds("1.0 GiB free on cuda:0") and wait.holds("1.0 GiB free on cuda:0")
    assert capsys.readouterr().err.count("waits: 1.0 GiB free on cuda:0") == 1
    assert not wait.holds(None)
    impatient = worker.MemoryWait(patience_s=0, poll_s=0)
    assert impatient.holds("busy")
    assert not impatient.holds("busy")  # waited long enough: start it anyway
