"""Helpers shared by the bench scripts: a demo dataset, a study file, one timed `run`."""

import json
import platform
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import optuna
from optuna.trial import TrialState

from carbrand_search.core.metric import EpochMetrics
from carbrand_search.data.demo import DemoSpec, write_demo
from carbrand_search.data.imagefolder import scan
from carbrand_search.search import record
from carbrand_search.search.spec import load_spec
from carbrand_search.search.storage import open_storage
from carbrand_search.training.parts import load_split


def machine() -> str:
    """CPU model and core count (or GPU name) for RESULTS.md."""
    import os

    import torch

    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)} ×{torch.cuda.device_count()}"
    model = platform.processor() or "cpu"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        names = [
            ln.split(":", 1)[1].strip()
            for ln in cpuinfo.read_text().splitlines()
            if ln.startswith("model name")
        ]
        model = names[0] if names else model
    return f"{model}, {os.cpu_count()} cores"


def demo_data(root: Path, classes: int, per_class: int, size: int) -> Path:
    write_demo(root, DemoSpec(classes=classes, per_class=per_class, size=size, seed=0))
    return root


MODEL_BLOCKS = {
    "small_cnn": """
[model]
name = "small_cnn"
filters = [16, 32, 64]
dense_units = 64
batch_norm = {batch_norm}
[space.model.dropout]
low = 0.0
high = 0.5
default = 0.1
""",
    # Random initialisation: the bench measures speed, and GPU machines may have no internet.
    "efficientnet_b0": """
[model]
name = "efficientnet_b0"
pretrained = false
""",
}


def study_file(
    folder: Path,
    name: str,
    n_trials: int,
    epochs: int,
    lr: tuple[float, float],
    collapse: bool,
    size: int,
    optimizer: str = "sgd",
    batch_norm: bool = True,
    warmup: int = 1,
    model: str = "small_cnn",
    compile: bool = False,
    optuna_pruner: str = "none",
) -> Path:
    """A small study on demo data (small_cnn or efficientnet_b0), lr searched log-uniformly;
    `study_text`'s arguments."""
    path = folder / f"{name}.toml"
    path.write_text(
        study_text(
            n_trials,
            epochs,
            lr,
            collapse,
            size,
            optimizer,
            batch_norm,
            warmup,
            model,
            compile,
            optuna_pruner,
        )
    )
    return path


def study_text(
    n_trials: int,
    epochs: int,
    lr: tuple[float, float],
    collapse: bool,
    size: int,
    optimizer: str = "sgd",
    batch_norm: bool = True,
    warmup: int = 1,
    model: str = "small_cnn",
    compile: bool = False,
    optuna_pruner: str = "none",
) -> str:
    """The TOML of `study_file`."""
    return f"""
[study]
n_trials = {n_trials}
[data]
cache_size = {size}
image_size = {size - size // 8}
[train]
epochs = {epochs}
batch_size = 32
optimizer = "{optimizer}"
scheduler = "none"
compile = {str(compile).lower()}
[space.train.lr]
low = {lr[0]}
high = {lr[1]}
log = true
default = {lr[0]}
[sampler]
name = "random"
seed = 0
[pruner]
collapse = {str(collapse).lower()}
warmup_epochs = {warmup}
patience = 2
optuna = "{optuna_pruner}"
""" + MODEL_BLOCKS[model].format(batch_norm=str(batch_norm).lower())


def warm_cache(study: Path, data: Path, cache: Path) -> None:
    """Decode the train/val caches now, so that no timed run pays for it."""
    tree = scan(data)
    for split in ("train", "val"):
        load_split(tree, split, load_spec(str(study)).base.data, cache, skip_bad=False)


def timed_run(
    study: Path, data: Path, db: Path, workers: int, cache: Path, per_gpu: int = 1
) -> dict[str, float]:
    """Run a study to its budget with `workers` processes (`per_gpu` of them sharing a GPU);
    wall time and what the trials did."""
    url = f"sqlite:///{db}"
    args = [sys.executable, "-m", "carbrand_search", "run", str(study), "--storage", url]
    args += ["--data", str(data), "--workers", str(workers), "--workers-per-gpu", str(per_gpu)]
    args += ["--artifacts", str(db.parent / "artifacts"), "--cache-dir", str(cache)]
    start = time.perf_counter()
    subprocess.run(args, check=True, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    trials = optuna.load_study(study_name=study.stem, storage=open_storage(url)).get_trials()
    done = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    complete = [t.value for t in done if t.state == TrialState.COMPLETE and t.value is not None]
    return {
        "collapsed_at_end": [t.number for t in done if collapsed(record.epochs(t))],
        "pruned_trials": [t.number for t in done if t.state == TrialState.PRUNED],
        "values": {t.number: round(t.value, 4) for t in done if t.value is not None},
        "workers": workers,
        "workers_per_gpu": per_gpu,
        "seconds": round(seconds, 2),
        "trials": len(done),
        "trials_per_hour": round(3600 * len(done) / seconds, 1),
        "pruned": sum(t.state == TrialState.PRUNED for t in done),
        "epochs_run": sum(len(record.epochs(t)) for t in done),
        "best": round(max(complete), 4) if complete else None,
        # Placement and packing: where each trial ran and the GPU memory it needed at most.
        "devices": dict(Counter(record.read(t).device or "?" for t in done)),
        "peak_memory_gib": {
            t.number: round(peak / 2**30, 3)
            for t in done
            if (peak := record.read(t).peak_memory) is not None
        },
    }


def collapsed(epochs: Sequence[EpochMetrics]) -> bool:
    """Whether a trial's last epoch shows collapse (one class, or loss at chance)."""
    if not epochs:
        return False
    last = epochs[-1]
    return last.top_class_share > 0.9 or abs(last.loss_ratio - 1) <= 0.02


def write_json(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2))
