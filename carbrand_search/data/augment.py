"""Batched augmentation of cached uint8 images, on whatever device the batch lives on."""

import functools
import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from carbrand_search.core.config import DataConfig


@dataclass(frozen=True)
class Augment:
    """Crop/flip/jitter settings plus the model's normalisation."""

    data: DataConfig
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def _normalize(self, x: Tensor) -> Tensor:
        return (x - _channels(self.mean, x.device)) / _channels(self.std, x.device)

    def eval_batch(self, images: Tensor) -> Tensor:
        """uint8 (N, S, S, 3) → normalised float (N, 3, s, s): the centre crop that random crops
        are taken around, or (resized crops) the whole square scaled to s, which the largest
        training crops show; a centre crop would cut off the ends of a letterboxed car."""
        size = images.shape[1]
        out = self.data.image_size
        if self.data.crop == "resized":
            x = _to_float(images)
            if size != out:
                x = nn.functional.interpolate(
                    x, size=(out, out), mode="bilinear", antialias=True, align_corners=False
                )
            return self._normalize(x)
        top = (size - out) // 2
        crop = images[:, top : top + out, top : top + out, :]
        return self._normalize(_to_float(crop))

    def train_batch(self, images: Tensor, generator: torch.Generator) -> Tensor:
        """uint8 (N, S, S, 3) → normalised float (N, 3, s, s): random crop, flip, colour jitter."""
        x = self._random_crop(images, generator)
        n = x.shape[0]
        if self.data.hflip:
            flip = torch.rand(n, device=x.device, generator=generator) < 0.5
            x = torch.where(flip.view(n, 1, 1, 1), x.flip(3), x)
        if self.data.color_jitter > 0:
            x = self._jitter(x, generator)
        return self._normalize(x)

    def _uniform(
        self, n: int, low: float, high: float, like: Tensor, g: torch.Generator
    ) -> Tensor:
        return low + (high - low) * torch.rand(n, device=like.device, generator=g)

    def _random_crop(self, images: Tensor, g: torch.Generator) -> Tensor:
        """uint8 (N, S, S, 3) → float (N, 3, s, s) in [0, 1]."""
        n, size, out = images.shape[0], images.shape[1], self.data.image_size
        if self.data.crop == "random":
            # Integer offsets: gather the uint8 crop first, so only s×s pixels become floats.
            x0 = torch.randint(0, size - out + 1, (n,), device=images.device, generator=g)
            y0 = torch.randint(0, size - out + 1, (n,), device=images.device, generator=g)
            steps = torch.arange(out, device=images.device)
            rows = (y0[:, None] + steps)[:, :, None]
            cols = (x0[:, None] + steps)[:, None, :]
            batch = torch.arange(n, device=images.device)[:, None, None]
            return _to_float(images[batch, rows, cols])
        x = _to_float(images)
        return _crop_boxes(x, self.draw_boxes(n, self.data.min_scale, g, x.device) * size, out)

    @staticmethod
    def draw_boxes(
        n: int, min_scale: float, g: torch.Generator, device: torch.device | None = None
    ) -> Tensor:
        """RandomResizedCrop boxes (x0, y0, x1, y1) as fractions of the image side: area in
        [min_scale, 1] of the image, aspect ratio in [3/4, 4/3]."""
        area = min_scale + (1 - min_scale) * torch.rand(n, device=device, generator=g)
        low, high = math.log(3 / 4), math.log(4 / 3)
        ratio = torch.exp(low + (high - low) * torch.rand(n, device=device, generator=g))
        w = torch.sqrt(area * ratio).clamp(max=1)
        h = torch.sqrt(area / ratio).clamp(max=1)
        x0 = torch.rand(n, device=device, generator=g) * (1 - w)
        y0 = torch.rand(n, device=device, generator=g) * (1 - h)
        return torch.stack([x0, y0, x0 + w, y0 + h], dim=1)

    def view_batch(self, images: Tensor, boxes: Tensor, flips: Tensor, jitter: Tensor) -> Tensor:
        """uint8 (N, S, S, 3) → normalised float (N, 3, s, s) for given views: crop boxes as
        fractions of the side, flips, jitter factors (`distill.Views`). The same view gives the
        same crop and flip at any cache size and resolution."""
        n, size = images.shape[0], images.shape[1]
        x = _crop_boxes(_to_float(images), boxes * size, self.data.image_size)
        x = torch.where(flips.view(n, 1, 1, 1), x.flip(3), x)
        return self._normalize(_color(x, jitter))

    def _jitter(self, x: Tensor, g: torch.Generator) -> Tensor:
        n, j = x.shape[0], self.data.color_jitter
        return _color(x, torch.stack([self._uniform(n, 1 - j, 1 + j, x, g) for _ in range(3)], 1))


def _crop_boxes(x: Tensor, boxes: Tensor, out: int) -> Tensor:
    """float (N, 3, S, S) → (N, 3, out, out): box i (x0, y0, x1, y1 in pixels) of image i,
    resampled with averaging (roi_align's adaptive sampling), which antialiases a shrink."""
    # Imported here: torchvision.ops loads torch._dynamo, which only resized crops need.
    from torchvision.ops import roi_align

    index = torch.arange(x.shape[0], device=x.device, dtype=x.dtype)
    rois = torch.cat([index[:, None], boxes.to(x.dtype)], dim=1)
    return roi_align(x, rois, output_size=out, spatial_scale=1.0, sampling_ratio=-1, aligned=True)


def _color(x: Tensor, factors: Tensor) -> Tensor:
    """Brightness, contrast and saturation factors (N, 3) applied to float (N, 3, H, W)."""
    n = x.shape[0]
    brightness, contrast, saturation = (factors[:, i].view(n, 1, 1, 1) for i in range(3))
    x = x * brightness
    gray = (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).unsqueeze(1)
    mean = gray.mean(dim=(2, 3), keepdim=True)
    x = (x - mean) * contrast + mean
    gray = (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).unsqueeze(1)
    x = (x - gray) * saturation + gray
    return x.clamp_(0, 1)


def _to_float(images: Tensor) -> Tensor:
    """uint8 (N, H, W, 3) → float (N, 3, H, W) in [0, 1]."""
    return images.permute(0, 3, 1, 2).float().div_(255)


@functools.cache
def _channels(values: tuple[float, ...], device: torch.device) -> Tensor:
    """Per-channel constants as a (1, 3, 1, 1) tensor, made once per device: building it per batch
    copies from host memory, which on CUDA waits for the GPU's queue to drain."""
    return torch.tensor(values, device=device).view(1, 3, 1, 1)
