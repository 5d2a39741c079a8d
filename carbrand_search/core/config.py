"""Typed configuration as frozen dataclasses: data, model, training, sampler, pruner settings.

Dependency-free (no torch, no timm, no Optuna): every layer may import it, and each class checks
its own ranges in `__post_init__`.
"""

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

from carbrand_search.core.fields import Bound, DataclassInstance, check_bounds
from carbrand_search.core.metric import Metric

MAX_CACHE_SIZE = 1024  # px; a split of 10,000 images at 1024 px is already 31 GB of cache
SEED_LIMIT = 2**32  # NumPy's and torch's seeds


@dataclass(frozen=True)
class DataConfig:
    """How images are cached and augmented."""

    cache_size: int = 256  # side of the square each image is decoded to, once
    fit: Literal["crop", "pad", "stretch"] = "crop"  # how a photo becomes that square
    image_size: int = 224  # side the model sees
    crop: Literal["random", "resized"] = "random"  # RandomCrop or RandomResizedCrop for training
    min_scale: float = 0.35  # smallest area share of a resized crop
    hflip: bool = True
    color_jitter: float = 0.1  # brightness/contrast/saturation strength

    def __post_init__(self) -> None:
        if not 8 <= self.cache_size <= MAX_CACHE_SIZE:
            raise ValueError(
                f"data.cache_size must be in [8, {MAX_CACHE_SIZE}], got {self.cache_size}"
            )
        if not 8 <= self.image_size <= self.cache_size:
            raise ValueError(
                f"data.image_size must be in [8, data.cache_size={self.cache_size}], "
                f"got {self.image_size}"
            )
        if not 0.0 < self.min_scale <= 1.0:
            raise ValueError(f"data.min_scale must be in (0, 1], got {self.min_scale}")
        if not 0.0 <= self.color_jitter < 1.0:
            raise ValueError(f"data.color_jitter must be in [0, 1), got {self.color_jitter}")


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings of one training run."""

    epochs: int = 10
    batch_size: int = 32
    optimizer: Literal["adamw", "adam", "sgd", "rmsprop"] = "adamw"
    lr: float = 3e-3
    weight_decay: float = 5e-5
    momentum: float = 0.9  # SGD and RMSprop
    nesterov: bool = False  # SGD
    label_smoothing: float = 0.05
    scheduler: Literal["plateau", "cosine", "onecycle", "none"] = "plateau"
    plateau_patience: int = 2
    plateau_factor: float = 0.5
    warmup_epochs: int = 0
    freeze_epochs: int = 0  # epochs training only the classifier head
    # timm's layer-wise learning-rate decay: each block from the head down learns at this
    # factor of the one above it, so pretrained early layers move least; 1 = one rate for all.
    layer_decay: float = 1.0
    class_weights: Literal["none", "balanced"] = "none"  # loss weights ∝ 1 / class frequency
    sampling: Literal["shuffle", "balanced"] = "shuffle"  # balanced: every class drawn equally
    mixup_alpha: float = 0.0  # timm Mixup's Beta(α, α); 0 = off
    cutmix_alpha: float = 0.0  # timm CutMix's Beta(α, α); 0 = off (with both on, each batch
    # picks one of the two at random)
    monitor: Metric = "val_macro_f1"  # picks the best epoch and is the study's objective
    seed: int = 0
    amp: bool = True  # bf16 autocast on CUDA and on CPUs with native bf16 (AVX-512 BF16, AMX)
    channels_last: bool = True
    compile: bool = False  # torch.compile the model for training (pays off only for long trials)

    def __post_init__(self) -> None:
        check_bounds("train", self, TRAIN_BOUNDS)
        check_bounds(
            "train",
            self,
            {
                "warmup_epochs": Bound(0, self.epochs, high_open=True),
                "freeze_epochs": Bound(0, self.epochs, high_open=True),
            },
        )


# What each numeric training setting allows (warm-up and frozen epochs: fewer than `epochs`).
TRAIN_BOUNDS = {
    "epochs": Bound(1, 10_000),
    "batch_size": Bound(1, 8192),
    "lr": Bound(0, 10, low_open=True),
    "weight_decay": Bound(0, 10),
    "momentum": Bound(0, 1, high_open=True),
    "label_smoothing": Bound(0, 1, high_open=True),
    "mixup_alpha": Bound(0, 10),
    "cutmix_alpha": Bound(0, 10),
    "plateau_patience": Bound(0, 10_000),
    "plateau_factor": Bound(0, 1, low_open=True, high_open=True),
    "layer_decay": Bound(0, 1, low_open=True),
    "seed": Bound(0, SEED_LIMIT, high_open=True),
}


@dataclass(frozen=True)
class ModelConfig:
    """A registry model name and its typed hyperparameters."""

    name: str
    params: DataclassInstance  # the model's own frozen params dataclass


MAX_VIEWS = 64
# distill.trial: -1 is the teacher study's best trial.
DISTILL_BOUNDS = {
    "trial": Bound(-1),
    "alpha": Bound(0, 1),
    "temperature": Bound(0, 100, low_open=True),
    "views": Bound(1, MAX_VIEWS),
}


@dataclass(frozen=True)
class DistillConfig:
    """Learning from a teacher study's soft predictions as well as from the labels: the loss is
    (1 − alpha)·CE(labels) + alpha·T²·KL(teacher_T ‖ student_T), T the temperature."""

    teacher: str = ""  # a study in the same storage and artifact store; "" = no teacher
    trial: int = -1  # the teacher study's trial number; -1 = its best trial
    alpha: float = 0.5
    temperature: float = 4.0
    # Fixed augmented views per training image whose teacher outputs are computed once per
    # study; each epoch the student sees one of them, drawn at random.
    views: int = 8

    def __post_init__(self) -> None:
        check_bounds("distill", self, DISTILL_BOUNDS)

    @property
    def on(self) -> bool:
        return bool(self.teacher)


@dataclass(frozen=True)
class RunConfig:
    """Everything one training run needs."""

    data: DataConfig
    model: ModelConfig
    train: TrainConfig
    distill: DistillConfig = DistillConfig()

    def __post_init__(self) -> None:
        mixing = self.train.mixup_alpha > 0 or self.train.cutmix_alpha > 0
        if self.distill.on and mixing:
            # The teacher's outputs are computed once, for unmixed views: what it would say of
            # a mixed image is unknown, and a mix of its outputs is not that.
            raise ValueError(
                "train.mixup_alpha and train.cutmix_alpha must be 0 with a distill.teacher "
                "(its outputs are cached for unmixed views)"
            )

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict, keys as in the study file."""
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class SamplerConfig:
    name: Literal["tpe", "random", "gp"] = "tpe"
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.seed < SEED_LIMIT:
            raise ValueError(f"sampler.seed must be in [0, 2**32), got {self.seed}")


