"""Batched augmentation of cached uint8 images, on whatever device the batch lives on."""

import math
from dataclasses import dataclass

import torch
from torch import Tensor
from torchvision.ops import roi_align

from carbrand_search.spec import DataConfig


@dataclass(frozen=True)
class Augment:
    """Crop/flip/jitter settings plus the model's normalisation."""

    data: DataConfig
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def _normalize(self, x: Tensor) -> Tensor:
        mean = torch.tensor(self.mean, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(1, 3, 1, 1)
        return (x - mean) / std

    def eval_batch(self, images: Tensor) -> Tensor:
        """uint8 (N, S, S, 3) → normalised float (N, 3, s, s), centre crop."""
        size = images.shape[1]
        out = self.data.image_size
        top = (size - out) // 2
        crop = images[:, top : top + out, top : top + out, :]
        return self._normalize(crop.permute(0, 3, 1, 2).float().div_(255))

    def train_batch(self, images: Tensor, generator: torch.Generator) -> Tensor:
        """uint8 (N, S, S, 3) → normalised float (N, 3, s, s): random crop, flip, colour jitter."""
        x = images.permute(0, 3, 1, 2).float().div_(255)
        x = self._random_crop(x, generator)
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

    def _random_crop(self, x: Tensor, g: torch.Generator) -> Tensor:
        n, size, out = x.shape[0], x.shape[2], self.data.image_size
        if self.data.crop == "random":
            # Integer offsets and an out×out box: roi_align then samples pixel centres exactly.
            w = h = torch.full((n,), float(out), device=x.device)
            x0 = torch.randint(0, size - out + 1, (n,), device=x.device, generator=g).float()
            y0 = torch.randint(0, size - out + 1, (n,), device=x.device, generator=g).float()
        else:
            area = self._uniform(n, self.data.min_scale, 1.0, x, g) * size * size
            log_ratio = self._uniform(n, math.log(3 / 4), math.log(4 / 3), x, g)
            w = torch.sqrt(area * torch.exp(log_ratio)).clamp(max=size)
            h = torch.sqrt(area / torch.exp(log_ratio)).clamp(max=size)
            x0 = torch.rand(n, device=x.device, generator=g) * (size - w)
            y0 = torch.rand(n, device=x.device, generator=g) * (size - h)
        index = torch.arange(n, device=x.device, dtype=x.dtype)
        boxes = torch.stack([index, x0, y0, x0 + w, y0 + h], dim=1)
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
