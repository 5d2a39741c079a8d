"""Plain PyTorch training: `fit` with per-epoch metrics and collapse signals; no Optuna."""

import math
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Literal, Protocol

import numpy as np
import torch
from torch import Tensor, nn

from carbrand_search.core import metric
from carbrand_search.core.config import TrainConfig
from carbrand_search.data.augment import Augment
from carbrand_search.data.loader import DeviceSplit
from carbrand_search.training.distill import Teaching
from carbrand_search.training.precision import Precision
from carbrand_search.training.state import FitState, StateDict, capture_rng, restore_rng

if TYPE_CHECKING:
    from timm.data import Mixup

# timm and scikit-learn are imported in the functions that use them: importing timm loads
# torchvision and torch._dynamo, which a worker training a small_cnn never needs.


@dataclass(frozen=True)
class EpochMetrics:
    """One epoch's numbers; the last two are the collapse signals."""

    epoch: int  # 1-based
    train_loss: float
    val_loss: float
    val_accuracy: float
    val_macro_f1: float
    top_class_share: float  # share of val predictions in the most-predicted class
    loss_ratio: float  # val loss / ln(num_classes); ≈ 1 means the model learned nothing
    lr: float
    seconds: float

    def value(self, metric: str) -> float:
        return float(getattr(self, metric))

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


class TrainListener(Protocol):
    """Receives progress from `fit`; may raise to stop training (e.g. optuna.TrialPruned)."""

    def epoch_start(self, epoch: int, epochs: int, batches: int) -> None: ...

    def batch_end(self, loss: Tensor) -> None:
        """`loss` is a 0-d tensor on the training device; `.item()` on it waits for the GPU."""

    def epoch_end(self, metrics: EpochMetrics) -> None: ...


class Checkpointer(Protocol):
    """Stores `fit`'s whole state so a stopped run can resume: `fit` calls it after every
    epoch and, within an epoch, once `every_s` seconds have passed since the last call."""

    every_s: float

    def __call__(self, state: FitState) -> None: ...


@dataclass
class FitResult:
    history: list[EpochMetrics]
    best_epoch: int
    best_state: dict[str, Tensor]

    @property
    def best(self) -> EpochMetrics:
        return self.history[self.best_epoch - 1]


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch so CPU runs repeat exactly."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# timm's optimizer names; "sgd" there means Nesterov momentum.
_TIMM_OPTIMIZERS = {"adamw": "adamw", "adam": "adam", "rmsprop": "rmsprop"}


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """timm's optimizer factory: weight decay only on weights of rank ≥ 2 (never on BatchNorm
    scales or biases), as timm and nanoGPT do."""
    from timm.optim import create_optimizer_v2

    name = _TIMM_OPTIMIZERS.get(cfg.optimizer)
    if name is None:  # sgd
        name = "nesterov" if cfg.nesterov and cfg.momentum > 0 else "momentum"
    return create_optimizer_v2(
        model,
        opt=name,
        lr=cfg.lr,
        weight_decay=cfg.weight_decay,
        momentum=cfg.momentum,
        layer_decay=cfg.layer_decay if cfg.layer_decay < 1 else None,
    )


