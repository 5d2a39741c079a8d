"""The metrics a study can optimise, and the one rule for which way each is better."""

from collections.abc import Callable, Iterable
from typing import Literal, TypeVar

Metric = Literal["val_macro_f1", "val_accuracy", "val_loss"]
Direction = Literal["minimize", "maximize"]
T = TypeVar("T")

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


def best_first(items: Iterable[T], direction: str, value: Callable[[T], float]) -> list[T]:
    """`items` sorted best first by `value` for a study of `direction` (stable on ties)."""
    return sorted(items, key=value, reverse=direction == "maximize")
