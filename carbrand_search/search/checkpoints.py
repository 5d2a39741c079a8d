"""Bounded checkpoints: the best `keep_checkpoints` complete trials keep their weights; the others'
are removed from the artifact store as better trials finish."""

import contextlib

import optuna
from optuna.artifacts.exceptions import ArtifactNotFound
from optuna.trial import FrozenTrial, TrialState

from carbrand_search.core.metric import Direction
from carbrand_search.search import record
from carbrand_search.search.storage import ArtifactStore
from carbrand_search.search.study import best_trials, trials


class CheckpointKeeper:
    """Optuna callback, run after each finished trial: remove the weights of every complete
    trial outside the best `keep` (0 keeps them all). Workers race harmlessly: a checkpoint
    another worker removed first is simply gone."""

    def __init__(self, artifacts: ArtifactStore, keep: int, direction: Direction) -> None:
        self.artifacts, self.keep, self.direction = artifacts, keep, direction
        self.removed: set[str] = set()

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        if self.keep == 0 or trial.state != TrialState.COMPLETE:
            return
        for beyond in best_trials(trials(study), self.direction)[self.keep :]:
            checkpoint = record.read(beyond).checkpoint
            if checkpoint is not None and checkpoint not in self.removed:
                with contextlib.suppress(ArtifactNotFound):
                    self.artifacts.remove(checkpoint)
                self.removed.add(checkpoint)
