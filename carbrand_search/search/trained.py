"""A stored trial's model rebuilt from its parameters and checkpoint artifact, for reports,
predictions and teachers."""

import hashlib
import tempfile
from dataclasses import dataclass
from pathlib import Path

import optuna
from optuna.artifacts import download_artifact
from optuna.artifacts.exceptions import ArtifactNotFound
from optuna.trial import FrozenTrial
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from carbrand_search.core.config import RunConfig
from carbrand_search.core.errors import UserError, first_line
from carbrand_search.search import record, space
from carbrand_search.search.spec import StudySpec
from carbrand_search.search.storage import ArtifactStore
from carbrand_search.search.study import best_trials, stored_spec, trials
from carbrand_search.training.parts import build_model


@dataclass(frozen=True)
class TrialModel:
    """A finished trial rebuilt: its config, classes and model at the best epoch."""

    trial: FrozenTrial
    config: RunConfig
    classes: tuple[str, ...]
    model: nn.Module
    weights_sha256: str  # of the checkpoint file: names these exact weights

    def check_classes(self, found: tuple[str, ...], where: str) -> None:
        """A UserError naming `where` unless `found` are this model's classes, in its order."""
        if found == self.classes:
            return
        extra = sorted(set(found) - set(self.classes))
        missing = sorted(set(self.classes) - set(found))
        order = " (same names, another order)" if not extra and not missing else ""
        raise UserError(
            f"{where}: classes differ from those trial {self.trial.number} was trained on"
            f"{order} (not trained on: {extra or 'none'}; absent here: {missing or 'none'})"
        )


def _unloadable(
    study: optuna.Study, spec: StudySpec, trial: FrozenTrial, artifact_id: str, e: Exception
) -> UserError:
    """Why the checkpoint of `trial` cannot be loaded: removed by `keep_checkpoints`, or gone
    or corrupt."""
    kept = spec.study.keep_checkpoints
    ranked = [t.number for t in best_trials(trials(study), spec.direction)]
    if kept and trial.number in ranked[kept:]:
        return UserError(
            f"trial {trial.number}: its checkpoint was removed (the study keeps the weights "
            f"of its best {kept} trials: [study] keep_checkpoints)"
        )
    return UserError(
        f"trial {trial.number}: checkpoint artifact {artifact_id} is missing or corrupt "
        f"({first_line(e, 200)})"
    )


def load_trial_model(
    study: optuna.Study, trial: FrozenTrial, artifacts: ArtifactStore
) -> TrialModel:
    """The model of `trial` from its stored params and checkpoint artifact; clear errors."""
    spec = stored_spec(study)
    config = spec.resolve(space.decode(spec, trial.params))
    stored = record.read(trial)
    artifact_id, classes = stored.checkpoint, stored.classes
    if not artifact_id or not classes:
        raise UserError(f"trial {trial.number} of '{study.study_name}' has no checkpoint artifact")
    model = build_model(config, len(classes))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.safetensors"
        try:
            download_artifact(
                artifact_store=artifacts, artifact_id=artifact_id, file_path=str(path)
            )
            weights = load_file(str(path))
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            # RuntimeError here: weights missing, unexpected or of other shapes.
            model.load_state_dict(weights)
        # What a stored file can cause; ValueError: an id that leaves the store (`../x`),
        # refused by Optuna and by our local store.
        except (OSError, ArtifactNotFound, SafetensorError, ValueError, RuntimeError) as e:
            raise _unloadable(study, spec, trial, artifact_id, e) from e
    model.eval()
    return TrialModel(trial, config, classes, model, digest)
