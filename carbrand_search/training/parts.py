"""The parts of a training run that a resolved config names: its data on the device, its model,
its augmentation and its precision."""

import dataclasses
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from carbrand_search import models
from carbrand_search.core.config import DataConfig, RunConfig
from carbrand_search.data.augment import Augment
from carbrand_search.data.cache import CachedSplit, load_or_build
from carbrand_search.data.imagefolder import ImageTree, scan
from carbrand_search.data.loader import DeviceSplit
from carbrand_search.training.precision import Precision

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


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch so CPU runs repeat exactly."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def new_model(config: RunConfig, num_classes: int) -> nn.Module:
    """Seed everything with the run's seed, then build its model: the same weights every time."""
    seed_everything(config.train.seed)
    return build_model(config, num_classes)
