"""Plain PyTorch training: `fit` with per-epoch metrics and collapse signals; no Optuna."""

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import numpy as np
import torch
from torch import Tensor, nn

from carbrand_search.core import metric
from carbrand_search.core.config import RunConfig, TrainConfig
from carbrand_search.core.metric import EpochMetrics
from carbrand_search.data.augment import Augment
from carbrand_search.data.loader import DeviceSplit
from carbrand_search.training.distill import Teaching
from carbrand_search.training.optim import LRSchedule, make_optimizer
from carbrand_search.training.parts import TrainingData, augment_for, precision_for
from carbrand_search.training.precision import Precision
from carbrand_search.training.state import FitState, capture_rng, restore_rng

if TYPE_CHECKING:
    from timm.data import Mixup

# timm and scikit-learn are imported in the functions that use them: importing timm loads
# torchvision and torch._dynamo, which a worker training a small_cnn never needs.


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


def _class_weights(cfg: TrainConfig, labels: Tensor, num_classes: int) -> Tensor | None:
    """The loss's per-class weights: scikit-learn's "balanced" (n / (classes · count)), or none."""
    if cfg.class_weights != "balanced":
        return None
    from sklearn.utils.class_weight import compute_class_weight

    weights = compute_class_weight(
        "balanced", classes=np.arange(num_classes), y=labels.cpu().numpy()
    )
    return torch.tensor(weights, dtype=torch.float32).to(labels.device)


@dataclass
class _Loop:
    """What one `fit` trains with, built once from the config and reused by every epoch."""

    model: nn.Module
    forward: Callable[[Tensor], Tensor]  # the model, or its torch.compile'd form
    cfg: TrainConfig
    num_classes: int
    optimizer: torch.optim.Optimizer
    schedule: LRSchedule
    criterion: nn.Module
    mixup: "Mixup | None"
    draw_weights: Tensor | None  # balanced sampling's per-image weights
    shuffle: torch.Generator  # the order of the batches (CPU)
    augmentation: torch.Generator  # crops, flips, views (on the training device)
    augment: Augment
    precision: Precision
    teaching: Teaching | None

    @classmethod
    def create(
        cls, model: nn.Module, data: TrainingData, config: RunConfig, teaching: Teaching | None
    ) -> "_Loop":
        cfg, device = config.train, data.train.device
        num_classes = len(data.tree.classes)
        precision = precision_for(config, device)
        precision.prepare(model.to(device))
        optimizer = make_optimizer(model, cfg)
        return cls(
            model=model,
            forward=torch.compile(model) if cfg.compile else model,
            cfg=cfg,
            num_classes=num_classes,
            optimizer=optimizer,
            schedule=LRSchedule.create(optimizer, cfg, data.train.num_batches(cfg.batch_size)),
            criterion=nn.CrossEntropyLoss(
                weight=_class_weights(cfg, data.train.labels, num_classes),
                label_smoothing=cfg.label_smoothing,
            ),
            mixup=make_mixup(cfg, num_classes),
            draw_weights=(
                balanced_weights(data.train.labels, num_classes)
                if cfg.sampling == "balanced"
                else None
            ),
            shuffle=torch.Generator().manual_seed(cfg.seed),
            augmentation=torch.Generator(device=device).manual_seed(cfg.seed + 1),
            augment=augment_for(config),
            precision=precision,
            teaching=teaching,
        )

    def start_epoch(self, epoch: int) -> None:
        self.model.train()
        _set_frozen(self.model, epoch <= self.cfg.freeze_epochs)

    def batches(self, train: DeviceSplit, skip: int) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
        """The epoch's (index, images, labels) batches after the first `skip`."""
        even = self.mixup is not None  # Mixup pairs samples up
        for index, images, labels in train.indexed_batches(
            self.cfg.batch_size, self.shuffle, self.draw_weights, skip
        ):
            n = labels.shape[0] - (labels.shape[0] % 2 if even else 0)
            # A lone last sample makes BatchNorm's batch statistics meaningless; skip it.
            if n > 1:
                yield index[:n], images[:n], labels[:n]

    def step(self, index: Tensor, images: Tensor, labels: Tensor) -> Tensor:
        """One batch: its augmented (or cached teacher) views, Mixup, one optimiser step."""
        loss_of: Callable[[Tensor, Tensor], Tensor] = self.criterion
        if self.teaching is not None:
            x, loss_of = self.teaching.batch(
                self.augment, index, images, self.augmentation, self.criterion
            )
        else:
            x = self.augment.train_batch(images, self.augmentation)
        targets = labels
        if self.mixup is not None:
            x, targets = self.mixup(x, labels)
        loss = train_step(self.forward, loss_of, self.optimizer, x, targets, self.precision)
        self.schedule.after_batch()
        return loss

    def evaluate(self, epoch: "_Epoch", val: DeviceSplit) -> EpochMetrics:
        """The epoch's metrics on the validation split."""
        logits, labels = predict(
            self.model, val, self.augment, self.cfg.batch_size * 2, self.precision
        )
        return EpochMetrics(
            epoch=epoch.number,
            train_loss=float(epoch.loss) / max(epoch.seen, 1),
            lr=self.optimizer.param_groups[0]["lr"],
            seconds=epoch.seconds,
            **val_metrics(logits, labels, self.num_classes),
        )


@dataclass
class _Epoch:
    """The epoch in progress: the shuffle state it began from (which replays its order after a
    resume), its batches so far and their summed loss, and when it began."""

    number: int  # 1-based
    shuffle: Tensor
    batch: int = 0
    loss: Tensor | float = 0.0  # a tensor on the device while training: no wait per batch
    seen: int = 0
    began: float = field(default_factory=time.perf_counter)  # earlier runs' time counted in

    def add(self, loss: Tensor, samples: int) -> None:
        self.loss = loss * samples + self.loss
        self.seen += samples
        self.batch += 1

    @property
    def seconds(self) -> float:
        """Time spent on it, a resumed run's earlier share included; 0 before its first batch."""
        return time.perf_counter() - self.began if self.batch else 0.0