class LRSchedule:
    """Warm-up plus the configured scheduler, stepped per batch or (plateau) per epoch."""

    def __init__(self, optimizer: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int):
        total = cfg.epochs * steps_per_epoch
        warmup = cfg.warmup_epochs * steps_per_epoch
        sched = torch.optim.lr_scheduler
        self.per_batch: sched.LRScheduler | None = None
        self.plateau: sched.ReduceLROnPlateau | None = None
        self.mode: Literal["min", "max"] = (
            "min" if metric.direction(cfg.monitor) == "minimize" else "max"
        )
        warm = sched.LinearLR(optimizer, start_factor=0.01, total_iters=warmup) if warmup else None
        if cfg.scheduler == "onecycle":
            pct = warmup / total if warmup else 0.3
            self.per_batch = sched.OneCycleLR(
                optimizer, max_lr=cfg.lr, total_steps=total, pct_start=pct
            )
        elif cfg.scheduler == "cosine":
            cosine = sched.CosineAnnealingLR(optimizer, T_max=max(1, total - warmup))
            self.per_batch = (
                sched.SequentialLR(optimizer, [warm, cosine], milestones=[warmup])
                if warm
                else cosine
            )
        else:
            self.per_batch = warm
            if cfg.scheduler == "plateau":
                self.plateau = sched.ReduceLROnPlateau(
                    optimizer,
                    mode=self.mode,
                    factor=cfg.plateau_factor,
                    patience=cfg.plateau_patience,
                )
        # Per-batch schedulers run the whole way; with plateau/none only the warm-up is per batch.
        self.batch_steps = total if self.plateau is None and cfg.scheduler != "none" else warmup
        self.steps = 0

    def after_batch(self) -> None:
        if self.per_batch is not None and self.steps < self.batch_steps:
            self.per_batch.step()
        self.steps += 1

    def after_epoch(self, monitored: float) -> None:
        if self.plateau is not None and self.steps >= self.batch_steps:
            self.plateau.step(monitored)

    def state_dict(self) -> StateDict:
        return {
            "steps": self.steps,
            "per_batch": self.per_batch.state_dict() if self.per_batch else None,
            "plateau": self.plateau.state_dict() if self.plateau else None,
        }

    def load_state_dict(self, state: StateDict) -> None:
        self.steps = state["steps"]
        if self.per_batch is not None:
            self.per_batch.load_state_dict(state["per_batch"])
        if self.plateau is not None:
            self.plateau.load_state_dict(state["plateau"])


def _set_frozen(model: nn.Module, frozen: bool) -> None:
    """Train only the classifier while `frozen`. Frozen norm layers also go to eval mode: in
    train mode BatchNorm would keep moving its running statistics under frozen weights."""
    head = model.get_classifier()  # type: ignore[operator]
    head_params = {id(p) for p in head.parameters()}
    for p in model.parameters():
        p.requires_grad_(not frozen or id(p) in head_params)
    if frozen:
        head_modules = set(head.modules())
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._NormBase) and module not in head_modules:
                module.eval()


@torch.no_grad()
def predict(
    model: nn.Module,
    split: DeviceSplit,
    augment: Augment,
    batch_size: int,
    precision: Precision,
    flip: bool = False,
) -> tuple[Tensor, Tensor]:
    """Logits (float32, CPU) and labels (CPU) for a whole split as evaluation shows it
    (`Augment.eval_batch`), or its mirror image with `flip`."""
    model.eval()
    device = split.device
    outputs, labels = [], []
    for images, y in split.batches(batch_size):
        x = augment.eval_batch(images)
        if flip:
            x = x.flip(3)
        with precision.autocast(device):
            outputs.append(model(precision.input(x)).float())
        labels.append(y)
    # One copy to the host at the end: a copy per batch would make the host wait for each one.
    return torch.cat(outputs).cpu(), torch.cat(labels).cpu()


def train_step(
    forward: Callable[[Tensor], Tensor],
    criterion: Callable[[Tensor, Tensor], Tensor],
    optimizer: torch.optim.Optimizer,
    x: Tensor,
    labels: Tensor,
    precision: Precision,
) -> Tensor:
    """One optimisation step. The loss comes back detached and on the device: reading it
    (`.item()`) would make the host wait for the GPU, so callers do that rarely."""
    with precision.autocast(x.device):
        loss = criterion(forward(precision.input(x)).float(), labels)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach()


def val_metrics(logits: Tensor, labels: Tensor, num_classes: int) -> dict[str, float]:
    from sklearn.metrics import f1_score

    loss = nn.functional.cross_entropy(logits, labels).item()
    preds = logits.argmax(1)
    counts = torch.bincount(preds, minlength=num_classes)
    return {
        "val_loss": loss,
        "val_accuracy": (preds == labels).float().mean().item(),
        "val_macro_f1": float(
            f1_score(labels, preds, average="macro", labels=range(num_classes), zero_division=0)
        ),
        "top_class_share": counts.max().item() / len(labels),
        "loss_ratio": loss / math.log(num_classes) if math.isfinite(loss) else math.inf,
    }


