"""Glue between Optuna and training: params → model → fit, reporting and pruning each epoch."""

import math
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import optuna
from safetensors.torch import save_file
from torch import Tensor, nn

from carbrand_search.core.config import RunConfig
from carbrand_search.core.metric import EpochMetrics
from carbrand_search.search import record, space
from carbrand_search.search.budget import is_surplus
from carbrand_search.search.failures import describe
from carbrand_search.search.pruners import collapse_reason
from carbrand_search.search.resume import ResumeSaver, inherited
from carbrand_search.search.retry import settle_failure
from carbrand_search.search.spec import StudySpec
from carbrand_search.search.storage import ArtifactStore
from carbrand_search.search.study import trials
from carbrand_search.search.teacher import Teacher
from carbrand_search.search.tracking import TrialTracker
from carbrand_search.search.uploads import TrialUploads
from carbrand_search.training.device import PeakMemory
from carbrand_search.training.distill import Teaching
from carbrand_search.training.fit import fit, predict
from carbrand_search.training.parts import TrainingData, augment_for, new_model, precision_for
from carbrand_search.training.state import FitState


class BudgetReached(Exception):
    """Other workers already hold every remaining trial of the budget."""


@dataclass
class TrialListener:
    """Stores each epoch's metrics on the trial, reports the objective, prunes with a reason."""

    trial: optuna.Trial
    spec: StudySpec
    # Uploads the evidence (curves, confusion matrix) before the trial ends as pruned: Optuna
    # takes no uploads to a finished trial.
    on_prune: Callable[[list[EpochMetrics]], None]
    tracker: TrialTracker
    epochs: list[EpochMetrics] = field(default_factory=list)

    def resumed(self, history: tuple[EpochMetrics, ...]) -> None:
        """Carry over the epochs trained before the resume point, for the pruner too."""
        self.epochs = list(history)
        record.epochs_done(self.trial, self.epochs)
        for metrics in history:
            value = metrics.value(self.spec.base.train.monitor)
            if math.isfinite(value):
                self.trial.report(value, metrics.epoch)

    def epoch_start(self, epoch: int, epochs: int, batches: int) -> None:
        record.epoch_started(self.trial, epoch)

    def batch_end(self, loss: Tensor) -> None:
        pass  # per-epoch reporting only: reading a batch loss would stall the GPU

    def epoch_end(self, metrics: EpochMetrics) -> None:
        self.epochs.append(metrics)
        record.epochs_done(self.trial, self.epochs)
        self.tracker.epoch(metrics)
        value = metrics.value(self.spec.base.train.monitor)
        if math.isfinite(value):
            self.trial.report(value, metrics.epoch)
        if self.trial.should_prune():
            reason = collapse_reason(self.spec.pruner, self.epochs) or record.PruneReason(
                self.spec.pruner.optuna,
                metrics.epoch,
                {"loss_ratio": round(metrics.loss_ratio, 4)},
            )
            record.pruned(self.trial, reason)
            self.on_prune(self.epochs)
            self.tracker.end("PRUNED", reason)
            raise optuna.TrialPruned(f"{reason.rule} at epoch {metrics.epoch}")


