"""One training run from a resolved config: cached data → model → fit → files on disk."""

import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from carbrand_search import models
from carbrand_search.core.config import DataConfig, RunConfig
from carbrand_search.core.folders import refuse_non_empty
from carbrand_search.data.augment import Augment
from carbrand_search.data.cache import CachedSplit, load_or_build
from carbrand_search.data.imagefolder import ImageTree, scan
from carbrand_search.data.loader import DeviceSplit
from carbrand_search.training.distill import Teaching
from carbrand_search.training.fit import (
    Checkpointer,
    FitResult,
    TrainListener,
    fit,
    seed_everything,
)
from carbrand_search.training.precision import Precision
from carbrand_search.training.state import FitState

CacheProgress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class TrainingData:
    """The dataset's classes and its train/val splits, decoded and on the training device."""

    tree: ImageTree
    train: DeviceSplit
    val: DeviceSplit
    skipped: tuple[str, ...]
    reused_cache: bool


def load_split(
    tree: ImageTree,
    split: str,
    cfg: DataConfig,
    cache_root: Path,
    skip_bad: bool = False,
    on_progress: CacheProgress | None = None,
) -> CachedSplit:
    """One split from the decode-once cache (built on first use)."""
    return load_or_build(
        tree.splits[split],
        cfg.cache_size,
        cfg.fit,
        cache_root,
        skip_bad,
        on_progress and (lambda done, total: on_progress(split, done, total)),
    )


def load_training_data(
    data_root: Path,
    cfg: DataConfig,
    cache_root: Path,
    device: torch.device,
    *,
    skip_bad: bool = False,
    on_progress: CacheProgress | None = None,
) -> TrainingData:
    """Validate the tree, then load train and val from the cache onto `device`."""
    tree = scan(data_root)
    cached = {
        s: load_split(tree, s, cfg, cache_root, skip_bad, on_progress) for s in ("train", "val")
    }
    return TrainingData(
        tree=tree,
        train=DeviceSplit.from_arrays(cached["train"].images, cached["train"].labels, device),
        val=DeviceSplit.from_arrays(cached["val"].images, cached["val"].labels, device),
        skipped=cached["train"].skipped + cached["val"].skipped,
        reused_cache=all(c.reused for c in cached.values()),
    )


def build_model(config: RunConfig, num_classes: int) -> nn.Module:
    """The registry model for `config`, with its hyperparameters."""
    return models.create(config.model.name, num_classes, **dataclasses.asdict(config.model.params))


def augment_for(config: RunConfig) -> Augment:
    """The augmentation of `config.data` with the model's own normalisation."""
    entry = models.entry(config.model.name)
    return Augment(config.data, *entry.normalization())


def precision_for(config: RunConfig, device: torch.device) -> Precision:
    """bf16 and channels_last as the run's training uses them on `device`."""
    return Precision.for_device(device, config.train.amp, config.train.channels_last)


def new_model(config: RunConfig, num_classes: int) -> nn.Module:
    """Seed everything with the run's seed, then build its model: the same weights every time."""
    seed_everything(config.train.seed)
    return build_model(config, num_classes)


def fit_config(
    model: nn.Module,
    config: RunConfig,
    data: TrainingData,
    listener: TrainListener | None = None,
    *,
    resume: FitState | None = None,
    checkpointer: Checkpointer | None = None,
    teaching: Teaching | None = None,
) -> FitResult:
    """Fit `model` (from `new_model`) on `data` with `config`; it ends at its best epoch."""
    return fit(
        model, data.train, data.val, augment_for(config), config.train, len(data.tree.classes),
        listener, resume=resume, checkpointer=checkpointer, teaching=teaching,
    )  # fmt: skip


def train_config(
    config: RunConfig, data: TrainingData, listener: TrainListener | None = None
) -> tuple[nn.Module, FitResult]:
    """Seed, build and fit one configuration; returns the model at its best epoch."""
    model = new_model(config, len(data.tree.classes))
    return model, fit_config(model, config, data, listener)


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
