"""What the terminal shows: progress bars (cache, epochs), the live view of a run, the trials
table of `status`; all drawn with rich from the search's typed records."""

import time
from collections import Counter
from collections.abc import Mapping, Sequence
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
from carbrand_search.core.metric import Direction, Metric, is_better
from carbrand_search.core.terminal import tagged
from carbrand_search.search import record
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
    name: str, states: Mapping[TrialState, int], budget: int, best: FrozenTrial | None
) -> str:
    """One line: progress against the budget and the best value so far."""
    complete, pruned = states.get(TrialState.COMPLETE, 0), states.get(TrialState.PRUNED, 0)
    so_far = f", best {best.value:.4f} (trial {best.number})" if best is not None else ""
    return (
        f"{name}: {complete + pruned}/{budget} finished ({complete} complete, {pruned} pruned), "
        f"{states.get(TrialState.FAIL, 0)} failed, {states.get(TrialState.RUNNING, 0)} running"
        f"{so_far}"
    )


def trials_line(
    name: str, trials: Sequence[FrozenTrial], budget: int, direction: Direction
) -> str:
    """`study_line` for trials already read."""
    ranked = best_trials(trials, direction)
    return study_line(
        name, Counter(t.state for t in trials), budget, ranked[0] if ranked else None
    )


def live_view(name: str, trials: Sequence[FrozenTrial], budget: int, monitor: Metric) -> Table:
    """The `run` screen: the study line plus each running trial's worker, epoch and the last
    value of the metric the study optimises."""
    title = trials_line(name, trials, budget, metric.direction(monitor))
    table = Table(title=title, title_justify="left")
    for column in ("worker", "trial", "epoch", f"last {monitor}", "params"):
        table.add_column(column)
    for t in trials:
        if t.state != TrialState.RUNNING:
            continue
        stored = record.read(t)
        last = f"{stored.epochs[-1][monitor]:.3f}" if stored.epochs else ""
        params = format_params(dict(list(t.params.items())[:4]))
        table.add_row(stored.worker or "", str(t.number), str(stored.epoch or ""), last, params)
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


def running_text(trial: FrozenTrial, monitor: Metric) -> str:
    """A running trial: its epoch and the last value of the monitor."""
    stored = record.read(trial)
    last = f", last {monitor} {stored.epochs[-1][monitor]:.4f}" if stored.epochs else ""
    return f"trial {trial.number} at epoch {stored.epoch or 0}{last}"


def reason_text(trial: FrozenTrial) -> str:
    """Why a trial was pruned (rule, epoch, numbers) or failed (kind: cause)."""
    stored = record.read(trial)
    if stored.prune_reason:
        return ", ".join(f"{k}={short(v)}" for k, v in stored.prune_reason.items())
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
        batches = f" + {at['batch']} batches" if at["batch"] else ""
        parts.append(f"resumed after epoch {at['epoch']}{batches}")
    return ", ".join(p for p in parts if p)


def status_table(title: str, trials: Sequence[FrozenTrial]) -> Table:
    """`status`: each trial's state, value, parameters, duration, why it was pruned or failed,
    and where it ran (device, peak memory, retry, resume)."""
    table = Table(title=title)
    columns = ("#", "state", "value", "params", "duration", "why pruned or failed", "ran on")
    for column in columns:
        table.add_column(column)
    for t in trials:
        duration = f"{t.duration.total_seconds():.0f}s" if t.duration else ""
        value = f"{t.value:.4f}" if t.value is not None else ""
        table.add_row(
            str(t.number), t.state.name, value, format_params(t.params), duration,
            reason_text(t), history_text(t),
        )  # fmt: skip
    return table


class RichRunProgress:
    """A `RunProgress` for the terminal: notes on stdout, warnings tagged on stderr, a bar per
    cache split, then the live view while workers run."""

    def __init__(self, console: Console, err_console: Console, spec_name: str, monitor: Metric):
        self.console, self.err_console = console, err_console
        self.name, self.monitor = spec_name, monitor
        self.logged: set[int] | None = None  # trials whose end was logged (not a terminal)
        self.summarised_at = time.monotonic()
        self.cache: CacheProgress | None = None
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
        if self.cache is None:
            self.cache = CacheProgress(self.console).__enter__()
        self.cache(split, done, total)

    def trials(self, trials: Sequence[FrozenTrial], budget: int) -> None:
        if not self.console.is_terminal:
            self._log(trials, budget)
            return
        view = live_view(self.name, trials, budget, self.monitor)
        if self.live is None:
            self._stop_cache()
            # Not transient: the last table stays on screen after the run.
            self.live = Live(view, console=self.console, refresh_per_second=2)
            self.live.start()
        else:
            self.live.update(view)

    def _log(self, trials: Sequence[FrozenTrial], budget: int) -> None:
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
            direction = metric.direction(self.monitor)
            running = [
                running_text(t, self.monitor) for t in trials if t.state == TrialState.RUNNING
            ]
            self.console.print(
                f"{trials_line(self.name, trials, budget, direction)} [{self.monitor}]"
                + (f"; {'; '.join(running)}" if running else "")
            )
