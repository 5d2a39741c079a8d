"""The study file's sampler, seeded per trial: a study is reproducible trial by trial, and no
two workers, runs or resumed runs draw from the same random stream."""

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import optuna
from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler
from optuna.study import Study
from optuna.trial import FrozenTrial, TrialState

from carbrand_search.core.config import SamplerConfig


def make_sampler(cfg: SamplerConfig) -> BaseSampler:
    """The study file's sampler, its random stream seeded by the study seed and each trial's
    number."""
    if cfg.name == "random":
        return TrialSeeded(cfg.seed, lambda seed: optuna.samplers.RandomSampler(seed=seed))
    if cfg.name == "gp":
        return TrialSeeded(cfg.seed, lambda seed: optuna.samplers.GPSampler(seed=seed))
    # Constant liar: a worker's proposals treat the trials others are running as already bad,
    # so parallel workers do not all sample the same promising corner.
    return TrialSeeded(
        cfg.seed, lambda seed: optuna.samplers.TPESampler(seed=seed, constant_liar=True)
    )


def trial_seed(study_seed: int, number: int) -> int:
    """The seed of trial `number`'s sampler: unique per trial, the same on every machine."""
    return int(np.random.SeedSequence([study_seed, number]).generate_state(1)[0])


class TrialSeeded(BaseSampler):
    """Samples each trial with a fresh sampler seeded by (study seed, trial number).

    A sampler seeded once per worker repeats itself: every `run` restarts the same stream, so
    extending a study, resuming it or starting a second `run` proposes the parameter sets it
    already has. Trial numbers are unique within a study, so seeding by them never repeats, and
    trial N of a study draws the same way whoever runs it. TPE, GP and random sampling keep no
    state between trials beyond their random stream (they read the study's trials each time),
    so a sampler per trial loses nothing."""

    def __init__(self, seed: int, build: Callable[[int], BaseSampler]) -> None:
        self._seed = seed
        self._build = build
        self._current: tuple[int, BaseSampler] | None = None

    def _for(self, trial: FrozenTrial) -> BaseSampler:
        if self._current is None or self._current[0] != trial.number:
            self._current = (trial.number, self._build(trial_seed(self._seed, trial.number)))
        return self._current[1]

    def infer_relative_search_space(
        self, study: Study, trial: FrozenTrial
    ) -> dict[str, BaseDistribution]:
        return self._for(trial).infer_relative_search_space(study, trial)

    def sample_relative(
        self, study: Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        return self._for(trial).sample_relative(study, trial, search_space)

    def sample_independent(
        self,
        study: Study,
        trial: FrozenTrial,
        param_name: str,
        param_distribution: BaseDistribution,
    ) -> Any:
        return self._for(trial).sample_independent(study, trial, param_name, param_distribution)

    def before_trial(self, study: Study, trial: FrozenTrial) -> None:
        self._for(trial).before_trial(study, trial)

    def after_trial(
        self,
        study: Study,
        trial: FrozenTrial,
        state: TrialState,
        values: Sequence[float] | None,
    ) -> None:
        self._for(trial).after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        """Nothing to do: each trial's stream is fixed by its number. (Optuna calls this when
        `optimize` runs `n_jobs` threads; a worker here runs one trial at a time.)"""
