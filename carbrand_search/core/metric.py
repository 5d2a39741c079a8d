"""The metrics a study can optimise, the one rule for which way each is better, and one
epoch's numbers as every layer passes them on."""

from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal, TypeVar

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


@dataclass(frozen=True)
class EpochMetrics:
    """One epoch's numbers; the last two are the collapse signals. Stored (trial records,
    resume points, metrics.json) as the flat table `to_dict` gives, read back by `from_dict`."""

    epoch: int  # 1-based
    train_loss: float
    val_loss: float
    val_accuracy: float
    val_macro_f1: float
    top_class_share: float  # share of val predictions in the most-predicted class
    loss_ratio: float  # val loss / ln(num_classes); ≈ 1 means the model learned nothing
    lr: float
    seconds: float

    def value(self, metric: str) -> float:
        """The number a study monitors, by its name (`val_macro_f1` …)."""
        return float(getattr(self, metric))

    def to_dict(self) -> dict[str, float]:
        return asdict(self)

    @classmethod
    def from_dict(cls, stored: Mapping[str, Any]) -> "EpochMetrics":
        """ValueError unless `stored` has exactly this table's names, each a number."""
        if not is_table(stored):
            raise ValueError(f"an epoch's metrics are {{{', '.join(EPOCH_FIELDS)}}}, numbers")
        return cls(**{**stored, "epoch": int(stored["epoch"])})


EPOCH_FIELDS = tuple(f.name for f in fields(EpochMetrics))


def is_table(stored: Any) -> bool:
    """Whether `stored` is what `EpochMetrics.to_dict` writes."""
    return (
        isinstance(stored, Mapping)
        and tuple(sorted(stored)) == tuple(sorted(EPOCH_FIELDS))
        and all(isinstance(v, int | float) and not isinstance(v, bool) for v in stored.values())
    )
