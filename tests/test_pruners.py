"""The collapse pruner, in Optuna's style: an in-memory study, reported values, asserted decisions."""

import math

import optuna
import pytest

from carbrand_search.pruners import EPOCHS_ATTR, CollapsePruner, collapse_reason, make_pruner
from carbrand_search.spec import PrunerConfig

CFG = PrunerConfig(warmup_epochs=1, max_top_class_share=0.9, loss_tolerance=0.02, patience=2)


def epoch(top: float = 0.2, ratio: float = 0.7, loss: float = 1.0) -> dict[str, float]:
    return {"top_class_share": top, "loss_ratio": ratio, "val_loss": loss, "train_loss": loss}


def test_healthy_trial_is_not_pruned() -> None:
    assert collapse_reason(CFG, [epoch(), epoch(), epoch()]) is None


def test_one_class_predictions_prune_after_warmup_only() -> None:
    assert collapse_reason(CFG, [epoch(top=1.0)]) is None  # epoch 1 is warm-up
    reason = collapse_reason(CFG, [epoch(top=1.0), epoch(top=0.95, ratio=0.99)])
    assert reason == {"rule": "one-class", "epoch": 2, "top_class_share": 0.95, "loss_ratio": 0.99}


def test_loss_at_chance_needs_patience_epochs_after_warmup() -> None:
    assert collapse_reason(CFG, [epoch(ratio=1.0), epoch(ratio=1.01)]) is None  # 1 past warm-up
    reason = collapse_reason(CFG, [epoch(ratio=1.0), epoch(ratio=1.01), epoch(ratio=0.99)])
    assert reason is not None and reason["rule"] == "chance-loss" and reason["epoch"] == 3
    assert collapse_reason(CFG, [epoch(), epoch(ratio=1.01), epoch(ratio=0.9)]) is None


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_divergence_prunes_even_in_warmup(bad: float) -> None:
    reason = collapse_reason(CFG, [epoch(loss=bad)])
    assert reason is not None and reason["rule"] == "diverged" and reason["epoch"] == 1


def test_collapse_off_still_catches_divergence() -> None:
    off = PrunerConfig(collapse=False)
    assert collapse_reason(off, [epoch(top=1.0)] * 4) is None
    assert collapse_reason(off, [epoch(loss=math.nan)]) is not None


def _trial_with(study: optuna.Study, epochs: list[dict[str, float]], value: float) -> optuna.Trial:
    trial = study.ask()
    trial.set_user_attr(EPOCHS_ATTR, epochs)
    for step in range(1, len(epochs) + 1):
        trial.report(value, step)
    return trial


def test_pruner_in_a_study() -> None:
    study = optuna.create_study(direction="maximize", pruner=CollapsePruner(CFG))
    assert _trial_with(study, [epoch(), epoch(top=0.99)], 0.1).should_prune()
    assert not _trial_with(study, [epoch(), epoch()], 0.5).should_prune()


def test_median_pruner_combines() -> None:
    pruner = make_pruner(PrunerConfig(warmup_epochs=0, optuna="median"))
    study = optuna.create_study(direction="maximize", pruner=pruner)
    for _ in range(5):  # MedianPruner needs n_startup_trials finished trials
        trial = _trial_with(study, [epoch(), epoch()], 0.8)
        study.tell(trial, 0.8)
    assert _trial_with(study, [epoch(), epoch()], 0.1).should_prune()  # healthy but poor
    assert not _trial_with(study, [epoch(), epoch()], 0.9).should_prune()


def test_hyperband_is_built() -> None:
    pruner = make_pruner(PrunerConfig(optuna="hyperband"))
    assert isinstance(pruner.inner, optuna.pruners.HyperbandPruner)
    assert make_pruner(PrunerConfig(optuna="none")).inner is None


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"patience": 0}, "patience"),
        ({"max_top_class_share": 1.5}, "max_top_class_share"),
        ({"loss_tolerance": -0.1}, "loss_tolerance"),
    ],
)
def test_bad_settings_are_named(kwargs: dict[str, float], key: str) -> None:
    with pytest.raises(ValueError, match=rf"pruner\.{key}"):
        PrunerConfig(**kwargs)  # type: ignore[arg-type]
