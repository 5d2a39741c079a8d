"""The collapse pruner: stop trials whose predictions collapsed, that learned nothing, or diverged.

It reads the per-epoch collapse signals the objective stores in the trial record (top-class
share, loss ratio, losses) and runs before
Optuna's median, successive-halving or Hyperband pruner: either may prune. With Hyperband the
study's pruner is a `HyperbandPruner` subclass, so TPE sees the brackets and samples each from
its own bracket's trials.
"""

import math
from collections.abc import Sequence

import optuna
from optuna.pruners import BasePruner, HyperbandPruner
from optuna.trial import FrozenTrial

from carbrand_search.core.config import PrunerConfig
from carbrand_search.core.metric import EpochMetrics
from carbrand_search.search import record


def collapse_reason(
    cfg: PrunerConfig, epochs: Sequence[EpochMetrics]
) -> record.PruneReason | None:
    """Why a trial with these per-epoch metrics should stop, or None; pure, no Optuna."""
    if not epochs:
        return None
    last = epochs[-1]
    epoch = len(epochs)
    if not (math.isfinite(last.val_loss) and math.isfinite(last.train_loss)):
        return record.PruneReason("diverged", epoch, {"val_loss": str(last.val_loss)})
    if not cfg.collapse or epoch < cfg.first_prunable_epoch:
        return None
    # A collapse lasts: one epoch on one class in a learning-rate warm-up is not one (a distilled
    # student put 96% on one make for one epoch, then spread again; bench/RESULTS.md).
    recent = epochs[cfg.warmup_epochs :][-cfg.patience :]
    stuck = len(recent) == cfg.patience
    if stuck and all(e.top_class_share > cfg.max_top_class_share for e in recent):
        return record.PruneReason(
            "one-class",
            epoch,
            {
                "top_class_share": round(last.top_class_share, 4),
                "loss_ratio": round(last.loss_ratio, 4),
            },
        )
    if stuck and all(abs(e.loss_ratio - 1.0) <= cfg.loss_tolerance for e in recent):
        return record.PruneReason(
            "chance-loss",
            epoch,
            {"loss_ratio": round(last.loss_ratio, 4), "epochs_at_chance": cfg.patience},
        )
    return None


def _collapsed(cfg: PrunerConfig, trial: FrozenTrial) -> bool:
    return collapse_reason(cfg, record.epochs(trial)) is not None


class CollapsePruner(BasePruner):
    """Prunes collapsed or diverged trials; otherwise defers to an optional Optuna pruner."""

    def __init__(self, cfg: PrunerConfig, inner: BasePruner | None = None):
        self.cfg = cfg
        self.inner = inner

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        if _collapsed(self.cfg, trial):
            return True
        return self.inner is not None and bool(self.inner.prune(study, trial))


class CollapseHyperbandPruner(HyperbandPruner):
    """Optuna's Hyperband after the collapse rules. A subclass, not a wrapper: TPESampler
    samples per Hyperband bracket only when `study.pruner` is a HyperbandPruner."""

    def __init__(self, cfg: PrunerConfig, max_epochs: int | None = None):
        super().__init__(
            min_resource=cfg.first_prunable_epoch,
            # Known up front: Optuna's "auto" waits for a first complete trial, and on real
            # data the first trials may all be pruned by the collapse rules.
            max_resource=max_epochs or "auto",
            reduction_factor=cfg.reduction_factor,
        )
        self.cfg = cfg

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        return _collapsed(self.cfg, trial) or bool(super().prune(study, trial))


def make_pruner(cfg: PrunerConfig, max_epochs: int | None = None) -> BasePruner:
    """The study file's pruner settings → a pruner for `optuna.create_study`. Epochs are
    reported from 1, so Optuna's warm-up and first rung are the first prunable epoch;
    `max_epochs` (the most a trial can train) is Hyperband's maximum resource."""
    if cfg.optuna == "hyperband":
        return CollapseHyperbandPruner(cfg, max_epochs)
    inner: BasePruner | None = None
    if cfg.optuna == "median":
        inner = optuna.pruners.MedianPruner(
            n_startup_trials=4, n_warmup_steps=cfg.first_prunable_epoch
        )
        if cfg.optuna_patience:
            inner = optuna.pruners.PatientPruner(inner, patience=cfg.optuna_patience)
    elif cfg.optuna == "successive_halving":
        inner = optuna.pruners.SuccessiveHalvingPruner(
            min_resource=cfg.first_prunable_epoch, reduction_factor=cfg.reduction_factor
        )
    return CollapsePruner(cfg, inner)
