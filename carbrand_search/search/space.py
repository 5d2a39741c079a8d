"""The only place that calls `trial.suggest_*`: study-file space → plain parameter values."""

import json
from collections.abc import Mapping
from typing import Any

import optuna

from carbrand_search.search.spec import ParamSpec, StudySpec


def _label(choice: Any) -> Any:
    # Optuna stores only None/bool/int/float/str choices; list-valued ones (filters per block)
    # are stored as their JSON text and decoded back by `decode`.
    return json.dumps(list(choice)) if isinstance(choice, tuple) else choice


def suggest(trial: optuna.Trial, param: ParamSpec) -> Any:
    """Sample one parameter and return its plain value."""
    if param.choices:
        label = trial.suggest_categorical(param.key, [_label(c) for c in param.choices])
        return decode_value(param, label)
    assert param.low is not None and param.high is not None
    if param.is_int:
        step = int(param.step) if param.step is not None else 1
        return trial.suggest_int(
            param.key, int(param.low), int(param.high), step=step, log=param.log
        )  # type: ignore[arg-type]
    return trial.suggest_float(param.key, param.low, param.high, step=param.step, log=param.log)  # type: ignore[arg-type]


def decode_value(param: ParamSpec, stored: Any) -> Any:
    """A value as Optuna stores it → the plain value (tuples for list-valued choices)."""
    if param.choices and isinstance(param.choices[0], tuple):
        return tuple(json.loads(stored))
    return stored


def sample(trial: optuna.Trial, spec: StudySpec) -> dict[str, Any]:
    """Sample the space of `spec` → {dotted key: value}: model.name first where it is searched,
    then only the model settings of the family it chose (Optuna's define-by-run)."""
    values: dict[str, Any] = {}
    for param in spec.space:
        if spec.applies(param, values.get("model.name", spec.base.model.name)):
            values[param.key] = suggest(trial, param)
    return values


def encode(values: Mapping[str, Any]) -> dict[str, Any]:
    """Plain values → the form Optuna stores (what `enqueue_trial` takes)."""
    return {key: _label(value) for key, value in values.items()}


def fits(param: ParamSpec, value: Any) -> bool:
    """Whether plain `value` is one this parameter's range or choices can produce."""
    if param.choices:
        return value in param.choices
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    if param.is_int and not float(value).is_integer():
        return False
    assert param.low is not None and param.high is not None
    if not param.low <= value <= param.high:
        return False
    if param.step is not None:
        steps = (value - param.low) / param.step
        return abs(steps - round(steps)) < 1e-8
    return True


def decode(spec: StudySpec, stored: Mapping[str, Any]) -> dict[str, Any]:
    """A finished trial's stored params → the plain values `spec.resolve` takes."""
    by_key = {p.key: p for p in spec.space}
    return {k: decode_value(by_key[k], v) if k in by_key else v for k, v in stored.items()}
