"""Distillation: the loss, the fixed augmented views and the teacher's predictions for every
view of every training image, or the teacher run on every batch.

timm's `LogitDistillationTask` computes the same loss inside its forward pass, which runs the
teacher on every batch; with cached views the teacher ran once per study, so the loss is taken
against stored logits (with timm's formula: batch-mean KL of log-probabilities, times T²)."""

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
from torch import Tensor, nn

from carbrand_search.core.config import DataConfig
from carbrand_search.data.augment import Augment
from carbrand_search.data.loader import DeviceSplit
from carbrand_search.training.precision import Precision


def distillation_loss(
    logits: Tensor,
    labels: Tensor,
    teacher_logits: Tensor,
    criterion: Callable[[Tensor, Tensor], Tensor],
    alpha: float,
    temperature: float,
) -> Tensor:
    """(1 − α)·criterion(logits, labels) + α·T²·KL(softmax(teacher/T) ‖ softmax(logits/T)).
    α = 0 is exactly the plain loss: the teacher term is not even computed."""
    task = criterion(logits, labels)
    if alpha == 0:
        return task
    student = nn.functional.log_softmax(logits / temperature, dim=-1)
    teacher = nn.functional.log_softmax(teacher_logits.float() / temperature, dim=-1)
    kd = nn.functional.kl_div(student, teacher, reduction="batchmean", log_target=True)
    return (1 - alpha) * task + alpha * temperature**2 * kd


@dataclass(frozen=True)
class SoftTargets:
    """What a teacher's outputs say beyond the label, at the distillation temperature. A teacher
    trained with label smoothing spreads its wrong classes evenly (`others_entropy` near 1),
    which tells a student nothing about which makes look alike (Müller et al., NeurIPS 2019)."""

    agreement: float  # share of views whose top class is the label
    label_prob: float  # mean probability on the label at T
    others_entropy: float  # mean entropy of the non-top classes, renormalised, over ln(C − 1)


def soft_targets(logits: Tensor, labels: Tensor, temperature: float) -> SoftTargets:
    """`logits` (N, K, C) of K views of N images with `labels` (N,), summarised at T."""
    labels = labels.long()[:, None].expand(logits.shape[:2])
    p = (logits.float() / temperature).softmax(-1)
    top = p.argmax(-1, keepdim=True)
    others = p.scatter(-1, top, 0.0)
    others = others / others.sum(-1, keepdim=True)
    entropy = -(others * others.clamp_min(1e-12).log()).sum(-1) / math.log(p.shape[-1] - 1)
    return SoftTargets(
        agreement=(top.squeeze(-1) == labels).float().mean().item(),
        label_prob=p.gather(-1, labels[..., None]).mean().item(),
        others_entropy=entropy.mean().item(),
    )


