"""The trial budget's rules: which trials count against it, which hold a place in it, when a
worker has nothing left to start. The stored budget itself is the study's (study.py)."""

from collections.abc import Iterable, Sequence

from optuna.trial import FrozenTrial, TrialState

from carbrand_search.core.config import StudyConfig
from carbrand_search.core.errors import UserError

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)  # count toward the budget
HELD = (*FINISHED, TrialState.RUNNING, TrialState.WAITING)  # hold a place in it (FAIL does not)


def check_budget(n_trials: int | None) -> None:
    """`--n-trials`: None (keep the stored budget) or a budget a study file could give."""
    bound = StudyConfig.BOUNDS["n_trials"]
    if n_trials is not None and not bound.holds(n_trials):
        raise UserError(f"--n-trials must be {bound}, got {n_trials}")


def finished(trials: Iterable[FrozenTrial]) -> int:
    """Trials that used up budget for good: complete or pruned."""
    return sum(t.state in FINISHED for t in trials)


def held(trials: Iterable[FrozenTrial], before: int | None = None) -> int:
    """Trials holding a place in the budget (finished, running or queued; a failed trial is
    retried and does not), counting only trial numbers below `before` when given."""
    return sum(t.state in HELD and (before is None or t.number < before) for t in trials)


def is_surplus(found: Sequence[FrozenTrial], number: int, total: int) -> bool:
    """Whether trial `number` started after trials before it already held the whole budget
    (other workers took the last places): it ends at once and counts for nothing."""
    return held(found, before=number) >= total


def places_taken(found: Sequence[FrozenTrial], total: int) -> bool:
    """Whether every place in the budget is held and no retry is queued: a worker then has no
    trial to start (it waits, in case a running one dies and is queued again)."""
    queued = any(t.state == TrialState.WAITING for t in found)
    return not queued and held(found) >= total
