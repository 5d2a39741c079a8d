"""What the terminal shows: progress bars (cache, epochs), the live view of a run, the trials
table of `status`; all drawn with rich from the search's typed records."""

import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from optuna.trial import FrozenTrial, TrialState
from rich.console import Console
from rich.live import Live
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table
from rich.text import Text

from carbrand_search.core import metric
from carbrand_search.core.metric import Metric, is_better
from carbrand_search.core.terminal import tagged
from carbrand_search.search import record
from carbrand_search.search.budget import finished
from carbrand_search.search.failures import KILLED
from carbrand_search.search.study import best_trials

if TYPE_CHECKING:  # torch is slow to import; `status` and the live view never need it
    from torch import Tensor

    from carbrand_search.training.fit import EpochMetrics

LOSS_REFRESH_S = 0.5
SUMMARY_EVERY_S = 60  # how often a run logs its study line when output is not a terminal
ENDED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


def _bar(console: Console) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[note]}"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    )


class CacheProgress:
    """`on_progress(split, done, total)` for the decode-once cache, as a bar per split."""

    def __init__(self, console: Console):
        self.progress = _bar(console)
        self.tasks: dict[str, TaskID] = {}

    def __enter__(self) -> "CacheProgress":
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def __call__(self, split: str, done: int, total: int) -> None:
        if split not in self.tasks:
            self.tasks[split] = self.progress.add_task(f"decoding {split}", total=total, note="")
        self.progress.update(self.tasks[split], completed=done)


def format_epoch(m: "EpochMetrics", epochs: int, best: bool) -> Text:
    line = (
        f"epoch {m.epoch:>2}/{epochs}  train loss {m.train_loss:.3f}  val loss {m.val_loss:.3f}  "
        f"acc {m.val_accuracy:.3f}  macro-F1 {m.val_macro_f1:.3f}  "
        f"top-class {m.top_class_share:.2f}  loss/ln(C) {m.loss_ratio:.2f}  "
        f"lr {m.lr:.2e}  {m.seconds:.1f}s"
    )
    return Text.assemble(line, ("  best", "green") if best else "")


class RichTrainListener:
    """A bar over each epoch's batches with the running loss, then one line of metrics."""

    def __init__(self, console: Console, monitor: str):
        self.console = console
        self.monitor = monitor
        self.progress = _bar(console)
        self.task: TaskID | None = None
        self.epochs = 0
        self.loss_sum: Tensor | float = 0.0
        self.batches = 0
        self.shown_at = 0.0
        self.best: float | None = None

    def epoch_start(self, epoch: int, epochs: int, batches: int) -> None:
        self.epochs, self.loss_sum, self.batches = epochs, 0.0, 0
        self.progress.start()
        self.task = self.progress.add_task(f"epoch {epoch}/{epochs}", total=batches, note="")

    def batch_end(self, loss: "Tensor") -> None:
        self.loss_sum = loss + self.loss_sum
        self.batches += 1
        assert self.task is not None
        self.progress.update(self.task, advance=1)
        # Reading the loss makes the host wait for the GPU: a few times a second, not per batch.
        if time.monotonic() - self.shown_at >= LOSS_REFRESH_S:
            self.shown_at = time.monotonic()
            self.progress.update(self.task, note=f"loss {float(self.loss_sum) / self.batches:.3f}")

    def epoch_end(self, metrics: "EpochMetrics") -> None:
        self.progress.stop()
        if self.task is not None:
            self.progress.remove_task(self.task)
        value = metrics.value(self.monitor)
        better = self.best is None or is_better(self.monitor, value, self.best)
        if better:
            self.best = value
        self.console.print(format_epoch(metrics, self.epochs, better))


def short(value: object) -> str:
    """A parameter value as people read it: 4 significant digits for floats."""
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def format_params(params: dict[str, object]) -> str:
    return ", ".join(f"{k.split('.', 1)[-1]}={short(v)}" for k, v in params.items())


def study_line(
    name: str,
    states: Mapping[TrialState, int],
    budget: int,
    best: FrozenTrial | None,
    metric_name: str,
) -> str:
    """One line: progress against the budget and the best value so far, with its metric."""
    complete, pruned = states.get(TrialState.COMPLETE, 0), states.get(TrialState.PRUNED, 0)
    so_far = (
        f", best {metric_name} {best.value:.4f} (trial {best.number})" if best is not None else ""
    )
    return (
        f"{name}: {complete + pruned}/{budget} finished ({complete} complete, {pruned} pruned), "
        f"{states.get(TrialState.FAIL, 0)} failed, {states.get(TrialState.RUNNING, 0)} running"
        f"{so_far}"
    )


def trials_line(name: str, trials: Sequence[FrozenTrial], budget: int, monitor: Metric) -> str:
    """`study_line` for trials already read."""
    ranked = best_trials(trials, metric.direction(monitor))
    return study_line(
        name, Counter(t.state for t in trials), budget, ranked[0] if ranked else None, monitor
    )