@dataclass(frozen=True)
class Views:
    """K fixed augmented views of each of N images: crop boxes as fractions of the image side
    (x0, y0, x1, y1), horizontal flips and colour-jitter factors (brightness, contrast,
    saturation). Fractions make one box the same part of a photo at any resolution."""

    boxes: Tensor  # (N, K, 4) float32
    flips: Tensor  # (N, K) bool
    jitter: Tensor  # (N, K, 3) float32

    def to(self, device: torch.device) -> "Views":
        return Views(self.boxes.to(device), self.flips.to(device), self.jitter.to(device))

    @property
    def count(self) -> int:
        return int(self.boxes.shape[1])

    def pick(self, index: Tensor, view: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The boxes, flips and jitter of view `view[i]` of image `index[i]`."""
        return self.boxes[index, view], self.flips[index, view], self.jitter[index, view]


def draw_views(n: int, k: int, data: DataConfig, g: torch.Generator) -> Views:
    """K views per image as the study's augmentation draws them, on `g`'s device:
    RandomResizedCrop boxes (area in [min_scale, 1], aspect in [3/4, 4/3]), flips when `hflip`,
    jitter of `color_jitter`."""
    device = g.device
    boxes = Augment.draw_boxes(n * k, data.min_scale, g, device).view(n, k, 4)
    flips = (torch.rand(n, k, generator=g, device=device) < 0.5) & data.hflip
    j = data.color_jitter
    jitter = 1 - j + 2 * j * torch.rand(n, k, 3, generator=g, device=device)
    return Views(boxes, flips, jitter)


@dataclass(frozen=True)
class TeacherViews:
    """The views of the training split and the teacher's logits for each, (N, K, classes)."""

    views: Views
    logits: Tensor

    def to(self, device: torch.device) -> "TeacherViews":
        return TeacherViews(self.views.to(device), self.logits.to(device))

    def taught_batch(
        self, augment: Augment, index: Tensor, images: Tensor, generator: torch.Generator
    ) -> tuple[Tensor, Tensor]:
        """One random cached view of each image (rows `index` of the split) and the teacher's
        logits for exactly those views."""
        view = torch.randint(
            0, self.views.count, index.shape, device=images.device, generator=generator
        )
        rows = index.to(images.device)
        return augment.view_batch(images, *self.views.pick(rows, view)), self.logits[rows, view]


@dataclass(frozen=True)
class LiveTeacher:
    """The teacher run on every batch: a fresh view of each image every step, cropped from the
    teacher's own cache of the training split at its own resolution: a teacher forward pass per
    step, which a GPU affords; on a CPU it costs about a small student's step or more."""

    model: nn.Module  # in eval mode, prepared for `precision`
    split: DeviceSplit  # the training split at the teacher's cache size
    augment: Augment  # the teacher's resolution and normalisation
    precision: Precision

    def taught_batch(
        self, augment: Augment, index: Tensor, images: Tensor, generator: torch.Generator
    ) -> tuple[Tensor, Tensor]:
        """A fresh view of each image (rows `index`), drawn with the student's augmentation,
        and the teacher's logits for it."""
        fresh = draw_views(index.shape[0], 1, augment.data, generator)
        boxes, flips, jitter = fresh.boxes[:, 0], fresh.flips[:, 0], fresh.jitter[:, 0]
        seen = self.augment.view_batch(self.split.rows(index), boxes, flips, jitter)
        with torch.no_grad(), self.precision.autocast(seen.device):
            logits = self.model(self.precision.input(seen)).float()
        return augment.view_batch(images, boxes, flips, jitter), logits


@torch.no_grad()
def teacher_logits(
    model: nn.Module,
    split: DeviceSplit,
    views: Views,
    augment: Augment,
    precision: Precision,
    batch_size: int = 64,
    on_progress: Callable[[int, int], None] | None = None,
) -> Tensor:
    """The teacher's float32 logits for every view of every image of `split`, (N, K, C), each
    view cropped from the teacher's own cache at the teacher's resolution."""
    model.eval()
    precision.prepare(model)
    device = split.device
    outputs: list[list[Tensor]] = [[] for _ in range(views.count)]
    total, done = len(split) * views.count, 0
    for index, images, _ in split.indexed_batches(batch_size):
        for k in range(views.count):
            chosen = torch.full_like(index, k)
            x = augment.view_batch(images, *views.pick(index.to(device), chosen.to(device)))
            with precision.autocast(device):
                outputs[k].append(model(precision.input(x)).float().cpu())
            done += len(index)
            if on_progress:
                on_progress(done, total)
    return torch.stack([torch.cat(per_view) for per_view in outputs], dim=1)


@dataclass(frozen=True)
class Teaching:
    """A trial's distillation: the study's teacher (its cached views on the training device, or
    the model itself) and the trial's weight and temperature."""

    teacher: TeacherViews | LiveTeacher
    alpha: float
    temperature: float

    def batch(
        self,
        augment: Augment,
        index: Tensor,
        images: Tensor,
        generator: torch.Generator,
        criterion: Callable[[Tensor, Tensor], Tensor],
    ) -> tuple[Tensor, Callable[[Tensor, Tensor], Tensor]]:
        """A view of each image (rows `index` of the split) and the loss that compares the
        student with the teacher's outputs for exactly those views."""
        x, taught = self.teacher.taught_batch(augment, index, images, generator)
        loss = partial(
            distillation_loss,
            teacher_logits=taught,
            criterion=criterion,
            alpha=self.alpha,
            temperature=self.temperature,
        )
        return x, loss
