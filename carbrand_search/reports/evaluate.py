"""Rebuild a stored trial's model (params + checkpoint artifact) and evaluate it on a split."""

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import optuna
import torch
from optuna.artifacts import download_artifact
from optuna.artifacts.exceptions import ArtifactNotFound
from optuna.trial import FrozenTrial
from safetensors import SafetensorError
from safetensors.torch import load_file
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score
from sklearn.metrics import precision_recall_fscore_support as prf
from torch import nn

from carbrand_search.core.config import RunConfig
from carbrand_search.core.errors import UserError, first_line
from carbrand_search.data.cache import load_or_build
from carbrand_search.data.imagefolder import scan
from carbrand_search.data.loader import DeviceSplit
from carbrand_search.search import record, space
from carbrand_search.search.storage import ArtifactStore
from carbrand_search.search.study import best_trials, stored_spec, trials
from carbrand_search.training.fit import predict
from carbrand_search.training.run import augment_for, build_model

COLLAPSE_SHARE = 0.5  # one brand taking half the predictions is a collapse at any class count


@dataclass(frozen=True)
class ClassScores:
    """One brand's scores on a split."""

    precision: float
    recall: float
    f1: float
    support: int


@dataclass(frozen=True)
class ConfusedPair:
    """A frequent mistake: `count` images of `true` predicted as `predicted`."""

    true: str
    predicted: str
    count: int


@dataclass(frozen=True)
class Verdict:
    """Collapsed or not, read from the confusion matrix."""

    collapsed: bool  # one brand takes COLLAPSE_SHARE of the predictions or more
    top_predicted_class: str
    top_predicted_share: float
    diagonal_share: float
    times_chance: float  # diagonal share over 1 / brands
    classes_predicted: int
    text: str


@dataclass(frozen=True)
class TrialModel:
    """A finished trial rebuilt: its config, classes and model at the best epoch."""

    trial: FrozenTrial
    config: RunConfig
    classes: tuple[str, ...]
    model: nn.Module


def load_trial_model(
    study: optuna.Study, trial: FrozenTrial, artifacts: ArtifactStore
) -> TrialModel:
    """The model of `trial` from its stored params and checkpoint artifact; clear errors."""
    spec = stored_spec(study)
    config = spec.resolve(space.decode(spec, trial.params))
    stored = record.read(trial)
    artifact_id, classes = stored.checkpoint, stored.classes
    if not artifact_id or not classes:
        raise UserError(f"trial {trial.number} of '{study.study_name}' has no checkpoint artifact")
    model = build_model(config, len(classes))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.safetensors"
        try:
            download_artifact(
                artifact_store=artifacts, artifact_id=artifact_id, file_path=str(path)
            )
            model.load_state_dict(load_file(str(path)))
        # ValueError: an id that leaves the store (`../x`), refused by Optuna.
        except (
            OSError, ArtifactNotFound, SafetensorError, RuntimeError, KeyError, ValueError,
            TypeError,
        ) as e:  # fmt: skip
            kept = spec.keep_checkpoints
            ranked = [t.number for t in best_trials(trials(study), spec.direction)]
            if kept and trial.number in ranked[kept:]:
                raise UserError(
                    f"trial {trial.number}: its checkpoint was removed (the study keeps the "
                    f"weights of its best {kept} trials: [study] keep_checkpoints)"
                ) from e
            raise UserError(
                f"trial {trial.number}: checkpoint artifact {artifact_id} is missing or corrupt "
                f"({first_line(e, 200)})"
            ) from e
    model.eval()
    return TrialModel(trial, config, classes, model)


@dataclass(frozen=True)
class Evaluation:
    """Predictions on a split and every number computed from them."""

    classes: tuple[str, ...]
    labels: np.ndarray
    preds: np.ndarray
    probs: np.ndarray
    images: np.ndarray  # the cached uint8 images, for Grad-CAM

    @property
    def accuracy(self) -> float:
        return float(accuracy_score(self.labels, self.preds))

    @property
    def macro_f1(self) -> float:
        labels = range(len(self.classes))
        return float(
            f1_score(self.labels, self.preds, average="macro", labels=labels, zero_division=0)
        )

    @property
    def confusion(self) -> np.ndarray:
        return confusion_matrix(self.labels, self.preds, labels=range(len(self.classes)))

    def per_class(self) -> dict[str, ClassScores]:
        p, r, f, s = prf(self.labels, self.preds, labels=range(len(self.classes)), zero_division=0)
        return {
            c: ClassScores(float(p[i]), float(r[i]), float(f[i]), int(s[i]))
            for i, c in enumerate(self.classes)
        }

    def confused_pairs(self, top: int = 5) -> list[ConfusedPair]:
        """The most frequent (true, predicted) mistakes."""
        cm = self.confusion.copy()
        np.fill_diagonal(cm, 0)
        order = np.argsort(cm, axis=None)[::-1][:top]
        pairs = [np.unravel_index(i, cm.shape) for i in order]
        return [
            ConfusedPair(self.classes[t], self.classes[p], int(cm[t, p]))
            for t, p in pairs
            if cm[t, p] > 0
        ]

    def verdict(self) -> Verdict:
        """Collapsed (one brand dominates predictions) or not, and how far the diagonal is above
        guessing (1 / brands), from the matrix."""
        cm = self.confusion
        predicted = cm.sum(axis=0)
        top = int(predicted.argmax())
        share = float(predicted[top] / cm.sum())
        diagonal = float(np.trace(cm) / cm.sum())
        used = int((predicted > 0).sum())
        chance = 1 / len(self.classes)
        collapsed = share >= COLLAPSE_SHARE and len(self.classes) > 2
        if collapsed:
            text = (
                f"collapsed: {share:.0%} of test predictions are '{self.classes[top]}' "
                f"({used} of {len(self.classes)} brands ever predicted)"
            )
        else:
            text = (
                f"no collapse: {diagonal:.0%} of test images on the diagonal "
                f"({diagonal / chance:.1f}× the {chance:.0%} of guessing); the most "
                f"predicted brand ('{self.classes[top]}') takes {share:.0%} of predictions; "
                f"{used} of {len(self.classes)} brands predicted"
            )
        return Verdict(
            collapsed=collapsed,
            top_predicted_class=self.classes[top],
            top_predicted_share=share,
            diagonal_share=diagonal,
            times_chance=diagonal / chance,
            classes_predicted=used,
            text=text,
        )


def evaluate_split(
    tm: TrialModel,
    data_root: Path,
    cache_root: Path,
    *,
    split: str = "test",
    skip_bad: bool = False,
) -> Evaluation:
    """Predict every image of `split`; its classes must be the ones the model was trained on."""
    tree = scan(data_root)
    if tree.classes != tm.classes:
        extra = sorted(set(tree.classes) - set(tm.classes))
        missing = sorted(set(tm.classes) - set(tree.classes))
        raise UserError(
            f"{data_root}: classes differ from those trial {tm.trial.number} was trained on "
            f"(not trained on: {extra or 'none'}; absent here: {missing or 'none'})"
        )
    cached = load_or_build(
        tree.splits[split], tm.config.data.cache_size, tm.config.data.fit, cache_root, skip_bad
    )
    device_split = DeviceSplit.from_arrays(cached.images, cached.labels, torch.device("cpu"))
    logits, labels = predict(tm.model, device_split, augment_for(tm.config), 64)
    return Evaluation(
        classes=tm.classes,
        labels=labels.numpy(),
        preds=logits.argmax(1).numpy(),
        probs=logits.softmax(1).numpy(),
        images=np.asarray(cached.images),
    )
