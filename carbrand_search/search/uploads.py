"""A trial's artifacts (its best weights, its pictures): written to the store as they are made,
listed on the trial, where optuna-dashboard and `report` find them, only once it ends complete
or pruned. A trial that fails half-way (a full disk) leaves neither files nor listings behind.

Optuna's `upload_artifact` lists an artifact on the trial before writing it, so a write that
fails leaves a listing of a file that does not exist; here the order is the other way round,
with Optuna's own listing format (its `ArtifactMeta` under its attribute prefix)."""

import contextlib
import json
import mimetypes
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

import optuna
from optuna.artifacts._upload import ARTIFACTS_ATTR_PREFIX, DEFAULT_MIME_TYPE, ArtifactMeta

from carbrand_search.search.failures import StoreUnwritable
from carbrand_search.search.storage import ArtifactStore


@dataclass
class TrialUploads:
    artifacts: ArtifactStore
    trial: optuna.Trial
    written: list[ArtifactMeta] = field(default_factory=list)

    def upload(self, path: Path) -> str:
        """Write `path` to the store; its artifact id. Listed on the trial by `publish`."""
        artifact_id = str(uuid.uuid4())
        mimetype, encoding = mimetypes.guess_type(path.name)
        try:
            with path.open("rb") as body:
                self.artifacts.write(artifact_id, body)
        except OSError as e:
            with contextlib.suppress(Exception):  # a partial file, if the store left one
                self.artifacts.remove(artifact_id)
            raise StoreUnwritable(f"cannot write {path.name} to the artifact store: {e}") from e
        self.written.append(
            ArtifactMeta(artifact_id, path.name, mimetype or DEFAULT_MIME_TYPE, encoding)
        )
        return artifact_id

    def publish(self) -> None:
        """List what was written on the trial (it ended complete or pruned)."""
        storage = self.trial.storage
        for meta in self.written:
            key = ARTIFACTS_ATTR_PREFIX + meta.artifact_id
            storage.set_trial_system_attr(self.trial._trial_id, key, json.dumps(asdict(meta)))
        self.written = []

    def discard(self) -> None:
        """Remove what was written (the trial failed): nothing of it is left in the store."""
        for meta in self.written:
            with contextlib.suppress(Exception):  # already gone, or the store is down for good
                self.artifacts.remove(meta.artifact_id)
        self.written = []
