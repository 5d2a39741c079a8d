"""Resume points: a running trial's whole training state in the artifact store, saved after every
epoch (and every `resume_every_s` within long ones). A retry of the trial (same parameters, after
a kill, an OOM or a store outage) continues from there; the state is removed when the trial ends
for good (complete, pruned, or failed without a retry), or swept at the end of the study when
a trial's retries ran out."""

import contextlib
import io
import sys
import uuid

import optuna
from optuna.artifacts.exceptions import ArtifactNotFound
from optuna.trial import FrozenTrial, TrialState

from carbrand_search.search import record
from carbrand_search.search.failures import StoreUnwritable
from carbrand_search.search.record import ResumePoint
from carbrand_search.search.storage import ArtifactStore
from carbrand_search.search.study import trials
from carbrand_search.training.state import FitState


class ResumeSaver:
    """`fit`'s checkpointer for one trial: writes the new state, records it on the trial, then
    removes the one before, so the recorded point is always a whole file."""

    def __init__(self, artifacts: ArtifactStore, trial: optuna.Trial, every_s: float) -> None:
        self.artifacts, self.trial, self.every_s = artifacts, trial, every_s
        self.current: ResumePoint | None = None

    def adopt(self, point: ResumePoint) -> None:
        """Continue from the trial retried: its point is this trial's until the next save (so
        a retry of this retry finds it too), then removed like any older one."""
        record.resume_saved(self.trial, point)
        self.current = point

    def __call__(self, state: FitState) -> None:
        artifact = f"resume-{uuid.uuid4().hex}"
        try:
            self.artifacts.write(artifact, io.BytesIO(state.to_bytes()))
        except OSError as e:
            raise StoreUnwritable(f"cannot write a resume point to the artifact store: {e}") from e
        previous, self.current = self.current, ResumePoint(artifact, state.epoch, state.batch)
        record.resume_saved(self.trial, self.current)
        if previous is not None:
            self._remove(previous)

    def discard(self) -> None:
        """The trial ended for good: its resume state is not needed any more."""
        if self.current is not None:
            self._remove(self.current)
            record.resume_saved(self.trial, None)
            self.current = None

    def _remove(self, point: ResumePoint) -> None:
        with contextlib.suppress(ArtifactNotFound):
            self.artifacts.remove(point.artifact)


def inherited(
    trial: optuna.Trial, artifacts: ArtifactStore
) -> tuple[int, ResumePoint, FitState] | None:
    """(the trial retried, its resume point, the state there) when `trial` runs a failed
    trial's parameters again and that trial left a resume point; None otherwise."""
    by_number = {t.number: t for t in trials(trial.study)}
    previous = record.read(by_number[trial.number]).retry_of
    if previous is None:
        return None
    point = record.read(by_number[previous]).resume
    if point is None:
        return None
    try:
        with artifacts.open_reader(point.artifact) as reader:
            state = FitState.from_bytes(reader.read())
    except ArtifactNotFound:
        return None  # removed by hand: the retry starts from the first epoch
    except ValueError as e:  # corrupt, or not ours (an old torch pickle is never unpickled)
        print(f"trial {previous}'s resume point is unusable ({e}); starting over", file=sys.stderr)
        return None
    return previous, point, state


def sweep(found: list[FrozenTrial], artifacts: ArtifactStore) -> int:
    """Remove the resume points of failed trials that no retry took up (their retries ran out);
    call it once the budget is finished, when nothing will be retried any more. How many."""
    retried = {record.read(t).retry_of for t in found}
    removed = 0
    for trial in found:
        point = record.read(trial).resume
        if trial.state == TrialState.FAIL and point and trial.number not in retried:
            with contextlib.suppress(ArtifactNotFound):
                artifacts.remove(point.artifact)
                removed += 1
    return removed