@dataclass
class _Progress:
    """Where `fit` stands: history, best epoch so far and the partial epoch a resume starts in;
    it captures the whole state of a run and restores it."""

    best_epoch: int
    history: list[EpochMetrics] = field(default_factory=list)
    best_value: float = -math.inf
    best_state: dict[str, Tensor] = field(default_factory=dict)
    partial: _Epoch | None = None

    @property
    def first_epoch(self) -> int:
        return len(self.history) + 1

    def epoch(self, loop: _Loop) -> _Epoch:
        """The epoch to train next: the resumed partial one once, then a fresh one."""
        current, self.partial = self.partial, None
        return current or _Epoch(self.first_epoch, loop.shuffle.get_state())

    def epoch_done(self, metrics: EpochMetrics, loop: _Loop) -> None:
        self.history.append(metrics)
        monitored = metrics.value(loop.cfg.monitor)
        loop.schedule.after_epoch(monitored)
        signed = metric.sign(loop.cfg.monitor) * monitored
        if math.isfinite(monitored) and signed > self.best_value:
            self.best_value, self.best_epoch = signed, metrics.epoch
            self.best_state = _cpu_state(loop.model)

    def capture(self, loop: _Loop, current: _Epoch) -> FitState:
        """Everything a resume needs, `current.batch` batches into epoch `current.number`."""
        return FitState(
            epoch=current.number - 1,
            batch=current.batch,
            model=_cpu_state(loop.model),
            optimizer=loop.optimizer.state_dict(),
            schedule=loop.schedule.state_dict(),
            rng=capture_rng(loop.augmentation),
            shuffle=current.shuffle,
            epoch_loss=float(current.loss),
            epoch_seen=current.seen,
            epoch_seconds=current.seconds,
            history=tuple(self.history),
            best_epoch=self.best_epoch,
            best_value=self.best_value,
            best_state=self.best_state,
        )

    @classmethod
    def restore(cls, state: FitState, loop: _Loop) -> "_Progress":
        """Put `loop` back where `state` was captured; the progress as it was then."""
        loop.model.load_state_dict(state.model)
        loop.optimizer.load_state_dict(state.optimizer)
        loop.schedule.load_state_dict(state.schedule)
        restore_rng(state.rng, loop.augmentation)
        loop.shuffle.set_state(state.shuffle)
        partial = _Epoch(
            state.epoch + 1,
            state.shuffle,
            batch=state.batch,
            loss=torch.full((), state.epoch_loss, device=loop.augmentation.device),
            seen=state.epoch_seen,
            began=time.perf_counter() - state.epoch_seconds,
        )
        return cls(
            best_epoch=state.best_epoch,
            history=list(state.history),
            best_value=state.best_value,
            best_state=state.best_state,
            partial=partial,
        )

    def result(self, model: nn.Module) -> FitResult:
        """The run at its best epoch, `model` loaded with those weights."""
        # Every epoch diverged: keep the last weights so the run still has them.
        best_state = self.best_state or _cpu_state(model)
        model.load_state_dict(best_state)
        return FitResult(self.history, self.best_epoch, best_state)


@dataclass
class _Saves:
    """When `fit` hands its state to the checkpointer: after every epoch but the last, and
    within an epoch once `every_s` seconds have passed since the last time."""

    checkpointer: Checkpointer | None
    last: float = field(default_factory=time.monotonic)

    def due(self) -> bool:
        return (
            self.checkpointer is not None
            and time.monotonic() - self.last >= self.checkpointer.every_s
        )

    def save(self, progress: _Progress, loop: _Loop, current: _Epoch) -> None:
        if self.checkpointer is not None:
            self.checkpointer(progress.capture(loop, current))
            self.last = time.monotonic()


def fit(
    model: nn.Module,
    data: TrainingData,
    config: RunConfig,
    listener: TrainListener | None = None,
    *,
    resume: FitState | None = None,
    checkpointer: Checkpointer | None = None,
    teaching: Teaching | None = None,
) -> FitResult:
    """Train `model` on `data` for `config.train.epochs`, keep the best epoch's weights by its
    monitor. From `resume` it goes on where that state was taken, and ends as the uninterrupted
    run would. With `teaching`, each image is one of its cached views and the loss also learns
    from the teacher's outputs for that view."""
    loop = _Loop.create(model, data, config, teaching)
    epochs = loop.cfg.epochs
    progress = _Progress.restore(resume, loop) if resume else _Progress(best_epoch=epochs)
    steps = data.train.num_batches(loop.cfg.batch_size)
    saves = _Saves(checkpointer)
    while progress.first_epoch <= epochs:
        current = progress.epoch(loop)
        if listener:
            listener.epoch_start(current.number, epochs, steps)
        loop.start_epoch(current.number)
        for index, images, labels in loop.batches(data.train, current.batch):
            loss = loop.step(index, images, labels)
            current.add(loss, labels.shape[0])
            if listener:
                listener.batch_end(loss)
            if current.batch < steps and saves.due():
                saves.save(progress, loop, current)
        metrics = loop.evaluate(current, data.val)
        progress.epoch_done(metrics, loop)
        if listener:
            listener.epoch_end(metrics)
        if current.number < epochs:
            saves.save(progress, loop, _Epoch(current.number + 1, loop.shuffle.get_state()))
    return progress.result(model)
