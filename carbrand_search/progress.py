"""Rich progress for the terminal: cache building and training epochs."""

import time

from optuna.trial import FrozenTrial, TrialState
from rich.console import Console
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
from torch import Tensor

from carbrand_search.core.metric import best_first, is_better
from carbrand_search.training.fit import EpochMetrics

LOSS_REFRESH_S = 0.5


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


def format_epoch(m: EpochMetrics, epochs: int, best: bool) -> Text:
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

    def batch_end(self, loss: Tensor) -> None:
        self.loss_sum = loss + self.loss_sum
        self.batches += 1
        assert self.task is not None
        self.progress.update(self.task, advance=1)
        # Reading the loss makes the host wait for the GPU: a few times a second, not per batch.
        if time.monotonic() - self.shown_at >= LOSS_REFRESH_S:
            self.shown_at = time.monotonic()
            self.progress.update(self.task, note=f"loss {float(self.loss_sum) / self.batches:.3f}")

    def epoch_end(self, metrics: EpochMetrics) -> None:
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


def study_counts(trials: list[FrozenTrial]) -> dict[str, int]:
    """Trials per state name (complete, pruned, fail, running, waiting)."""
    counts = {"complete": 0, "pruned": 0, "fail": 0, "running": 0, "waiting": 0}
    for t in trials:
        counts[t.state.name.lower()] = counts.get(t.state.name.lower(), 0) + 1
    return counts


def study_line(name: str, trials: list[FrozenTrial], budget: int, direction: str) -> str:
    """One line: progress against the budget and the best value so far."""
    c = study_counts(trials)
    done = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
    best = ""
    if done:
        top = best_first(done, direction, lambda t: t.value or 0.0)[0]
        best = f", best {top.value:.4f} (trial {top.number})"
    return (
        f"{name}: {c['complete'] + c['pruned']}/{budget} finished ({c['complete']} complete, "
        f"{c['pruned']} pruned), {c['fail']} failed, {c['running']} running{best}"
    )


def live_view(name: str, trials: list[FrozenTrial], budget: int, direction: str) -> Table:
    """The `run` screen: the study line plus each running trial's worker and epoch."""
    table = Table(title=study_line(name, trials, budget, direction), title_justify="left")
    for column in ("worker", "trial", "epoch", "last val", "params"):
        table.add_column(column)
    for t in trials:
        if t.state != TrialState.RUNNING:
            continue
        epochs = t.user_attrs.get("epochs", [])
        last = f"{epochs[-1]['val_macro_f1']:.3f} F1" if epochs else ""
        params = format_params(dict(list(t.params.items())[:4]))
        table.add_row(
            str(t.user_attrs.get("worker", "")),
            str(t.number),
            str(t.user_attrs.get("epoch", "")),
            last,
            params,
        )
    return table