@dataclass(frozen=True)
class RunClock:
    """When the live view began, and how many trials had finished by then: the ETA counts only
    trials this run finished."""

    started: float  # time.monotonic()
    finished_before: int

    def elapsed_s(self) -> float:
        return time.monotonic() - self.started

    def eta_s(self, finished_now: int, budget: int) -> float | None:
        """Seconds left at this run's pace so far; None before its first finished trial."""
        here = finished_now - self.finished_before
        return self.elapsed_s() / here * max(budget - finished_now, 0) if here > 0 else None

    def text(self, finished_now: int, budget: int) -> str:
        """`; elapsed 3m05s, ETA 12m40s` (no ETA before this run's first finished trial)."""
        eta = self.eta_s(finished_now, budget)
        return f"; elapsed {duration_text(self.elapsed_s())}" + (
            f", ETA {duration_text(eta)}" if eta is not None else ""
        )


def duration_text(seconds: float) -> str:
    """`45s`, `12m05s`, `2h03m`."""
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    return f"{s // 60}m{s % 60:02d}s" if s < 3600 else f"{s // 3600}h{s % 3600 // 60:02d}m"


RECENT = 5  # finished trials the live view keeps in sight (the last of them stay after a run)


def live_view(
    name: str,
    trials: Sequence[FrozenTrial],
    budget: int,
    monitor: Metric,
    epochs: int,
    clock: RunClock | None = None,
) -> Table:
    """The `run` screen: the study line with elapsed time and ETA, then each running trial
    (worker, epoch of epochs, last value of the study's metric) and the last finished trials
    (state, value, why pruned or failed). `epochs`: a trial's epochs unless it searches them."""
    title = trials_line(name, trials, budget, monitor)
    title += clock.text(finished(trials), budget) if clock is not None else ""
    table = Table(title=title, title_justify="left")
    for column in ("trial", "state", "epoch", monitor, "worker or why", "params"):
        table.add_column(column)
    ended = sorted(
        ((t.datetime_complete, t) for t in trials if t.state in ENDED and t.datetime_complete),
        key=lambda pair: pair[0],
    )[-RECENT:]
    for t in [*(t for _, t in ended), *(t for t in trials if t.state == TrialState.RUNNING)]:
        stored = record.read(t)
        of = trial_epochs(t, epochs)
        if t.state == TrialState.RUNNING:
            shown = f"{stored.epochs[-1].value(monitor):.3f}" if stored.epochs else ""
            epoch, why = f"{stored.epoch or 0}/{of}", stored.worker or ""
        else:
            shown = f"{t.value:.3f}" if t.value is not None else ""
            epoch, why = f"{len(stored.epochs)}/{of}", reason_text(t)
        params = format_params(dict(list(t.params.items())[:4]))
        table.add_row(str(t.number), t.state.name, epoch, shown, why, params)
    return table


def trial_log_line(trial: FrozenTrial, monitor: Metric) -> str:
    """A finished trial in one line: number, state, value and why it was pruned or failed."""
    value = f" {monitor} {trial.value:.4f}" if trial.value is not None else ""
    reason = reason_text(trial)
    epochs = len(record.read(trial).epochs)
    return (
        f"trial {trial.number} {trial.state.name}{value} after {epochs} epoch(s)"
        + (f" ({reason})" if reason else "")
        + f" [{format_params(trial.params)}]"
    )


def trial_epochs(trial: FrozenTrial, epochs: int) -> int:
    """How many epochs `trial` trains: its searched `train.epochs`, else the study's."""
    return int(trial.params.get("train.epochs", epochs))


def running_text(trial: FrozenTrial, monitor: Metric, epochs: int) -> str:
    """A running trial: its epoch of its epochs and the last value of the monitor."""
    stored = record.read(trial)
    last = f", last {monitor} {stored.epochs[-1].value(monitor):.4f}" if stored.epochs else ""
    return f"trial {trial.number} at epoch {stored.epoch or 0}/{trial_epochs(trial, epochs)}{last}"


def reason_text(trial: FrozenTrial) -> str:
    """Why a trial was pruned (rule, epoch, numbers) or failed (kind: cause)."""
    stored = record.read(trial)
    if stored.prune_reason:
        return str(stored.prune_reason)
    if trial.state == TrialState.FAIL:
        kind = stored.failure_kind or KILLED  # no record: its worker died or was stopped
        return f"{kind}: {stored.fail_reason}" if stored.fail_reason else kind
    return ""


def history_text(trial: FrozenTrial) -> str:
    """Where a trial ran and what it carried on: device, peak GPU memory, retry, resume."""
    stored = record.read(trial)
    parts = [stored.device or ""]
    if stored.peak_memory is not None:
        parts[0] += f" {stored.peak_memory / 2**30:.1f} GiB"
    if stored.retry_of is not None:
        parts.append(f"retry of #{stored.retry_of}")
    if stored.resumed_from is not None:
        at = stored.resumed_from
        batches = f" + {at.batch} batches" if at.batch else ""
        parts.append(f"resumed after epoch {at.epoch}{batches}")
    return ", ".join(p for p in parts if p)


