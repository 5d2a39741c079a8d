"""The trial record: what a trial stores in its Optuna user attributes, written and read here only.

Every attribute name is in this module and nowhere else; the rest of the package writes through
the functions below and reads a typed `TrialRecord`, so a renamed key is a type error, not a
silently empty column.
"""

from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import optuna
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial

from carbrand_search.core.errors import UserError
from carbrand_search.core.metric import EpochMetrics, is_table

_WORKER = "worker"  # host:pid of the process running the trial
_DEVICE = "device"  # where it trains: cpu, cuda:0 …
_PEAK_MEMORY = "peak_memory"  # bytes of GPU memory the trial needed at most (CUDA only)
_RESUME = "resume"  # the trial's latest resume point (a ResumePoint)
_RESUMED_FROM = "resumed_from"  # {"trial", "epoch", "batch"}: where this retry took over
_EPOCH = "epoch"  # the epoch running now
_EPOCHS = "epochs"  # every finished epoch's metrics
_CHECKPOINT = "checkpoint"  # artifact id of the best epoch's weights
_CLASSES = "classes"  # class names, in label order
_VAL = "val"  # the best epoch's metrics
_BEST_EPOCH = "best_epoch"
_PRUNE_REASON = "prune_reason"
_FAIL_REASON = "fail_reason"
_FAILURE_KIND = "failure_kind"  # oom, storage, data or bug (search/failures.py)
_RETRY_OF = "retry_of"  # the trial whose parameters this one runs again (failures.retry)
_SURPLUS = "surplus"  # started after the budget was already held by others
_WARM_START = "warm_start"  # where an enqueued parameter set came from
_TEACHER = "teacher"  # the TeacherRef a distilled trial learned from


@dataclass(frozen=True)
class PruneReason:
    """Why a trial was pruned: the rule, the epoch it stopped at, and what the rule read there
    (stored as one flat table: {"rule", "epoch", **readings})."""

    rule: str  # one-class, chance-loss, diverged, or the Optuna pruner's name
    epoch: int
    readings: dict[str, float | str] = field(default_factory=dict)  # loss_ratio=0.99 …

    def to_dict(self) -> dict[str, Any]:
        return {"rule": self.rule, "epoch": self.epoch, **self.readings}

    @classmethod
    def from_dict(cls, stored: dict[str, Any]) -> "PruneReason":
        readings = {k: v for k, v in stored.items() if k not in ("rule", "epoch")}
        return cls(stored["rule"], stored["epoch"], readings)

    def __str__(self) -> str:
        """`rule=one-class, epoch=3, top_class_share=1, loss_ratio=1.002`."""
        numbers = [
            f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
            for k, v in self.readings.items()
        ]
        return ", ".join([f"rule={self.rule}", f"epoch={self.epoch}", *numbers])


@dataclass(frozen=True)
class ResumedFrom:
    """Where a retry took over: trial `trial`'s resume point after `epoch` epochs and `batch`
    more batches."""

    trial: int
    epoch: int
    batch: int


@dataclass(frozen=True)
class ResumePoint:
    """A trial's saved training state: after `epoch` epochs and `batch` more batches."""

    artifact: str
    epoch: int
    batch: int


@dataclass(frozen=True)
class TeacherRef:
    """The model a distilled trial learned from: a trial of another study, and its weights."""

    study: str
    trial: int
    weights_sha256: str

    def __str__(self) -> str:
        return f"{self.study} trial {self.trial} (weights {self.weights_sha256[:12]})"


