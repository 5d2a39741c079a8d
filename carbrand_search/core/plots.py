"""Matplotlib figures for reports: confusion matrix, training curves, study views, CAM grids."""

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, never a window

import matplotlib.pyplot as plt
import numpy as np

from carbrand_search.core.metric import EpochMetrics


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def confusion_png(cm: np.ndarray, classes: Sequence[str], path: Path) -> Path:
    """Confusion matrix with brand names on both axes, counts in the cells."""
    n = len(classes)
    side = max(5.0, 0.45 * n + 2)
    fig, ax = plt.subplots(figsize=(side, side))
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(n), classes, rotation=90, fontsize=8)
    ax.set_yticks(range(n), classes, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if n <= 40:
        for (i, j), value in np.ndenumerate(cm):
            if value:
                color = "white" if value > cm.max() / 2 else "black"
                ax.text(j, i, str(value), ha="center", va="center", fontsize=7, color=color)
    return _save(fig, path)


def curves_png(history: Sequence[EpochMetrics], path: Path) -> Path:
    """Loss and accuracy/macro-F1 per epoch."""
    epochs = [h.epoch for h in history]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    left.plot(epochs, [h.train_loss for h in history], label="train loss")
    left.plot(epochs, [h.val_loss for h in history], label="val loss")
    left.set_xlabel("epoch")
    left.legend()
    right.plot(epochs, [h.val_accuracy for h in history], label="val accuracy")
    right.plot(epochs, [h.val_macro_f1 for h in history], label="val macro-F1")
    right.plot(epochs, [h.top_class_share for h in history], "--", label="top-class share")
    right.set_xlabel("epoch")
    right.set_ylim(0, 1)
    right.legend()
    return _save(fig, path)


def bars_png(values: dict[str, float], title: str, path: Path) -> Path:
    """Horizontal bars, e.g. trial states or parameter importances."""
    fig, ax = plt.subplots(figsize=(7, 0.4 * len(values) + 1.2))
    names = list(values)
    ax.barh(names, [values[n] for n in names])
    ax.invert_yaxis()
    ax.set_title(title)
    return _save(fig, path)


def history_png(
    numbers: list[int], values: list[float], maximize: bool, metric: str, path: Path
) -> Path:
    """The metric per trial and the best so far."""
    best = np.maximum.accumulate(values) if maximize else np.minimum.accumulate(values)
    fig, ax = plt.subplots(figsize=(7, 3.6))
    ax.scatter(numbers, values, s=14, label="trial value")
    ax.step(numbers, best, where="post", color="C1", label="best so far")
    ax.set_xlabel("trial")
    ax.set_ylabel(metric)
    ax.legend()
    return _save(fig, path)


def grid_png(
    images: Sequence[np.ndarray], titles: Sequence[str], path: Path, cols: int = 4
) -> Path:
    """Images in a grid with a title each (Grad-CAM overlays)."""
    rows = max(1, -(-len(images) // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 3.2 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, title in zip(axes.flat, images, titles, strict=False):
        ax.imshow(image)
        ax.set_title(title, fontsize=8)
    return _save(fig, path)
