"""The collapse pruner: stop trials whose predictions collapsed, that learned nothing, or diverged.

It reads the per-epoch collapse signals the objective stores in the trial's user attributes
(`epochs`: a list of {"top_class_share", "loss_ratio", "val_loss", ...}) and combines with
Optuna's median or Hyperband pruner: either may prune.
"""

import math
from collections.abc import Mapping, Sequence
from typing import Any

import optuna
from optuna.pruners import BasePruner
from optuna.trial import FrozenTrial

from carbrand_search.spec import PrunerConfig

EPOCHS_ATTR = "epochs"


def collapse_reason(
    cfg: PrunerConfig, epochs: Sequence[Mapping[str, Any]]
) -> dict[str, Any] | None:
    """Why a trial with these per-epoch metrics should stop, or None; pure, no Optuna."""
    if not epochs:
        return None
    last = epochs[-1]
    epoch = len(epochs)
    if not (math.isfinite(last["val_loss"]) and math.isfinite(last["train_loss"])):
        return {"rule": "diverged", "epoch": epoch, "val_loss": str(last["val_loss"])}
    if not cfg.collapse or epoch <= cfg.warmup_epochs:
        return None
    if last["top_class_share"] > cfg.max_top_class_share:
        return {
            "rule": "one-class",
            "epoch": epoch,
            "top_class_share": round(last["top_class_share"], 4),
            "loss_ratio": round(last["loss_ratio"], 4),
        }
    recent = epochs[cfg.warmup_epochs :][-cfg.patience :]
    if len(recent) == cfg.patience and all(
        abs(e["loss_ratio"] - 1.0) <= cfg.loss_tolerance for e in recent
    ):
        return {
            "rule": "chance-loss",
            "epoch": epoch,
            "loss_ratio": round(last["loss_ratio"], 4),
            "epochs_at_chance": cfg.patience,
        }
    return None


class CollapsePruner(BasePruner):
    """Prunes collapsed or diverged trials; otherwise defers to an optional Optuna pruner."""

    def __init__(self, cfg: PrunerConfig, inner: BasePruner | None = None):
        self.cfg = cfg
        self.inner = inner

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        if collapse_reason(self.cfg, trial.user_attrs.get(EPOCHS_ATTR, [])) is not None:
            return True
        return self.inner is not None and self.inner.prune(study, trial)


def make_pruner(cfg: PrunerConfig) -> CollapsePruner:
    """The study file's pruner settings → a pruner for `optuna.create_study`."""
    inner: BasePruner | None = None
    if cfg.optuna == "median":
        inner = optuna.pruners.MedianPruner(n_startup_trials=4, n_warmup_steps=cfg.warmup_epochs)
    elif cfg.optuna == "hyperband":
        inner = optuna.pruners.HyperbandPruner(min_resource=max(1, cfg.warmup_epochs))
    return CollapsePruner(cfg, inner)
