"""Batched augmentation of cached uint8 images, on whatever device the batch lives on."""

import functools
import math
from dataclasses import dataclass

import torch
from torch import Tensor

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
        """uint8 (N, S, S, 3) → normalised float (N, 3, s, s), centre crop."""
        size = images.shape[1]
        out = self.data.image_size
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
        # Imported here: torchvision.ops loads torch._dynamo, which only resized crops need.
        from torchvision.ops import roi_align

        x = _to_float(images)
        area = self._uniform(n, self.data.min_scale, 1.0, x, g) * size * size
        log_ratio = self._uniform(n, math.log(3 / 4), math.log(4 / 3), x, g)
        w = torch.sqrt(area * torch.exp(log_ratio)).clamp(max=size)
        h = torch.sqrt(area / torch.exp(log_ratio)).clamp(max=size)
        x0f = torch.rand(n, device=x.device, generator=g) * (size - w)
        y0f = torch.rand(n, device=x.device, generator=g) * (size - h)
        index = torch.arange(n, device=x.device, dtype=x.dtype)
        boxes = torch.stack([index, x0f, y0f, x0f + w, y0f + h], dim=1)
        return roi_align(
            x, boxes, output_size=out, spatial_scale=1.0, sampling_ratio=-1, aligned=True
        )

    def _jitter(self, x: Tensor, g: torch.Generator) -> Tensor:
        n, j = x.shape[0], self.data.color_jitter
        brightness = self._uniform(n, 1 - j, 1 + j, x, g).view(n, 1, 1, 1)
        contrast = self._uniform(n, 1 - j, 1 + j, x, g).view(n, 1, 1, 1)
        saturation = self._uniform(n, 1 - j, 1 + j, x, g).view(n, 1, 1, 1)
        x = x * brightness
        gray = (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).unsqueeze(1)
        x = (x - gray.mean(dim=(2, 3), keepdim=True)) * contrast + gray.mean(
            dim=(2, 3), keepdim=True
        )
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
