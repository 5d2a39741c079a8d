"""Typed configuration as frozen dataclasses: data, model, training, sampler, pruner settings.

Dependency-free (no torch, no timm, no Optuna): every layer may import it. Each class states its
ranges in `BOUNDS` and checks them in `__post_init__`; the docstring below each field is what the
study-file reference prints for it.
"""

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from carbrand_search.core.fields import Bound, DataclassInstance, check_bounds
from carbrand_search.core.metric import Metric

MAX_CACHE_SIZE = 1024  # px; a split of 10,000 images at 1024 px is already 31 GB of cache
SEED_LIMIT = 2**32  # NumPy's and torch's seeds
MAX_TRIALS = 1_000_000


@dataclass(frozen=True)
class DataConfig:
    """How images are cached and augmented."""

    BOUNDS: ClassVar[Mapping[str, Bound]] = {
        "cache_size": Bound(8, MAX_CACHE_SIZE),
        "image_size": Bound(8, MAX_CACHE_SIZE),
        "min_scale": Bound(0, 1, low_open=True),
        "color_jitter": Bound(0, 1, high_open=True),
    }

    cache_size: int = 256
    """Side in pixels of the square each image is decoded to, once per study."""
    fit: Literal["crop", "pad", "stretch"] = "crop"
    """How a photo becomes that square: centre-crop it, letterbox it (a wide car stays whole) or
    stretch it."""
    image_size: int = 224
    """Side in pixels the model sees; at most `cache_size`."""
    crop: Literal["random", "resized"] = "random"
    """Training crops: RandomCrop of `image_size`, or RandomResizedCrop (area from `min_scale`)."""
    min_scale: float = 0.35
    """Smallest area share of a resized crop."""
    hflip: bool = True
    """Mirror training images at random."""
    color_jitter: float = 0.1
    """Brightness, contrast and saturation jitter strength; 0 = off."""

    def __post_init__(self) -> None:
        check_bounds("data", self, self.BOUNDS)
        if self.image_size > self.cache_size:
            raise ValueError(
                f"data.image_size must be in [8, data.cache_size={self.cache_size}], "
                f"got {self.image_size}"
            )


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings of one training run."""

    # Warm-up and frozen epochs must also be fewer than `epochs` (checked below).
    BOUNDS: ClassVar[Mapping[str, Bound]] = {
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
        "warmup_epochs": Bound(0, 10_000),
        "freeze_epochs": Bound(0, 10_000),
        "layer_decay": Bound(0, 1, low_open=True),
        "seed": Bound(0, SEED_LIMIT, high_open=True),
    }

    epochs: int = 10
    """Training epochs of a trial."""
    batch_size: int = 32
    """Images per optimiser step."""
    optimizer: Literal["adamw", "adam", "sgd", "rmsprop"] = "adamw"
    """Built by timm's `create_optimizer_v2`: no weight decay on biases and norm parameters."""
    lr: float = 3e-3
    """Peak learning rate."""
    weight_decay: float = 5e-5
    """Decoupled (AdamW) or L2 weight decay."""
    momentum: float = 0.9
    """SGD and RMSprop only."""
    nesterov: bool = False
    """Nesterov momentum, SGD only."""
    label_smoothing: float = 0.05
    """Share of each label's probability spread over the other classes."""
    scheduler: Literal["plateau", "cosine", "onecycle", "none"] = "plateau"
    """Learning-rate schedule: lowered on a plateau of the monitor, cosine to 0 by the last step,
    one-cycle (torch's, which also cycles the momentum against the rate), or none."""
    plateau_patience: int = 2
    """Plateau schedule: epochs without improvement before the rate falls."""
    plateau_factor: float = 0.5
    """Plateau schedule: the factor the rate falls by."""
    warmup_epochs: int = 0
    """Epochs of linear warm-up to `lr`; for one-cycle, the length of its rise (otherwise 30% of
    the steps). Fewer than `epochs`."""
    freeze_epochs: int = 0
    """Epochs training only the classifier head (the frozen part's BatchNorm layers stay in eval
    mode); fewer than `epochs`."""
    layer_decay: float = 1.0
    """timm's layer-wise learning-rate decay: each block from the head down learns at this factor
    of the one above it, so pretrained early layers move least; 1 = one rate for all."""
    class_weights: Literal["none", "balanced"] = "none"
    """Loss weights: none, or balanced (each class weighted by 1 / its frequency)."""
    sampling: Literal["shuffle", "balanced"] = "shuffle"
    """Batches: a shuffle of the training set, or balanced (every class drawn equally often)."""
    mixup_alpha: float = 0.0
    """timm Mixup's Beta(α, α); 0 = off. Refused with a `distill.teacher`."""
    cutmix_alpha: float = 0.0
    """timm CutMix's Beta(α, α); 0 = off (with Mixup on as well, each batch picks one of the
    two). Refused with a `distill.teacher`."""
    monitor: Metric = "val_macro_f1"
    """The metric that picks the best epoch and is the study's objective."""
    seed: int = 0
    """Seed of every generator of a trial: weights, shuffling, augmentation."""
    amp: bool = True
    """bf16 autocast on CUDA and on CPUs with native bf16 (AVX-512 BF16, AMX)."""
    channels_last: bool = True
    """The channels-last memory layout for convolutions."""
    compile: bool = False
    """`torch.compile` the model for training (pays off only for long trials)."""

    def __post_init__(self) -> None:
        check_bounds("train", self, self.BOUNDS)
        check_bounds(
            "train",
            self,
            {
                "warmup_epochs": Bound(0, self.epochs, high_open=True),
                "freeze_epochs": Bound(0, self.epochs, high_open=True),
            },
        )


