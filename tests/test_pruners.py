"""The collapse pruner, in Optuna's style: an in-memory study, reported values, asserted decisions."""

import math

import optuna
import pytest

from carbrand_search.core.config import PrunerConfig
from carbrand_search.core.metric import EpochMetrics
from carbrand_search.search import record
from carbrand_search.search.pruners import (
    CollapsePruner,
    collapse_reason,
    make_pruner,
)
from carbrand_search.search.record import PruneReason

CFG = PrunerConfig(warmup_epochs=1, max_top_class_share=0.9, loss_tolerance=0.02, patience=2)


def epoch_metrics(**values: float) -> EpochMetrics:
    """One epoch's metrics: `values`, and 0 (epoch 1) for every other field."""
    fields = dict.fromkeys(EpochMetrics.__dataclass_fields__, 0.0) | {"epoch": 1}
    return EpochMetrics(**(fields | values))  # type: ignore[arg-type]


def epoch(top: float = 0.2, ratio: float = 0.7, loss: float = 1.0) -> EpochMetrics:
    return epoch_metrics(top_class_share=top, loss_ratio=ratio, val_loss=loss, train_loss=loss)


def test_healthy_trial_is_not_pruned() -> None:
    assert collapse_reason(CFG, [epoch(), epoch(), epoch()]) is None


def test_one_class_predictions_prune_after_warmup_and_patience_only() -> None:
    assert collapse_reason(CFG, [epoch(top=1.0)]) is None  # epoch 1 is warm-up
    assert collapse_reason(CFG, [epoch(top=1.0), epoch(top=0.95)]) is None  # 1 past warm-up
    # One epoch on one class, then spread again: a spike, not a collapse.
    assert collapse_reason(CFG, [epoch(), epoch(top=0.96), epoch(top=0.5)]) is None
    reason = collapse_reason(CFG, [epoch(top=1.0), epoch(top=0.96), epoch(top=0.95, ratio=0.99)])
    assert reason == PruneReason("one-class", 3, {"top_class_share": 0.95, "loss_ratio": 0.99})
    # Stored as one flat table, and read back as it was written.
    assert PruneReason.from_dict(reason.to_dict()) == reason
    assert str(reason) == "rule=one-class, epoch=3, top_class_share=0.95, loss_ratio=0.99"


def test_loss_at_chance_needs_patience_epochs_after_warmup() -> None:
    assert collapse_reason(CFG, [epoch(ratio=1.0), epoch(ratio=1.01)]) is None  # 1 past warm-up
    reason = collapse_reason(CFG, [epoch(ratio=1.0), epoch(ratio=1.01), epoch(ratio=0.99)])
    assert reason is not None and (reason.rule, reason.epoch) == ("chance-loss", 3)
    assert collapse_reason(CFG, [epoch(), epoch(ratio=1.01), epoch(ratio=0.9)]) is None


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_divergence_prunes_even_in_warmup(bad: float) -> None:
    reason = collapse_reason(CFG, [epoch(loss=bad)])
    assert reason is not None and (reason.rule, reason.epoch) == ("diverged", 1)


def test_collapse_off_still_catches_divergence() -> None:
    off = PrunerConfig(collapse=False)
    assert collapse_reason(off, [epoch(top=1.0)] * 4) is None
    assert collapse_reason(off, [epoch(loss=math.nan)]) is not None


def _trial_with(study: optuna.Study, epochs: list[EpochMetrics], value: float) -> optuna.Trial:
    trial = study.ask()
    record.epochs_done(trial, epochs)
    for step in range(1, len(epochs) + 1):
        trial.report(value, step)
    return trial


def test_pruner_in_a_study() -> None:
    study = optuna.create_study(direction="maximize", pruner=CollapsePruner(CFG))
    assert _trial_with(study, [epoch(), epoch(top=0.99), epoch(top=0.99)], 0.1).should_prune()
    assert not _trial_with(study, [epoch(), epoch(), epoch()], 0.5).should_prune()


def test_median_pruner_combines() -> None:
    pruner = make_pruner(PrunerConfig(warmup_epochs=0, optuna="median"))
    study = optuna.create_study(direction="maximize", pruner=pruner)
    for _ in range(5):  # MedianPruner needs n_startup_trials finished trials
        trial = _trial_with(study, [epoch(), epoch()], 0.8)
        study.tell(trial, 0.8)
    assert _trial_with(study, [epoch(), epoch()], 0.1).should_prune()  # healthy but poor
    assert not _trial_with(study, [epoch(), epoch()], 0.9).should_prune()


def _finished(study: optuna.Study, n: int, value: float, epochs: int = 4) -> None:
    """`n` finished trials; each asked the pruner every epoch, as real trials do (successive
    halving records a trial's rung values only when asked)."""
    for _ in range(n):
        trial = study.ask()
        record.epochs_done(trial, [epoch()] * epochs)
        for step in range(1, epochs + 1):
            trial.report(value, step)
            assert not trial.should_prune()
        study.tell(trial, value)


# Epochs are reported to Optuna from 1. With warm-up W, no rule may prune at epochs 1..W and
# every rule may from W + 1 (Optuna's MedianPruner counts `n_warmup_steps` in steps, so a bare
# `n_warmup_steps=W` would prune at epoch W).
WARMUP_TABLE = [
    (0, 1, True),
    (1, 1, False),
    (1, 2, True),
    (2, 1, False),
    (2, 2, False),
    (2, 3, True),
    (3, 3, False),
    (3, 4, True),
]


