"""Each trial also recorded where people already look: an MLflow run (parameters, per-epoch
metrics, the dashboard's pictures, how it ended and why) and TensorBoard event files. Both are
optional (`pip install 'carbrand-search[tracking]'`) and set in the study file's [tracking]."""

import json
import math
import os
import time
from pathlib import Path
from typing import Any

from carbrand_search.core.config import TrackingConfig
from carbrand_search.core.errors import UserError, first_line
from carbrand_search.core.metric import EpochMetrics
from carbrand_search.search.record import PruneReason
from carbrand_search.search.storage import mask

# MLflow ended runs as FINISHED, KILLED or FAILED; Optuna's states map onto them.
RUN_STATUS = {"COMPLETE": "FINISHED", "PRUNED": "KILLED", "FAIL": "FAILED"}


def _mlflow_client(uri: str) -> Any:
    if uri.startswith("file:"):
        # MLflow keeps its file store in maintenance mode and refuses it unless asked; it is the
        # one local store that several worker processes can write at once without locking.
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    try:
        from mlflow.tracking import MlflowClient
    except ImportError:
        raise UserError(
            "[tracking] mlflow = true needs MLflow: pip install 'carbrand-search[tracking]'"
        ) from None
    return MlflowClient(tracking_uri=uri)


def _experiment_id(client: Any, name: str) -> str:
    found = client.get_experiment_by_name(name)
    if found is not None:
        return str(found.experiment_id)
    try:
        return str(client.create_experiment(name))
    except Exception:  # another worker created it first
        return str(client.get_experiment_by_name(name).experiment_id)


def check_tracking(cfg: TrackingConfig, study: str) -> None:
    """Fail before any trial when the tracking backends are missing or unreachable."""
    if cfg.mlflow:
        try:
            _experiment_id(_mlflow_client(cfg.mlflow_uri), cfg.experiment or study)
        except UserError:
            raise
        except Exception as e:
            # The URI (a database or an HTTP server) may hold a password; so may the message.
            uri = mask(cfg.mlflow_uri)
            reason = first_line(e).replace(cfg.mlflow_uri, uri)
            raise UserError(f"[tracking] mlflow_uri {uri}: {reason}") from e
    if cfg.tensorboard:
        try:
            from torch.utils.tensorboard import SummaryWriter  # noqa: F401
        except ImportError:
            raise UserError(
                "[tracking] tensorboard needs TensorBoard: pip install 'carbrand-search[tracking]'"
            ) from None


class TrialTracker:
    """One trial's MLflow run and TensorBoard writer (either may be off)."""

    def __init__(
        self, cfg: TrackingConfig, study: str, number: int, params: dict[str, Any]
    ) -> None:
        self.client: Any = None
        self.run_id = ""
        self.writer: Any = None
        if cfg.mlflow:
            from mlflow.entities import Param

            self.client = _mlflow_client(cfg.mlflow_uri)
            run = self.client.create_run(
                _experiment_id(self.client, cfg.experiment or study),
                run_name=f"trial-{number}",
                tags={"optuna.study": study, "optuna.trial": str(number)},
            )
            self.run_id = run.info.run_id
            self.client.log_batch(
                self.run_id, params=[Param(k, str(v)) for k, v in params.items()]
            )
        if cfg.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(Path(cfg.tensorboard) / study / f"trial-{number}"))
            self.writer.add_text("params", json.dumps(params, indent=1, default=str))

    def epoch(self, metrics: EpochMetrics) -> None:
        """One epoch's metrics, at step = epoch (non-finite values are left out)."""
        step = metrics.epoch
        values = {
            k: float(v)
            for k, v in metrics.to_dict().items()
            if k != "epoch" and math.isfinite(float(v))
        }
        if self.client is not None:
            from mlflow.entities import Metric

            now = int(time.time() * 1000)
            self.client.log_batch(
                self.run_id, metrics=[Metric(k, v, now, step) for k, v in values.items()]
            )
        if self.writer is not None:
            for k, v in values.items():
                self.writer.add_scalar(k, v, step)
            self.writer.flush()

    def pictures(self, paths: list[Path]) -> None:
        """The same pictures the dashboard shows, as MLflow artifacts."""
        if self.client is not None:
            for path in paths:
                self.client.log_artifact(self.run_id, str(path))

    def end(self, state: str, reason: PruneReason | str | None = None) -> None:
        """Close the run: Optuna's state, and why a trial was pruned or failed."""
        if self.client is not None:
            self.client.set_tag(self.run_id, "optuna.state", state)
            if reason is not None:
                key = "prune_reason" if state == "PRUNED" else "fail_reason"
                text = reason if isinstance(reason, str) else json.dumps(reason.to_dict())
                self.client.set_tag(self.run_id, key, text)
            self.client.set_terminated(self.run_id, RUN_STATUS[state])
        if self.writer is not None:
            self.writer.close()
