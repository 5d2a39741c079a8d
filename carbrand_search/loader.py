"""Batches straight from the decoded cache: no DataLoader workers, no per-step JPEG decoding."""

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor


@dataclass(frozen=True)
class DeviceSplit:
    """A cached split's uint8 images and labels, resident where batches are consumed."""

    images: Tensor  # (N, S, S, 3) uint8
    labels: Tensor  # (N,) int64

    @classmethod
    def from_arrays(
        cls, images: np.ndarray, labels: np.ndarray, device: torch.device
    ) -> "DeviceSplit":
        """On CUDA the whole split moves to the GPU once; on CPU it stays memory-mapped."""
        return cls(torch.from_numpy(images).to(device), torch.from_numpy(labels).to(device))

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def num_batches(self, batch_size: int) -> int:
        return -(-len(self) // batch_size)

    def batches(
        self, batch_size: int, generator: torch.Generator | None = None
    ) -> Iterator[tuple[Tensor, Tensor]]:
        """(images, labels) batches; shuffled when a generator is given, in order otherwise."""
        n = len(self)
        if generator is None:
            for start in range(0, n, batch_size):
                yield (
                    self.images[start : start + batch_size],
                    self.labels[start : start + batch_size],
                )
            return
        order = torch.randperm(n, generator=generator).to(self.labels.device)
        for start in range(0, n, batch_size):
            index = order[start : start + batch_size]
            yield self.images[index], self.labels[index]