@dataclass(frozen=True)
class TrialRecord:
    """What carbrand-search stored on one trial (fields absent on the trial are empty)."""

    worker: str | None = None
    device: str | None = None
    peak_memory: int | None = None
    resume: ResumePoint | None = None
    resumed_from: ResumedFrom | None = None
    epoch: int | None = None
    epochs: tuple[EpochMetrics, ...] = ()
    checkpoint: str | None = None
    classes: tuple[str, ...] = ()
    val: EpochMetrics | None = None
    best_epoch: int | None = None
    prune_reason: PruneReason | None = None
    fail_reason: str | None = None
    failure_kind: str | None = None  # None on a FAIL trial: its worker died or was stopped
    retry_of: int | None = None  # the failed trial whose parameters this one runs again
    surplus: bool = False
    warm_start: str | None = None
    teacher: TeacherRef | None = None

    @property
    def pid(self) -> int | None:
        """The worker's process id on its host."""
        return int(self.worker.rsplit(":", 1)[1]) if self.worker else None


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _fields(**kinds: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda v: (
        isinstance(v, dict) and set(v) == set(kinds) and all(kinds[k](x) for k, x in v.items())
    )


def _prune_reason(v: Any) -> bool:
    return (
        isinstance(v, dict)
        and isinstance(v.get("rule"), str)
        and _int(v.get("epoch"))
        and all(isinstance(k, str) and (_number(x) or isinstance(x, str)) for k, x in v.items())
    )


# The shape of each attribute, and what a message says is expected: a record someone changed in
# the database is a one-line error that names the trial and the attribute, not a traceback.
_SHAPES: dict[str, tuple[Callable[[Any], bool], str]] = {
    _WORKER: (lambda v: isinstance(v, str) and v.rpartition(":")[2].isdigit(), "'host:pid'"),
    _DEVICE: (lambda v: isinstance(v, str), "a device name"),
    _PEAK_MEMORY: (lambda v: _int(v) and v >= 0, "bytes, an integer >= 0"),
    _RESUME: (
        lambda v: (
            v is None or _fields(artifact=lambda a: isinstance(a, str), epoch=_int, batch=_int)(v)
        ),
        "{artifact, epoch, batch} or null",
    ),
    _RESUMED_FROM: (_fields(trial=_int, epoch=_int, batch=_int), "{trial, epoch, batch}"),
    _EPOCH: (_int, "an integer"),
    _EPOCHS: (lambda v: isinstance(v, list) and all(map(is_table, v)), "a list of metric tables"),
    _CHECKPOINT: (lambda v: isinstance(v, str), "an artifact id"),
    _CLASSES: (lambda v: isinstance(v, list) and all(isinstance(c, str) for c in v), "names"),
    _VAL: (is_table, "a metric table"),
    _BEST_EPOCH: (_int, "an integer"),
    _PRUNE_REASON: (_prune_reason, "{rule, epoch, …}"),
    _FAIL_REASON: (lambda v: isinstance(v, str), "text"),
    _FAILURE_KIND: (lambda v: isinstance(v, str), "a failure kind"),
    _RETRY_OF: (_int, "a trial number"),
    _SURPLUS: (lambda v: isinstance(v, bool), "true or false"),
    _WARM_START: (lambda v: isinstance(v, str), "text"),
    _TEACHER: (
        _fields(
            study=lambda v: isinstance(v, str),
            trial=_int,
            weights_sha256=lambda v: isinstance(v, str),
        ),
        "{study, trial, weights_sha256}",
    ),
}


class CorruptRecord(UserError):
    """A trial attribute that carbrand-search did not write as it is."""


def _check(trial: FrozenTrial, key: str) -> None:
    fits, expected = _SHAPES[key]
    value = trial.user_attrs[key]
    if not fits(value):
        shown = repr(value)
        shown = shown if len(shown) <= 60 else shown[:57] + "..."
        raise CorruptRecord(
            f"trial {trial.number}: its stored {key!r} is {shown}, expected {expected}; "
            "it was changed outside carbrand-search"
        )


def read(trial: FrozenTrial) -> TrialRecord:
    """The record of `trial`; CorruptRecord when an attribute has a shape it never writes."""
    attrs = trial.user_attrs
    for key in _SHAPES:
        if key in attrs:
            _check(trial, key)
    # Optuna's heartbeat retry copies the user attributes of the trial it retries and lists the
    # retried trials in order; the last one is this trial's direct predecessor.
    retried = RetryHeartbeatStaleTrialCallback.retry_history(trial)
    resume, teacher = attrs.get(_RESUME), attrs.get(_TEACHER)
    resumed_from, prune_reason = attrs.get(_RESUMED_FROM), attrs.get(_PRUNE_REASON)
    val = attrs.get(_VAL)
    return TrialRecord(
        worker=attrs.get(_WORKER),
        device=attrs.get(_DEVICE),
        peak_memory=attrs.get(_PEAK_MEMORY),
        resume=ResumePoint(**resume) if resume else None,
        resumed_from=ResumedFrom(**resumed_from) if resumed_from else None,
        epoch=attrs.get(_EPOCH),
        epochs=tuple(map(EpochMetrics.from_dict, attrs.get(_EPOCHS, ()))),
        checkpoint=attrs.get(_CHECKPOINT),
        classes=tuple(attrs.get(_CLASSES, ())),
        val=EpochMetrics.from_dict(val) if val else None,
        best_epoch=attrs.get(_BEST_EPOCH),
        prune_reason=PruneReason.from_dict(prune_reason) if prune_reason else None,
        fail_reason=attrs.get(_FAIL_REASON),
        failure_kind=attrs.get(_FAILURE_KIND),
        retry_of=retried[-1] if retried else attrs.get(_RETRY_OF),
        surplus=bool(attrs.get(_SURPLUS, False)),
        warm_start=attrs.get(_WARM_START),
        teacher=TeacherRef(**teacher) if teacher else None,
    )


def check_all(trials: Iterable[FrozenTrial]) -> None:
    """Read every record once: a corrupt one stops a command before it starts any work."""
    for trial in trials:
        read(trial)


def epochs(trial: FrozenTrial) -> tuple[EpochMetrics, ...]:
    """Just the per-epoch metrics (what the pruners read at every epoch)."""
    if _EPOCHS not in trial.user_attrs:
        return ()
    _check(trial, _EPOCHS)
    return tuple(map(EpochMetrics.from_dict, trial.user_attrs[_EPOCHS]))


def started(trial: optuna.Trial, worker: str, device: str) -> None:
    trial.set_user_attr(_WORKER, worker)
    trial.set_user_attr(_DEVICE, device)


def taught_by(trial: optuna.Trial, teacher: TeacherRef) -> None:
    trial.set_user_attr(_TEACHER, asdict(teacher))


def resume_saved(trial: optuna.Trial, point: ResumePoint | None) -> None:
    """The trial's latest resume point; None once it is removed."""
    trial.set_user_attr(_RESUME, asdict(point) if point else None)


def resumed(trial: optuna.Trial, of: int, point: ResumePoint) -> None:
    """This trial continues trial `of` from `point`."""
    trial.set_user_attr(_RESUMED_FROM, asdict(ResumedFrom(of, point.epoch, point.batch)))


def peak_memory(trial: optuna.Trial, size: int) -> None:
    trial.set_user_attr(_PEAK_MEMORY, size)


def epoch_started(trial: optuna.Trial, epoch: int) -> None:
    trial.set_user_attr(_EPOCH, epoch)


def epochs_done(trial: optuna.Trial, history: Sequence[EpochMetrics]) -> None:
    trial.set_user_attr(_EPOCHS, [m.to_dict() for m in history])


def pruned(trial: optuna.Trial, reason: PruneReason) -> None:
    trial.set_user_attr(_PRUNE_REASON, reason.to_dict())


def failed(trial: optuna.Trial, reason: str, kind: str) -> None:
    trial.set_user_attr(_FAIL_REASON, reason)
    trial.set_user_attr(_FAILURE_KIND, kind)


def surplus(trial: optuna.Trial) -> None:
    trial.set_user_attr(_SURPLUS, True)


def completed(
    trial: optuna.Trial,
    *,
    checkpoint: str,
    best_epoch: int,
    val: EpochMetrics,
    classes: tuple[str, ...],
) -> None:
    """What a complete trial leaves for reports and predictions."""
    trial.set_user_attr(_CHECKPOINT, checkpoint)
    trial.set_user_attr(_BEST_EPOCH, best_epoch)
    trial.set_user_attr(_VAL, val.to_dict())
    trial.set_user_attr(_CLASSES, list(classes))


def retry(of: int) -> dict[str, int]:
    """User attributes for `enqueue_trial`: these parameters run again after trial `of` failed."""
    return {_RETRY_OF: of}


def warm_start(origin: str) -> dict[str, str]:
    """User attributes for `enqueue_trial`: where the queued parameter set came from."""
    return {_WARM_START: origin}