WIDE = 120  # columns from which `status` keeps each trial's parameters in its table


def status_table(
    title: str, trials: Sequence[FrozenTrial], metric_name: str, width: int = WIDE
) -> Table:
    """`status`: each trial's state, value, parameters, duration, why it was pruned or failed,
    and where it ran (device, peak memory, retry, resume). Narrower than WIDE, the parameters
    and where it ran leave the table (`status_params` prints them below it), so a trial stays
    one or two lines."""
    wide = width >= WIDE
    table = Table(title=title)
    columns = ["#", "state", metric_name, "duration", "why pruned or failed"]
    for column in columns + (["params", "ran on"] if wide else []):
        table.add_column(column)
    for t in trials:
        duration = f"{t.duration.total_seconds():.0f}s" if t.duration else ""
        value = f"{t.value:.4f}" if t.value is not None else ""
        cells = [str(t.number), t.state.name, value, duration, reason_text(t)]
        table.add_row(*cells, *([format_params(t.params), history_text(t)] if wide else []))
    return table


def status_params(trials: Sequence[FrozenTrial]) -> list[str]:
    """Each trial's parameters and where it ran, a line each (for a narrow `status`)."""
    lines = []
    for t in trials:
        ran = history_text(t)
        where = f"; ran on {ran}" if ran else ""
        lines.append(f"#{t.number}: {format_params(t.params)}{where}")
    return lines


class RichRunProgress:
    """A `RunProgress` for the terminal: notes on stdout, warnings tagged on stderr, a bar per
    cache split, then the live view while workers run."""

    def __init__(
        self, console: Console, err_console: Console, spec_name: str, monitor: Metric, epochs: int
    ):
        self.console, self.err_console = console, err_console
        self.name, self.monitor, self.epochs = spec_name, monitor, epochs
        self.clock: RunClock | None = None  # set at the first look at the trials
        self.logged: set[int] | None = None  # trials whose end was logged (not a terminal)
        self.summarised_at = time.monotonic()
        self.cache: CacheProgress | None = None
        self.decode_logged_at: dict[str, float] = {}  # per split, not a terminal
        self.live: Live | None = None
        self.budget = 0

    def __enter__(self) -> "RichRunProgress":
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop_cache()
        if self.live is not None:
            self.live.stop()

    def _stop_cache(self) -> None:
        if self.cache is not None:
            self.cache.__exit__()
            self.cache = None

    def note(self, text: str) -> None:
        self._stop_cache()
        self.console.print(text)

    def warning(self, text: str) -> None:
        self.err_console.print(tagged("warning:", "yellow", text))

    def decoding(self, split: str, done: int, total: int) -> None:
        if not self.console.is_terminal:
            self._log_decoding(split, done, total)
            return
        if self.cache is None:
            self.cache = CacheProgress(self.console).__enter__()
        self.cache(split, done, total)

    def _log_decoding(self, split: str, done: int, total: int) -> None:
        """For logs: a line every SUMMARY_EVERY_S while a split decodes (a study's teacher views
        take minutes on a CPU); one that is done sooner says nothing."""
        now = time.monotonic()
        since = self.decode_logged_at.setdefault(split, now)
        if now - since >= SUMMARY_EVERY_S:
            self.decode_logged_at[split] = now
            self.console.print(f"{self.name}: {split} {done:,}/{total:,} ({done / total:.0%})")

    def trials(self, trials: Sequence[FrozenTrial], budget: int) -> None:
        if self.clock is None:
            self.clock = RunClock(time.monotonic(), finished(trials))
        if not self.console.is_terminal:
            self._log(trials, budget, self.clock)
            return
        view = live_view(self.name, trials, budget, self.monitor, self.epochs, self.clock)
        if self.live is None:
            self._stop_cache()
            # Not transient: the last table stays on screen after the run.
            self.live = Live(view, console=self.console, refresh_per_second=2)
            self.live.start()
        else:
            self.live.update(view)

    def _log(self, trials: Sequence[FrozenTrial], budget: int, clock: RunClock) -> None:
        """For logs (a file, `docker compose logs`, CI): a line per finished trial, and every
        SUMMARY_EVERY_S the study line plus each running trial's epoch."""
        if self.logged is None:  # the first look: what ended before this run is not news
            self.logged = {t.number for t in trials if t.state in ENDED}
        for t in trials:
            if t.state in ENDED and t.number not in self.logged:
                self.logged.add(t.number)
                self.console.print(trial_log_line(t, self.monitor))
        now = time.monotonic()
        if now - self.summarised_at >= SUMMARY_EVERY_S:
            self.summarised_at = now
            running = [
                running_text(t, self.monitor, self.epochs)
                for t in trials
                if t.state == TrialState.RUNNING
            ]
            self.console.print(
                trials_line(self.name, trials, budget, self.monitor)
                + clock.text(finished(trials), budget)
                + (f"; {'; '.join(running)}" if running else "")
            )