@dataclass(frozen=True)
class ModelConfig:
    """A registry model name and its typed hyperparameters."""

    name: str
    params: DataclassInstance  # the model's own frozen params dataclass


# The teacher's outputs are N × views × classes float32 logits, held in memory while a study
# runs: 256 views of the crops' training photos (30 makes) take 128 MiB.
MAX_VIEWS = 256


@dataclass(frozen=True)
class DistillConfig:
    """Learning from a teacher study's soft predictions as well as from the labels: the loss is
    (1 − alpha)·CE(labels) + alpha·T²·KL(teacher_T ‖ student_T), T the temperature."""

    BOUNDS: ClassVar[Mapping[str, Bound]] = {
        "trial": Bound(-1),
        "alpha": Bound(0, 1),
        "temperature": Bound(0, 100, low_open=True),
        "views": Bound(0, MAX_VIEWS),
    }

    teacher: str = ""
    """A study in the same storage and artifact store whose trial teaches; "" = no teacher."""
    trial: int = -1
    """The teacher study's trial number; -1 = its best trial, pinned at the first run."""
    alpha: float = 0.5
    """Weight of the teacher's term in the loss; 0 = the plain loss."""
    temperature: float = 4.0
    """Softens both distributions in the teacher's term."""
    views: int = 8
    """Fixed augmented views per training image whose teacher outputs are computed once per
    study and cached; each epoch the student sees one of them, drawn at random. 0 = none: the
    teacher runs on every batch, on a fresh view each step (for a GPU: on a CPU a teacher's
    forward pass costs about a small student's step at 128 px, and several at 224 px)."""

    def __post_init__(self) -> None:
        check_bounds("distill", self, self.BOUNDS)

    @property
    def on(self) -> bool:
        return bool(self.teacher)

    @property
    def live(self) -> bool:
        """The teacher runs on every batch instead of from cached views."""
        return self.views == 0


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
class StudyConfig:
    """The `[study]` table: what a study is for, its budget, what it keeps."""

    BOUNDS: ClassVar[Mapping[str, Bound]] = {
        "n_trials": Bound(1, MAX_TRIALS),
        "keep_checkpoints": Bound(0, MAX_TRIALS),
        "resume_every_s": Bound(0, 86_400),
    }

    description: str = ""
    """One line on what the study searches; shown in the dashboard note and reports."""
    n_trials: int = 20
    """The budget: finished trials across all workers and runs (`run --n-trials` overrides it)."""
    keep_checkpoints: int = 5
    """The best K complete trials keep their weights; 0 = every trial."""
    resume_every_s: float = 300.0
    """Seconds between resume points inside an epoch (one is also saved after every epoch)."""

    def __post_init__(self) -> None:
        check_bounds("study", self, self.BOUNDS)


