"""What is shown about a study: the collapse tally, optuna-dashboard's note and `status`'s
overview (inside search/, since `run` writes the note and search must not import reports)."""

from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

from carbrand_search.search import record
from carbrand_search.search.budget import finished
from carbrand_search.search.storage import trial_counts
from carbrand_search.search.study import best_trials, budget, stored_data, trials

if TYPE_CHECKING:
    from carbrand_search.search.spec import StudySpec


@dataclass(frozen=True)
class CollapseTally:
    """How many trials were pruned, by which rule, at which epoch, with what loss/ln(C)."""

    pruned: int
    by_rule: dict[str, int]
    epochs: list[int]
    loss_ratio_mean: float | None


def collapse_tally(found: list[FrozenTrial]) -> CollapseTally:
    """How many trials were pruned, by which rule, at which epoch, with what loss/ln(C)."""
    reasons = [r for t in found if (r := record.read(t).prune_reason) is not None]
    ratios = [ratio for r in reasons if isinstance(ratio := r.readings.get("loss_ratio"), float)]
    return CollapseTally(
        pruned=sum(t.state == TrialState.PRUNED for t in found),
        by_rule=dict(Counter(r.rule for r in reasons)),
        epochs=sorted(r.epoch for r in reasons),
        loss_ratio_mean=round(float(np.mean(ratios)), 4) if ratios else None,
    )


def dashboard_note(study: optuna.Study, spec: "StudySpec") -> str:
    """The study's note for optuna-dashboard (Markdown): what it is, its data, how far it got,
    its best trial and how many trials collapsed."""
    found = trials(study)
    states = Counter(t.state for t in found)
    data = stored_data(study)
    ranked = best_trials(found, spec.direction)
    best = (
        f"trial {ranked[0].number}, {spec.base.train.monitor} {ranked[0].value:.4f}"
        if ranked
        else "none complete yet"
    )
    tally = collapse_tally(found)
    rules = ", ".join(f"{rule} {n}" for rule, n in tally.by_rule.items()) or "none"
    lines = [
        f"# {spec.name}",
        spec.study.description,
        f"- data: {data.given} ({data.resolved})" if data else "- data: not recorded",
        f"- model: {' or '.join(spec.families)}; {len(spec.space)} searched parameters",
        f"- trials: {finished(found)}/{budget(study, default=len(found))} finished "
        f"({states[TrialState.COMPLETE]} complete, {states[TrialState.PRUNED]} pruned), "
        f"{states[TrialState.FAIL]} failed",
        f"- best: {best}",
        f"- collapse tally: {tally.pruned} pruned (rules: {rules}; epochs {tally.epochs or '-'})",
    ]
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class StudyOverview:
    """What `status` shows: trials per state, the best trial, and some trials in full."""

    counts: Counter[TrialState]
    best: FrozenTrial | None
    shown: list[FrozenTrial]  # by number


def overview(storage: optuna.storages.BaseStorage, name: str, last: int | None) -> StudyOverview:
    """The study `name` for `status`: with `last`, only the last `last` trials and every running
    one are read in full, so a study of thousands of trials reads as fast as a small one."""
    study_id = storage.get_study_id_from_name(name)
    if last is None:
        shown = storage.get_all_trials(study_id, deepcopy=False)
        counts = Counter(t.state for t in shown)
    else:
        counts = trial_counts(storage, study_id)
        total = sum(counts.values())
        recent = [
            storage.get_trial(storage.get_trial_id_from_study_id_trial_number(study_id, n))
            for n in range(max(0, total - last), total)
        ]
        running = storage.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,))
        shown = sorted({t.number: t for t in [*running, *recent]}.values(), key=lambda t: t.number)
    best = None
    if counts[TrialState.COMPLETE]:
        best = storage.get_best_trial(study_id)
    return StudyOverview(counts, best, shown)
