"""Whether a worker may start its next trial now: GPU memory decides, measured, not guessed.

Finished trials store their peak GPU memory; a worker starts a trial only when its GPU has that
much free (the most any trial of the study needed, plus a margin), and a trial queued again after
an out-of-memory error starts only on a GPU no other trial is using. Best effort: two idle workers
of one GPU can still both start at the same instant; an OOM then is retried once more.
"""

from collections.abc import Sequence

from optuna.trial import FrozenTrial, TrialState

from carbrand_search.search import record
from carbrand_search.search.failures import OOM

MARGIN = 1.2  # allocator fragmentation and cuDNN workspaces vary between trials
GIB = 2**30


def known_peak(trials: Sequence[FrozenTrial]) -> int | None:
    """The most GPU memory any finished trial needed, in bytes; None before the first."""
    peaks = [
        size
        for t in trials
        if t.state in (TrialState.COMPLETE, TrialState.PRUNED)
        and (size := record.read(t).peak_memory) is not None
    ]
    return max(peaks, default=None)


def wait_reason(
    trials: Sequence[FrozenTrial], device: str, host: str, free: int | None
) -> str | None:
    """Why a worker on `host` with `device` (`free` bytes free there, None on the CPU) should
    not start a trial yet; None when it may."""
    if free is None:
        return None
    by_number = {t.number: t for t in trials}
    queued = next((t for t in trials if t.state == TrialState.WAITING), None)  # Optuna's next
    if queued is not None:
        previous = record.read(queued).retry_of
        if previous is not None and record.read(by_number[previous]).failure_kind == OOM:
            sharing = [t.number for t in trials if _running_on(t, device, host)]
            if sharing:
                return (
                    f"trial {queued.number} (out of memory before) waits to run alone on "
                    f"{device}; trial {sharing[0]} is running there"
                )
            return None
    peak = known_peak(trials)
    if peak is not None and free < peak * MARGIN:
        return f"{free / GIB:.1f} GiB free on {device}; trials needed up to {peak / GIB:.1f} GiB"
    return None


def _running_on(trial: FrozenTrial, device: str, host: str) -> bool:
    stored = record.read(trial)
    return (
        trial.state == TrialState.RUNNING
        and stored.device == device
        and (stored.worker or "").rsplit(":", 1)[0] == host
    )