@pytest.mark.parametrize(("warmup", "at_epoch", "prunable"), WARMUP_TABLE)
def test_median_rule_respects_warmup(warmup: int, at_epoch: int, prunable: bool) -> None:
    pruner = make_pruner(PrunerConfig(warmup_epochs=warmup, optuna="median", collapse=False))
    study = optuna.create_study(direction="maximize", pruner=pruner)
    _finished(study, 5, 0.8)
    poor = _trial_with(study, [epoch()] * at_epoch, 0.1)
    assert poor.should_prune() is prunable


@pytest.mark.parametrize(("warmup", "at_epoch", "prunable"), WARMUP_TABLE)
def test_collapse_rule_respects_warmup(warmup: int, at_epoch: int, prunable: bool) -> None:
    # patience 1: one collapsed epoch past the warm-up is enough (the default waits for 2).
    cfg = PrunerConfig(warmup_epochs=warmup, optuna="none", patience=1)
    study = optuna.create_study(direction="maximize", pruner=make_pruner(cfg))
    collapsed = _trial_with(study, [epoch(top=1.0)] * at_epoch, 0.5)
    assert collapsed.should_prune() is prunable


@pytest.mark.parametrize(("warmup", "at_epoch", "prunable"), WARMUP_TABLE)
def test_successive_halving_rung_respects_warmup(
    warmup: int, at_epoch: int, prunable: bool
) -> None:
    cfg = PrunerConfig(warmup_epochs=warmup, optuna="successive_halving", collapse=False)
    study = optuna.create_study(direction="maximize", pruner=make_pruner(cfg))
    _finished(study, 5, 0.8, epochs=at_epoch)
    poor = _trial_with(study, [epoch()] * at_epoch, 0.1)
    # The first rung is the first prunable epoch; before it nothing is compared.
    assert poor.should_prune() is (prunable and at_epoch == warmup + 1)


def test_hyperband_is_a_hyperband_pruner_for_tpe() -> None:
    pruner = make_pruner(PrunerConfig(optuna="hyperband", warmup_epochs=1), max_epochs=9)
    # TPESampler samples per bracket only when study.pruner is a HyperbandPruner.
    assert isinstance(pruner, optuna.pruners.HyperbandPruner)
    study = optuna.create_study(
        direction="maximize", pruner=pruner, sampler=optuna.samplers.TPESampler(seed=0)
    )
    collapsed = _trial_with(study, [epoch(top=1.0)] * 3, 0.5)
    assert collapsed.should_prune()  # collapse first, before Hyperband has any rung data

    def objective(trial: optuna.Trial) -> float:
        x = trial.suggest_float("x", 0, 1)
        for step in range(1, 10):
            record.epochs_done(trial, [epoch()] * step)
            trial.report(x * step / 9, step)
            if trial.should_prune():
                raise optuna.TrialPruned
        return x

    study.optimize(objective, n_trials=30)
    # Rungs at epochs 2 and 6 (first prunable epoch 2, reduction factor 3, at most 9 epochs).
    assert {len(t.intermediate_values) for t in study.trials if t.state.name == "PRUNED"} <= {2, 6}
    states = {t.state for t in study.trials}
    assert optuna.trial.TrialState.PRUNED in states
    assert optuna.trial.TrialState.COMPLETE in states


def test_patient_median_waits_for_a_stalled_trial() -> None:
    cfg = PrunerConfig(warmup_epochs=0, optuna="median", optuna_patience=2, collapse=False)
    pruner = make_pruner(cfg)
    assert isinstance(pruner, CollapsePruner)
    assert isinstance(pruner.inner, optuna.pruners.PatientPruner)
    study = optuna.create_study(direction="maximize", pruner=pruner)
    _finished(study, 5, 0.8)
    improving = study.ask()
    record.epochs_done(improving, [])
    for step, value in enumerate([0.1, 0.2, 0.3, 0.4], start=1):
        improving.report(value, step)
        assert not improving.should_prune()  # below the median, but still improving
    falling = study.ask()
    record.epochs_done(falling, [])
    decisions = []
    for step, value in enumerate([0.3, 0.2, 0.1, 0.1], start=1):
        falling.report(value, step)
        decisions.append(falling.should_prune())
    # Pruned once its last patience + 1 epochs all stayed below its earlier best.
    assert decisions == [False, False, False, True]


def test_none_has_no_inner_pruner() -> None:
    pruner = make_pruner(PrunerConfig(optuna="none"))
    assert isinstance(pruner, CollapsePruner) and pruner.inner is None


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"patience": 0}, "patience"),
        ({"max_top_class_share": 1.5}, "max_top_class_share"),
        ({"loss_tolerance": -0.1}, "loss_tolerance"),
        ({"optuna_patience": -1}, "optuna_patience"),
        ({"reduction_factor": 1}, "reduction_factor"),
    ],
)
def test_bad_settings_are_named(kwargs: dict[str, float], key: str) -> None:
    with pytest.raises(ValueError, match=rf"pruner\.{key}"):
        PrunerConfig(**kwargs)  # type: ignore[arg-type]