@dataclass(frozen=True)
class PrunerConfig:
    """Collapse pruning first, then optionally one of Optuna's own pruners."""

    collapse: bool = True
    # Epochs 1..warmup_epochs are never pruned, by any rule (epochs are reported from 1).
    warmup_epochs: int = 1
    max_top_class_share: float = 0.9
    loss_tolerance: float = 0.02  # |val_loss / ln(classes) - 1| within this counts as stuck
    patience: int = 2
    optuna: Literal["none", "median", "hyperband", "successive_halving"] = "median"
    # Median rule only (Optuna's PatientPruner), for noisy curves: ask the median rule only once
    # the trial's last optuna_patience + 1 epochs all fell below its earlier best; 0 = always.
    optuna_patience: int = 0
    reduction_factor: int = 3  # Hyperband / successive halving: 1 / share promoted per rung

    def __post_init__(self) -> None:
        if self.warmup_epochs < 0 or self.patience < 1:
            raise ValueError("pruner.warmup_epochs must be >= 0 and pruner.patience >= 1")
        if not 0 < self.max_top_class_share <= 1:
            raise ValueError(
                f"pruner.max_top_class_share must be in (0, 1], got {self.max_top_class_share}"
            )
        if not 0 <= self.loss_tolerance < 1:
            raise ValueError(f"pruner.loss_tolerance must be in [0, 1), got {self.loss_tolerance}")
        if not 0 <= self.warmup_epochs <= 10_000 or self.patience > 10_000:
            raise ValueError("pruner.warmup_epochs and pruner.patience must be at most 10000")
        if self.optuna_patience < 0:
            raise ValueError(f"pruner.optuna_patience must be >= 0, got {self.optuna_patience}")
        if self.reduction_factor < 2:
            raise ValueError(f"pruner.reduction_factor must be >= 2, got {self.reduction_factor}")

    @property
    def first_prunable_epoch(self) -> int:
        """The first epoch any rule may prune at: the one after the warm-up."""
        return self.warmup_epochs + 1


@dataclass(frozen=True)
class TrackingConfig:
    """Where trials are also recorded: MLflow and TensorBoard (both off by default)."""

    mlflow: bool = False  # one MLflow run per trial
    mlflow_uri: str = "file:./mlruns"  # or sqlite:///mlflow.db, or http://HOST:5000 for a team
    experiment: str = ""  # MLflow experiment; "" = the study's name
    tensorboard: str = ""  # a folder: event files per study and trial; "" = off