@dataclass
class Objective:
    """One worker's objective: sample, train, store the checkpoint as an artifact."""

    spec: StudySpec
    data: TrainingData
    artifacts: ArtifactStore
    budget: int
    worker: str
    teacher: Teacher | None = None  # the study's, its views or itself on the training device

    def __call__(self, trial: optuna.Trial) -> float:
        if is_surplus(trials(trial.study), trial.number, self.budget):
            record.surplus(trial)
            raise BudgetReached
        device = self.data.train.device
        record.started(trial, self.worker, str(device))
        saver = ResumeSaver(self.artifacts, trial, self.spec.study.resume_every_s)
        uploads = TrialUploads(self.artifacts, trial)
        try:
            with PeakMemory(device, lambda size: record.peak_memory(trial, size)):
                value = self._run(trial, saver, uploads)
            uploads.publish()
        except optuna.TrialPruned:
            uploads.publish()  # the evidence it was pruned on
            saver.discard()
            raise
        except BaseException as e:  # recorded on the trial for `status` and the failure guard
            uploads.discard()
            failure = e
        else:
            saver.discard()
            return value
        # Outside the handler: an error of settling's own must not read as `failure`'s context.
        if not settle_failure(trial, failure):
            saver.discard()
        raise failure

    def _take_over(
        self, trial: optuna.Trial, saver: ResumeSaver, listener: TrialListener
    ) -> FitState | None:
        """The state to resume from when `trial` retries a failed trial that left one."""
        found = inherited(trial, self.artifacts)
        if found is None:
            record.epochs_done(trial, [])  # a retry that starts over: not its predecessor's
            return None
        previous, point, state = found
        record.resumed(trial, previous, point)
        saver.adopt(point)
        listener.resumed(state.history)
        return state

    def _upload_pictures(
        self,
        uploads: TrialUploads,
        model: nn.Module,
        config: RunConfig,
        history: list[EpochMetrics],
        tracker: TrialTracker,
    ) -> None:
        """Validation curves and the confusion matrix of `model` as it is now, for
        optuna-dashboard's trial view (a collapse shows as one full column) and the tracker."""
        from sklearn.metrics import confusion_matrix

        from carbrand_search.core import plots  # matplotlib: loaded by the first trial to end

        logits, labels = predict(
            model,
            self.data.val,
            augment_for(config),
            64,
            precision_for(config, self.data.val.device),
        )
        classes = self.data.tree.classes
        cm = confusion_matrix(labels, logits.argmax(1), labels=range(len(classes)))
        with tempfile.TemporaryDirectory() as tmp:
            pictures = [
                plots.curves_png(history, Path(tmp) / "val-curves.png"),
                plots.confusion_png(cm, classes, Path(tmp) / "val-confusion.png"),
            ]
            for picture in pictures:
                uploads.upload(picture)
            tracker.pictures(pictures)

    def _run(self, trial: optuna.Trial, saver: ResumeSaver, uploads: TrialUploads) -> float:
        config = self.spec.resolve(space.sample(trial, self.spec))
        tracker = TrialTracker(self.spec.tracking, self.spec.name, trial.number, trial.params)
        try:
            return self._train(trial, config, tracker, saver, uploads)
        except optuna.TrialPruned:
            raise  # the listener ended the tracker's run with the reason
        except BaseException as e:
            tracker.end("FAIL", describe(e))
            raise

    def _train(
        self,
        trial: optuna.Trial,
        config: RunConfig,
        tracker: TrialTracker,
        saver: ResumeSaver,
        uploads: TrialUploads,
    ) -> float:
        model = new_model(config, len(self.data.tree.classes))

        def evidence(history: list[EpochMetrics]) -> None:
            self._upload_pictures(uploads, model, config, history, tracker)

        listener = TrialListener(trial, self.spec, evidence, tracker)
        state = self._take_over(trial, saver, listener)
        teaching = None
        if self.teacher is not None:
            record.taught_by(trial, self.teacher.ref)
            teaching = Teaching(
                self.teacher.source, config.distill.alpha, config.distill.temperature
            )
        result = fit(
            model, self.data, config, listener, resume=state, checkpointer=saver,
            teaching=teaching,
        )  # fmt: skip
        with tempfile.TemporaryDirectory() as tmp:
            weights = Path(tmp) / f"trial-{trial.number}.safetensors"
            save_file({k: v.contiguous() for k, v in result.best_state.items()}, str(weights))
            artifact_id = uploads.upload(weights)
        self._upload_pictures(uploads, model, config, result.history, tracker)
        record.completed(
            trial,
            checkpoint=artifact_id,
            best_epoch=result.best_epoch,
            val=result.best,
            classes=self.data.tree.classes,
        )
        tracker.end("COMPLETE")
        return result.best.value(self.spec.base.train.monitor)
