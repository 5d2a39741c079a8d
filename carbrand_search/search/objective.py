"""Glue between Optuna and training: params → model → fit, reporting and pruning each epoch."""

import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import optuna
from optuna.artifacts import upload_artifact
from optuna.artifacts._protocol import ArtifactStore
from optuna.trial import TrialState
from safetensors.torch import save_file
from sklearn.metrics import confusion_matrix
from torch import Tensor

from carbrand_search.core import plots
from carbrand_search.search import space
from carbrand_search.search.pruners import EPOCHS_ATTR, collapse_reason
from carbrand_search.search.spec import StudySpec
from carbrand_search.training.fit import EpochMetrics, predict
from carbrand_search.training.run import TrainingData, augment_for, train_config

COUNTED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)


class BudgetReached(Exception):
    """Other workers already hold every remaining trial of the budget."""


def trials_taken(study: optuna.Study) -> int:
    """Trials that use up budget: finished, pruned, running or queued (failed ones do not)."""
    return len(study.get_trials(deepcopy=False, states=COUNTED))


@dataclass
class TrialListener:
    """Stores each epoch's metrics on the trial, reports the objective, prunes with a reason."""

    trial: optuna.Trial
    spec: StudySpec
    epochs: list[dict[str, float]] = field(default_factory=list)

    def epoch_start(self, epoch: int, epochs: int, batches: int) -> None:
        self.trial.set_user_attr("epoch", epoch)

    def batch_end(self, loss: Tensor) -> None:
        pass  # per-epoch reporting only: reading a batch loss would stall the GPU

    def epoch_end(self, metrics: EpochMetrics) -> None:
        self.epochs.append(metrics.to_dict())
        self.trial.set_user_attr(EPOCHS_ATTR, self.epochs)
        value = metrics.value(self.spec.base.train.monitor)
        if math.isfinite(value):
            self.trial.report(value, metrics.epoch)
        if self.trial.should_prune():
            reason = collapse_reason(self.spec.pruner, self.epochs) or {
                "rule": self.spec.pruner.optuna,
                "epoch": metrics.epoch,
                "loss_ratio": round(metrics.loss_ratio, 4),
            }
            self.trial.set_user_attr("prune_reason", reason)
            raise optuna.TrialPruned(f"{reason['rule']} at epoch {metrics.epoch}")


@dataclass
class Objective:
    """One worker's objective: sample, train, store the checkpoint as an artifact."""

    spec: StudySpec
    data: TrainingData
    artifacts: ArtifactStore
    budget: int
    worker: str

    def __call__(self, trial: optuna.Trial) -> float:
        try:
            return self._run(trial)
        except (optuna.TrialPruned, BudgetReached):
            raise
        except Exception as e:  # recorded on the trial for `status` and the failure guard
            first = str(e).strip().splitlines()[0][:300] if str(e).strip() else ""
            trial.set_user_attr("fail_reason", f"{type(e).__name__}: {first}")
            raise

    def _upload(self, path: Path, trial: optuna.Trial) -> str:
        try:
            return upload_artifact(
                artifact_store=self.artifacts, file_path=str(path), study_or_trial=trial
            )
        except OSError as e:
            raise OSError(f"cannot write {path.name} to the artifact store: {e}") from e

    def _run(self, trial: optuna.Trial) -> float:
        taken = trial.study.get_trials(deepcopy=False, states=COUNTED)
        if sum(1 for t in taken if t.number < trial.number) >= self.budget:
            trial.set_user_attr("surplus", True)
            raise BudgetReached
        trial.set_user_attr("worker", self.worker)
        config = self.spec.resolve(space.sample(trial, self.spec))
        model, result = train_config(config, self.data, TrialListener(trial, self.spec))
        with tempfile.TemporaryDirectory() as tmp:
            weights = Path(tmp) / f"trial-{trial.number}.safetensors"
            save_file({k: v.contiguous() for k, v in result.best_state.items()}, str(weights))
            artifact_id = self._upload(weights, trial)
            # Pictures for optuna-dashboard's trial view; a finished trial cannot take uploads.
            logits, labels = predict(model, self.data.val, augment_for(config), 64)
            classes = self.data.tree.classes
            cm = confusion_matrix(labels, logits.argmax(1), labels=range(len(classes)))
            for picture in (
                plots.curves_png(
                    [m.to_dict() for m in result.history], Path(tmp) / "val-curves.png"
                ),
                plots.confusion_png(cm, classes, Path(tmp) / "val-confusion.png"),
            ):
                self._upload(picture, trial)
        trial.set_user_attr("checkpoint", artifact_id)
        trial.set_user_attr("best_epoch", result.best_epoch)
        trial.set_user_attr("val", result.best.to_dict())
        trial.set_user_attr("classes", list(self.data.tree.classes))
        return result.best.value(self.spec.base.train.monitor)