@dataclass(frozen=True)
class SamplerConfig:
    """The `[sampler]` table: Optuna's sampler and its seed."""

    BOUNDS: ClassVar[Mapping[str, Bound]] = {"seed": Bound(0, SEED_LIMIT, high_open=True)}

    name: Literal["tpe", "random", "gp"] = "tpe"
    """TPE (with constant liar, so parallel workers do not sample alike), random search, or
    Gaussian-process Bayesian optimisation."""
    seed: int = 0
    """Each trial samples from a stream seeded by this and its trial number."""

    def __post_init__(self) -> None:
        check_bounds("sampler", self, self.BOUNDS)


@dataclass(frozen=True)
class PrunerConfig:
    """The `[pruner]` table: the collapse rules first, then optionally one of Optuna's pruners."""

    BOUNDS: ClassVar[Mapping[str, Bound]] = {
        "warmup_epochs": Bound(0, 10_000),
        "max_top_class_share": Bound(0, 1, low_open=True),
        "loss_tolerance": Bound(0, 1, high_open=True),
        "patience": Bound(1, 10_000),
        "optuna_patience": Bound(0, 10_000),
        "reduction_factor": Bound(2, 100),
    }

    collapse: bool = True
    """Prune collapsed trials: one class taking the predictions, a loss stuck at ln(classes), or a
    loss that is NaN or infinite."""
    warmup_epochs: int = 1
    """Epochs 1 to this are never pruned, by any rule (epochs are reported from 1)."""
    max_top_class_share: float = 0.9
    """Collapse: more than this share of validation predictions in one class."""
    loss_tolerance: float = 0.02
    """Collapse: |val loss / ln(classes) − 1| within this counts as stuck."""
    patience: int = 2
    """Collapse: epochs in a row, after the warm-up, that predictions must stay on one class or
    a loss stuck before the trial is pruned."""
    optuna: Literal["none", "median", "hyperband", "successive_halving"] = "median"
    """Optuna's pruner after the collapse rules."""
    optuna_patience: int = 0
    """Median rule only (Optuna's PatientPruner, for noisy curves): ask it only once the last
    `optuna_patience` + 1 epochs all fell below the trial's earlier best; 0 = always."""
    reduction_factor: int = 3
    """Hyperband and successive halving: 1 / the share of trials promoted at each rung."""

    def __post_init__(self) -> None:
        check_bounds("pruner", self, self.BOUNDS)

    @property
    def first_prunable_epoch(self) -> int:
        """The first epoch any rule may prune at: the one after the warm-up."""
        return self.warmup_epochs + 1


@dataclass(frozen=True)
class TrackingConfig:
    """The `[tracking]` table: where trials are also recorded (MLflow and TensorBoard, both off
    by default)."""

    mlflow: bool = False
    """One MLflow run per trial."""
    mlflow_uri: str = "file:./mlruns"
    """MLflow's tracking URI: a folder, `sqlite:///mlflow.db`, or `http://HOST:5000` for a team."""
    experiment: str = ""
    """MLflow experiment; "" = the study's name."""
    tensorboard: str = ""
    """A folder for TensorBoard event files per study and trial; "" = off."""
