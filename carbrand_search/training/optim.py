"""The optimiser and its learning-rate schedule for a `TrainConfig`: timm's optimizer factory and
torch's schedulers, with warm-up and cosine as one pure function of the step."""

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.optim import lr_scheduler

from carbrand_search.core import metric
from carbrand_search.core.config import TrainConfig
from carbrand_search.training.state import StateDict

# timm's optimizer names; "sgd" there means Nesterov momentum.
_TIMM_OPTIMIZERS = {"adamw": "adamw", "adam": "adam", "rmsprop": "rmsprop"}
WARMUP_START = 0.01  # the warm-up's first rate, as a fraction of the base rate


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """timm's optimizer factory: weight decay only on weights of rank ≥ 2 (never on BatchNorm
    scales or biases), as timm and nanoGPT do."""
    from timm.optim import create_optimizer_v2

    name = _TIMM_OPTIMIZERS.get(cfg.optimizer)
    if name is None:  # sgd
        name = "nesterov" if cfg.nesterov and cfg.momentum > 0 else "momentum"
    return create_optimizer_v2(
        model,
        opt=name,
        lr=cfg.lr,
        weight_decay=cfg.weight_decay,
        momentum=cfg.momentum,
        layer_decay=cfg.layer_decay if cfg.layer_decay < 1 else None,
    )


def lr_factor(step: int, warmup: int, total: int, cosine: bool) -> float:
    """The rate after `step` batches as a fraction of the base rate: a linear warm-up from
    `WARMUP_START` over `warmup` steps, then a cosine decay to 0 at `total`, or the base rate."""
    if step < warmup:
        return WARMUP_START + (1 - WARMUP_START) * step / warmup
    if not cosine:
        return 1.0
    done = min(1.0, (step - warmup) / max(1, total - warmup))
    return 0.5 * (1 + math.cos(math.pi * done))


@dataclass
class LRSchedule:
    """A per-batch scheduler stepped for the first `batch_steps` batches, and for plateau the
    per-epoch one after it.

    Warm-up and cosine are `lr_factor` under a `LambdaLR`: the rate is a pure function of the
    step, so a resume point needs only the step count. One-cycle stays torch's `OneCycleLR`,
    also pure in the step, because it cycles the momentum (Adam's β1) against the rate, which a
    `LambdaLR` cannot. timm's scheduler factory has no one-cycle. Plateau is torch's
    `ReduceLROnPlateau`, whose state (best value, bad epochs) its state dict carries."""

    per_batch: lr_scheduler.LRScheduler
    batch_steps: int
    plateau: lr_scheduler.ReduceLROnPlateau | None = None

    @classmethod
    def create(
        cls, optimizer: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int
    ) -> "LRSchedule":
        total = cfg.epochs * steps_per_epoch
        warmup = cfg.warmup_epochs * steps_per_epoch
        if cfg.scheduler == "onecycle":
            pct = warmup / total if warmup else 0.3
            cycle = lr_scheduler.OneCycleLR(
                optimizer, max_lr=cfg.lr, total_steps=total, pct_start=pct
            )
            return cls(cycle, total)
        cosine = cfg.scheduler == "cosine"
        # A closure, not a callable object: LambdaLR's state dict then holds no copy of it.
        per_batch = lr_scheduler.LambdaLR(
            optimizer, lambda step: lr_factor(step, warmup, total, cosine)
        )
        if cfg.scheduler != "plateau":
            return cls(per_batch, total)
        # After the warm-up only the plateau rule moves the rate: a per-batch step would reset it.
        plateau = lr_scheduler.ReduceLROnPlateau(
            optimizer,
            mode="min" if metric.direction(cfg.monitor) == "minimize" else "max",
            factor=cfg.plateau_factor,
            patience=cfg.plateau_patience,
        )
        return cls(per_batch, warmup, plateau)

    def after_batch(self) -> None:
        if self.per_batch.last_epoch < self.batch_steps:
            self.per_batch.step()

    def after_epoch(self, monitored: float) -> None:
        if self.plateau is not None and self.per_batch.last_epoch >= self.batch_steps:
            self.plateau.step(monitored)

    def state_dict(self) -> StateDict:
        return {
            "per_batch": self.per_batch.state_dict(),
            "plateau": self.plateau.state_dict() if self.plateau else None,
        }

    def load_state_dict(self, state: StateDict) -> None:
        self.per_batch.load_state_dict(state["per_batch"])
        if self.plateau is not None:
            self.plateau.load_state_dict(state["plateau"])
