"""What a finished training run leaves on disk: its weights, config, metrics and study file."""

import json
from pathlib import Path

from safetensors.torch import save_file

from carbrand_search.core.config import RunConfig
from carbrand_search.core.folders import refuse_non_empty
from carbrand_search.training.fit import FitResult


def prepare_out_dir(out: Path) -> None:
    """Create `out`; refuse a non-empty one so nothing stored earlier is overwritten."""
    refuse_non_empty(out, "output folder")
    out.mkdir(parents=True, exist_ok=True)


def save_run(
    out: Path, study_text: str, config: RunConfig, classes: tuple[str, ...], result: FitResult
) -> None:
    """Write model.safetensors, config.json, metrics.json and the study file used."""
    save_file(
        {k: v.contiguous() for k, v in result.best_state.items()}, str(out / "model.safetensors")
    )
    (out / "config.json").write_text(
        json.dumps({"config": config.to_dict(), "classes": list(classes)}, indent=2)
    )
    metrics = {
        "best_epoch": result.best_epoch,
        "best": result.best.to_dict(),
        "history": [m.to_dict() for m in result.history],
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    (out / "study.toml").write_text(study_text)
