"""Evaluate a rebuilt trial model on a split: predictions, scores, confusion, verdict."""

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score
from sklearn.metrics import precision_recall_fscore_support as prf

from carbrand_search.data.cache import load_or_build
from carbrand_search.data.imagefolder import scan
from carbrand_search.data.loader import DeviceSplit
from carbrand_search.search.trained import TrialModel
from carbrand_search.training.fit import predict
from carbrand_search.training.parts import augment_for, precision_for

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
    top_true_share: float  # the same brand's share of the images: a larger share is bias
    diagonal_share: float
    times_chance: float  # diagonal share over 1 / brands
    classes_predicted: int
    text: str


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
        true_share = float(cm[top].sum() / cm.sum())
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
                f"predicted brand ('{self.classes[top]}') takes {share:.1%} of predictions "
                f"({true_share:.1%} of the images); {used} of {len(self.classes)} brands predicted"
            )
        return Verdict(
            collapsed=collapsed,
            top_predicted_class=self.classes[top],
            top_predicted_share=share,
            top_true_share=true_share,
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
    tta: bool = False,
) -> Evaluation:
    """Predict every image of `split`; its classes must be the ones the model was trained on.
    With `tta`, each image's probabilities are the mean over it and its mirror image."""
    tree = scan(data_root)
    tm.check_classes(tree.classes, str(data_root))
    cached = load_or_build(
        tree.splits[split], tm.config.data.cache_size, tm.config.data.fit, cache_root, skip_bad
    )
    device_split = DeviceSplit.from_arrays(cached.images, cached.labels, torch.device("cpu"))
    augment = augment_for(tm.config)
    precision = precision_for(tm.config, device_split.device)
    logits, labels = predict(tm.model, device_split, augment, 64, precision)
    probs = logits.softmax(1)
    if tta:
        mirrored, _ = predict(tm.model, device_split, augment, 64, precision, flip=True)
        probs = (probs + mirrored.softmax(1)) / 2
    return Evaluation(
        classes=tm.classes,
        labels=labels.numpy(),
        preds=probs.argmax(1).numpy(),
        probs=probs.numpy(),
        images=np.asarray(cached.images),
    )
