"""Failure triage: each kind is stored on the trial; an OOM queues the same parameters again (a
bounded number of times), a bug stops the worker at once, with where it happened."""

from pathlib import Path

import optuna
import pytest
import torch
from conftest import write_study
from optuna.trial import TrialState

from carbrand_search.progress import reason_text
from carbrand_search.search import objective as objective_module
from carbrand_search.search import record
from carbrand_search.search.failures import RETRIES
from carbrand_search.search.objective import Objective
from carbrand_search.search.outage import WorkerStopped
from carbrand_search.search.spec import load_spec
from carbrand_search.search.storage import artifact_store, open_storage
from carbrand_search.search.study import ensure_study
from carbrand_search.search.worker import FailureGuard
from carbrand_search.training.parts import load_training_data


@pytest.fixture
def setup(demo_root: Path, tmp_path: Path) -> tuple[optuna.Study, Objective]:
    spec = load_spec(str(write_study(tmp_path, n_trials=4, epochs=1)))
    study = ensure_study(spec, open_storage(f"sqlite:///{tmp_path / 's.db'}"), None)
    data = load_training_data(demo_root, spec.base.data, tmp_path / "c", torch.device("cpu"))
    return study, Objective(spec, data, artifact_store(str(tmp_path / "a")), 4, "host:1")


def test_out_of_memory_queues_the_same_parameters_a_bounded_number_of_times(
    setup: tuple[optuna.Study, Objective], monkeypatch: pytest.MonkeyPatch
) -> None:
    study, objective = setup

    def out_of_memory(*args: object, **kwargs: object) -> None:
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(objective_module, "fit", out_of_memory)
    guard = FailureGuard(limit=100)
    for _ in range(RETRIES["oom"] + 1):
        study.optimize(objective, n_trials=1, catch=(Exception,), callbacks=[guard])
    found = study.get_trials()
    assert [t.state for t in found] == [TrialState.FAIL] * (RETRIES["oom"] + 1)  # none queued
    assert all(record.read(t).failure_kind == "oom" for t in found)
    assert [record.read(t).retry_of for t in found] == [None, 0, 1, 2]
    assert all(t.params == found[0].params for t in found)  # parameters never change
    assert reason_text(found[0]).startswith("oom: OutOfMemoryError: CUDA out of memory")


def test_a_bug_stops_the_worker_at_once_and_says_where(
    setup: tuple[optuna.Study, Objective], monkeypatch: pytest.MonkeyPatch
) -> None:
    study, objective = setup
    monkeypatch.setattr(objective_module, "new_model", lambda *args: 1 / 0)
    with pytest.raises(WorkerStopped, match="failed with a bug: ZeroDivisionError"):
        study.optimize(objective, n_trials=1, catch=(Exception,), callbacks=[FailureGuard()])
    (trial,) = study.get_trials()
    stored = record.read(trial)
    assert stored.failure_kind == "bug"
    assert (
        stored.fail_reason is not None
        and "carbrand_search/search/objective.py:" in stored.fail_reason
    )
    assert not [t for t in study.get_trials() if t.state == TrialState.WAITING]  # no retry


def test_a_trial_whose_worker_died_reads_as_killed(setup: tuple[optuna.Study, Objective]) -> None:
    study, _ = setup
    trial = study.ask()
    study.tell(trial, state=TrialState.FAIL)  # what stop_workers and the heartbeat reaper do
    assert reason_text(study.get_trials()[-1]) == "killed"


def test_a_database_outage_is_recognised_through_optunas_wrappers() -> None:
    import sqlalchemy

    from carbrand_search.search.storage import database_unreachable

    cut = sqlalchemy.exc.OperationalError("COMMIT", {}, ConnectionRefusedError("refused"))
    try:
        try:
            raise optuna.exceptions.StorageInternalError("during the commit") from cut
        except optuna.exceptions.StorageInternalError:
            # What Optuna's loop raises after a tell failed that way (its own bug).
            raise UnboundLocalError("cannot access local variable 'updated_state'") from None
    except UnboundLocalError as e:
        tell_failed = e
    assert tell_failed.__cause__ is None and tell_failed.__context__ is not None
    assert database_unreachable(tell_failed) and database_unreachable(cut)
    assert not database_unreachable(ValueError("a bug"))
    assert not database_unreachable(optuna.exceptions.StorageInternalError("bad data"))
