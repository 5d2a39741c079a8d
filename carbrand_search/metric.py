"""The metrics a study can optimise, and the one rule for which way each is better."""

from typing import Literal

Metric = Literal["val_macro_f1", "val_accuracy", "val_loss"]
Direction = Literal["minimize", "maximize"]

_LOWER_IS_BETTER = frozenset({"val_loss"})


def direction(metric: str) -> Direction:
    """Optuna's study direction for `metric`."""
    return "minimize" if metric in _LOWER_IS_BETTER else "maximize"


def sign(metric: str) -> float:
    """+1 where higher is better, -1 where lower is: `sign * value` is always maximised."""
    return -1.0 if metric in _LOWER_IS_BETTER else 1.0


def is_better(metric: str, value: float, than: float) -> bool:
    """Whether `value` beats `than` on `metric`."""
    return sign(metric) * value > sign(metric) * than