def _cpu_state(model: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def balanced_weights(labels: Tensor, num_classes: int) -> Tensor:
    """Per-sample draw weights ∝ 1 / its class's count: every class is drawn equally often."""
    counts = torch.bincount(labels.cpu(), minlength=num_classes).clamp(min=1)
    return 1.0 / counts[labels.cpu()].double()


def make_mixup(cfg: TrainConfig, num_classes: int) -> "Mixup | None":
    """timm's Mixup/CutMix on whole batches, or None when both are off. Label smoothing stays
    with the loss, which takes the soft targets Mixup returns."""
    if cfg.mixup_alpha == 0 and cfg.cutmix_alpha == 0:
        return None
    from timm.data import Mixup

    return Mixup(
        mixup_alpha=cfg.mixup_alpha,
        cutmix_alpha=cfg.cutmix_alpha,
        label_smoothing=0.0,
        num_classes=num_classes,
    )


def _train_batches(
    train: DeviceSplit,
    batch_size: int,
    shuffle: torch.Generator,
    draw_weights: Tensor | None,
    even: bool,
    skip: int,
) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
    for index, images, labels in train.indexed_batches(batch_size, shuffle, draw_weights, skip):
        n = labels.shape[0] - (labels.shape[0] % 2 if even else 0)  # Mixup pairs samples up
        # A lone last sample makes BatchNorm's batch statistics meaningless; skip it.
        if n > 1:
            yield index[:n], images[:n], labels[:n]


def fit(
    model: nn.Module,
    train: DeviceSplit,
    val: DeviceSplit,
    augment: Augment,
    cfg: TrainConfig,
    num_classes: int,
    listener: TrainListener | None = None,
    *,
    resume: FitState | None = None,
    checkpointer: Checkpointer | None = None,
    teaching: Teaching | None = None,
) -> FitResult:
    """Train `model` for `cfg.epochs`, keep the best epoch's weights by `cfg.monitor`. From
    `resume` it goes on where that state was taken, and ends as the uninterrupted run would.
    With `teaching`, each image is one of its cached views and the loss also learns from the
    teacher's outputs for that view."""
    device = train.device
    precision = Precision.for_device(device, cfg.amp, cfg.channels_last)
    precision.prepare(model.to(device))
    weights = None
    if cfg.class_weights == "balanced":
        from sklearn.utils.class_weight import compute_class_weight

        y = train.labels.cpu().numpy()
        weights = torch.tensor(
            compute_class_weight("balanced", classes=np.arange(num_classes), y=y),
            dtype=torch.float32,
        ).to(device)
    criterion = nn.CrossEntropyLoss(weight=weights, label_smoothing=cfg.label_smoothing)
    forward = torch.compile(model) if cfg.compile else model
    optimizer = make_optimizer(model, cfg)
    mixup = make_mixup(cfg, num_classes)
    draw_weights = (
        balanced_weights(train.labels, num_classes) if cfg.sampling == "balanced" else None
    )
    steps = train.num_batches(cfg.batch_size)
    schedule = LRSchedule(optimizer, cfg, steps)
    shuffle = torch.Generator().manual_seed(cfg.seed)
    aug_gen = torch.Generator(device=device).manual_seed(cfg.seed + 1)
    run = _Progress(best_epoch=cfg.epochs)
    if resume is not None:
        model.load_state_dict(resume.model)
        optimizer.load_state_dict(resume.optimizer)
        schedule.load_state_dict(resume.schedule)
        restore_rng(resume.rng, aug_gen)
        shuffle.set_state(resume.shuffle)
        run = _Progress.resumed(resume)
    sign = metric.sign(cfg.monitor)
    last_save = time.monotonic()

    def save(epoch: int, batch: int, epoch_shuffle: Tensor, loss: Tensor, seen: int) -> None:
        nonlocal last_save
        assert checkpointer is not None
        checkpointer(
            FitState(
                epoch=epoch,
                batch=batch,
                model=_cpu_state(model),
                optimizer=optimizer.state_dict(),
                schedule=schedule.state_dict(),
                rng=capture_rng(aug_gen),
                shuffle=epoch_shuffle,
                epoch_loss=loss.item(),
                epoch_seen=seen,
                epoch_seconds=time.perf_counter() - start,
                history=tuple(m.to_dict() for m in run.history),
                best_epoch=run.best_epoch,
                best_value=run.best_value,
                best_state=run.best_state,
            )
        )
        last_save = time.monotonic()

    for epoch in range(run.first_epoch, cfg.epochs + 1):
        start = time.perf_counter() - run.epoch_seconds
        epoch_shuffle = shuffle.get_state()  # replays this epoch's order after a resume
        if listener:
            listener.epoch_start(epoch, cfg.epochs, steps)
        model.train()
        _set_frozen(model, epoch <= cfg.freeze_epochs)
        total_loss = torch.full((), run.epoch_loss, device=device)
        seen, done = run.epoch_seen, run.first_batch
        batches = _train_batches(
            train, cfg.batch_size, shuffle, draw_weights, mixup is not None, done
        )
        for index, images, labels in batches:
            step_loss: Callable[[Tensor, Tensor], Tensor] = criterion
            if teaching is not None:
                x, step_loss = teaching.batch(augment, index, images, aug_gen, criterion)
            else:
                x = augment.train_batch(images, aug_gen)
            targets: Tensor = labels
            if mixup is not None:
                x, targets = mixup(x, labels)
            loss = train_step(forward, step_loss, optimizer, x, targets, precision)
            schedule.after_batch()
            total_loss += loss * labels.shape[0]
            seen += labels.shape[0]
            done += 1
            if listener:
                listener.batch_end(loss)
            due = checkpointer and time.monotonic() - last_save >= checkpointer.every_s
            if due and done < steps:
                save(epoch - 1, done, epoch_shuffle, total_loss, seen)
        run.epoch_done()
        logits, labels = predict(model, val, augment, cfg.batch_size * 2, precision)
        values = val_metrics(logits, labels, num_classes)
        metrics = EpochMetrics(
            epoch=epoch,
            train_loss=total_loss.item() / max(seen, 1),
            lr=optimizer.param_groups[0]["lr"],
            seconds=time.perf_counter() - start,
            **values,
        )
        run.history.append(metrics)
        monitored = metrics.value(cfg.monitor)
        schedule.after_epoch(monitored)
        if math.isfinite(monitored) and sign * monitored > run.best_value:
            run.best_value, run.best_epoch = sign * monitored, epoch
            run.best_state = _cpu_state(model)
        if listener:
            listener.epoch_end(metrics)
        if checkpointer and epoch < cfg.epochs:
            save(epoch, 0, shuffle.get_state(), torch.zeros(()), 0)
    best_state = run.best_state
    if not best_state:  # every epoch diverged: keep the last weights so the run still has them
        best_state = _cpu_state(model)
    model.load_state_dict(best_state)
    return FitResult(run.history, run.best_epoch, best_state)


@dataclass
class _Progress:
    """Where `fit` stands: history, best epoch so far and the partial epoch a resume starts in."""

    best_epoch: int
    history: list[EpochMetrics] = field(default_factory=list)
    best_value: float = -math.inf
    best_state: dict[str, Tensor] = field(default_factory=dict)
    first_batch: int = 0
    epoch_loss: float = 0.0
    epoch_seen: int = 0
    epoch_seconds: float = 0.0

    @property
    def first_epoch(self) -> int:
        return len(self.history) + 1

    def epoch_done(self) -> None:
        """The partial epoch a resume started in is over: later epochs start from zero."""
        self.first_batch, self.epoch_loss, self.epoch_seen, self.epoch_seconds = 0, 0.0, 0, 0.0

    @classmethod
    def resumed(cls, state: FitState) -> "_Progress":
        return cls(
            history=[EpochMetrics(**m) for m in state.history],  # type: ignore[arg-type]
            best_value=state.best_value,
            best_epoch=state.best_epoch,
            best_state=state.best_state,
            first_batch=state.batch,
            epoch_loss=state.epoch_loss,
            epoch_seen=state.epoch_seen,
            epoch_seconds=state.epoch_seconds,
        )
