"""The Optuna study as carbrand-search keeps it: created once from a study file, which it stores
with its hash and its trial budget; the rules that count trials against that budget."""

from collections.abc import Iterable, Sequence
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial, TrialState

from carbrand_search.core import metric
from carbrand_search.core.config import SamplerConfig
from carbrand_search.core.errors import UserError
from carbrand_search.search import record, space
from carbrand_search.search.pruners import make_pruner
from carbrand_search.search.spec import StudySpec, spec_from_text

TEXT_ATTR = "study_text"  # the study file's text, as it was when the study was created
HASH_ATTR = "study_hash"  # its SHA-256
BUDGET_ATTR = "n_trials"  # finished trials the study runs to, across workers and re-runs

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)  # count toward the budget
HELD = (*FINISHED, TrialState.RUNNING, TrialState.WAITING)  # hold a place in it (FAIL does not)


def make_sampler(cfg: SamplerConfig, offset: int) -> optuna.samplers.BaseSampler:
    """The study file's sampler; each worker gets its own seed so they do not sample alike."""
    seed = cfg.seed + offset
    if cfg.name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if cfg.name == "gp":
        return optuna.samplers.GPSampler(seed=seed)
    # Constant liar: a worker's proposals treat the trials others are running as already bad,
    # so parallel workers do not all sample the same promising corner.
    return optuna.samplers.TPESampler(seed=seed, constant_liar=True)


def stored_spec(study: optuna.Study) -> StudySpec:
    """The study file as stored in the study when it was created, checked against its stored
    hash: whoever can write to the database must not change what workers train unnoticed."""
    text, stored_hash = study.user_attrs.get(TEXT_ATTR), study.user_attrs.get(HASH_ATTR)
    if not isinstance(text, str) or not isinstance(stored_hash, str):
        raise UserError(f"study '{study.study_name}' has no stored study file; create it with run")
    spec = spec_from_text(text, Path(f"{study.study_name}.toml"))
    if spec.text_hash != stored_hash:
        raise UserError(
            f"study '{study.study_name}': its stored study file does not match its stored hash "
            f"({spec.text_hash[:12]} vs {stored_hash[:12]}); refusing to run a changed study"
        )
    return spec


def ensure_study(
    spec: StudySpec, storage: optuna.storages.BaseStorage, n_trials: int | None
) -> optuna.Study:
    """Create the study once or load it; a different study file under the same name is refused.
    `n_trials` (None: keep the stored budget, or the file's for a new study) sets the budget."""
    study = optuna.create_study(
        study_name=spec.name,
        storage=storage,
        direction=spec.direction,
        sampler=make_sampler(spec.sampler, 0),
        pruner=make_pruner(spec.pruner, spec.max_epochs),
        load_if_exists=True,
    )
    stored_hash = study.user_attrs.get(HASH_ATTR)
    if stored_hash is None:
        study.set_user_attr(TEXT_ATTR, spec.text)
        study.set_user_attr(HASH_ATTR, spec.text_hash)
        # The study file's defaults (the seed's recipe) are its first trial.
        study.enqueue_trial(
            space.encode(spec.defaults()), user_attrs=record.warm_start("defaults"),
            skip_if_exists=True,
        )  # fmt: skip
    elif stored_hash != spec.text_hash:
        raise UserError(
            f"study '{spec.name}' in this storage was created from a different study file "
            f"(hash {stored_hash[:12]} vs {spec.text_hash[:12]} of {spec.path}); "
            "restore that file or give the study a new name"
        )
    else:
        stored_spec(study)  # the text workers will read must still match that hash
    if n_trials is not None or BUDGET_ATTR not in study.user_attrs:
        study.set_user_attr(BUDGET_ATTR, n_trials or spec.n_trials)
    return study


def budget(study: optuna.Study, default: int | None = None) -> int:
    """The study's trial budget; `default` for a study not created by carbrand-search."""
    stored = study.user_attrs.get(BUDGET_ATTR, default)
    if stored is None:
        raise UserError(f"study '{study.study_name}' has no trial budget; create it with run")
    return int(stored)


def finished(trials: Iterable[FrozenTrial]) -> int:
    """Trials that used up budget for good: complete or pruned."""
    return sum(t.state in FINISHED for t in trials)


def held(trials: Iterable[FrozenTrial], before: int | None = None) -> int:
    """Trials holding a place in the budget (finished, running or queued; a failed trial is
    retried and does not), counting only trial numbers below `before` when given."""
    return sum(t.state in HELD and (before is None or t.number < before) for t in trials)


def trials(study: optuna.Study, *states: TrialState) -> list[FrozenTrial]:
    """The study's trials (in `states`, when given), without copying them."""
    return study.get_trials(deepcopy=False, states=states or None)


def best_trials(found: Sequence[FrozenTrial], direction: metric.Direction) -> list[FrozenTrial]:
    """Complete trials with a value, best first."""
    done = [t for t in found if t.state == TrialState.COMPLETE and t.value is not None]
    return metric.best_first(done, direction, lambda t: t.value or 0.0)


def direction(study: optuna.Study) -> metric.Direction:
    """The study's direction as a study file names it."""
    return "maximize" if study.direction == optuna.study.StudyDirection.MAXIMIZE else "minimize"
