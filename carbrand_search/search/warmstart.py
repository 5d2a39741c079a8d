"""Warm start from another study: `run --from` enqueues its best parameter sets that this
study's space can produce (a new study's own first trial, its defaults, is queued by
`study.ensure_study`)."""

from dataclasses import dataclass
from typing import Any

import optuna

from carbrand_search.core.errors import UserError
from carbrand_search.search import record, space
from carbrand_search.search.spec import StudySpec
from carbrand_search.search.study import best_trials


@dataclass(frozen=True)
class WarmStart:
    """What `run --from` queued, and what it left out and why."""

    enqueued: tuple[int, ...]  # trial numbers in the other study
    skipped: tuple[tuple[int, str], ...]  # (trial number, why it does not fit this space)


def invalid_reason(spec: StudySpec, values: dict[str, Any]) -> str | None:
    """Why `values` (plain, dotted keys) is not a point of `spec`'s space, or None."""
    by_key = {p.key: p for p in spec.space}
    for key, value in values.items():
        if key not in by_key:
            return f"{key} is not searched here"
        if not space.fits(by_key[key], value):
            return f"{key}={value!r} is outside this space"
    family = values.get("model.name")
    try:
        spec.resolve({**spec.defaults(family if family in spec.families else None), **values})
    except (ValueError, UserError) as e:
        return str(e)
    return None


def _params_held(study: optuna.Study) -> list[dict[str, Any]]:
    """The parameters of every trial in `study`, queued ones included."""
    return [
        {**t.system_attrs.get("fixed_params", {}), **t.params}
        for t in study.get_trials(deepcopy=False)
    ]


def enqueue_from(
    study: optuna.Study,
    spec: StudySpec,
    source: optuna.Study,
    source_spec: StudySpec,
    top: int,
) -> WarmStart:
    """Queue the `top` best parameter sets of `source` that fit `spec`'s space, best first,
    naming those passed over; parameters this space searches but `source` did not are left to
    the sampler."""
    enqueued: list[int] = []
    skipped: list[tuple[int, str]] = []
    held = _params_held(study)  # read once; what this call queues is added as it goes
    for trial in best_trials(source.get_trials(deepcopy=False), source_spec.direction):
        if len(enqueued) == top:
            break
        values = space.decode(source_spec, trial.params)
        reason = invalid_reason(spec, values)
        params = space.encode(values)
        if reason is None and params in held:
            reason = "already in this study"
        if reason is not None:
            skipped.append((trial.number, reason))
            continue
        held.append(params)
        study.enqueue_trial(
            params, user_attrs=record.warm_start(f"{source.study_name} trial {trial.number}")
        )
        enqueued.append(trial.number)
    return WarmStart(tuple(enqueued), tuple(skipped))
