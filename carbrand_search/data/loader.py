"""Batches straight from the decoded cache: no DataLoader workers, no per-step JPEG decoding."""

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor


@dataclass(frozen=True)
class DeviceSplit:
    """A cached split's uint8 images and labels, resident where batches are consumed."""

    images: Tensor  # (N, S, S, 3) uint8, on `device` or (if it did not fit) in pinned host memory
    labels: Tensor  # (N,) int64, on `device`
    device: torch.device

    @classmethod
    def from_arrays(
        cls, images: np.ndarray, labels: np.ndarray, device: torch.device
    ) -> "DeviceSplit":
        """On CUDA the whole split moves to the GPU once (pinned host memory with non-blocking
        copies per batch when it does not fit); on CPU it stays memory-mapped."""
        host = torch.from_numpy(images)
        resident = host
        if device.type == "cuda":
            try:
                resident = host.to(device)
            except torch.cuda.OutOfMemoryError:
                resident = host.pin_memory()
        return cls(resident, torch.from_numpy(labels).to(device), device)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def num_batches(self, batch_size: int) -> int:
        return -(-len(self) // batch_size)

    def batches(
        self,
        batch_size: int,
        generator: torch.Generator | None = None,
        draw_weights: Tensor | None = None,
        skip: int = 0,
    ) -> Iterator[tuple[Tensor, Tensor]]:
        """(images, labels) batches of `indexed_batches`."""
        for _, images, labels in self.indexed_batches(batch_size, generator, draw_weights, skip):
            yield images, labels

    def indexed_batches(
        self,
        batch_size: int,
        generator: torch.Generator | None = None,
        draw_weights: Tensor | None = None,
        skip: int = 0,
    ) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
        """(row numbers on the host, images, labels) batches; shuffled when a generator is
        given, in order otherwise. With `draw_weights` (one per sample) an epoch is as many
        draws with replacement, each sample drawn in proportion to its weight. The first `skip`
        batches are left out (the order is drawn all the same, so a resumed epoch goes on as it
        began)."""
        n = len(self)
        if generator is None:
            for start in range(skip * batch_size, n, batch_size):
                index = torch.arange(start, min(start + batch_size, n))
                yield (
                    index,
                    self._on_device(self.images[start : start + batch_size]),
                    self.labels[start : start + batch_size],
                )
            return
        order = (
            torch.randperm(n, generator=generator)
            if draw_weights is None
            else torch.multinomial(draw_weights, n, replacement=True, generator=generator)
        )
        # One copy of the order per device and epoch, not a host-to-GPU copy per batch.
        image_order, label_order = order.to(self.images.device), order.to(self.device)
        for start in range(skip * batch_size, n, batch_size):
            images = self._gather(image_order[start : start + batch_size])
            labels = self.labels[label_order[start : start + batch_size]]
            yield order[start : start + batch_size], self._on_device(images), labels

    def rows(self, index: Tensor) -> Tensor:
        """The images of rows `index` (on the host), on the device."""
        return self._on_device(self._gather(index.to(self.images.device)))

    def _gather(self, index: Tensor) -> Tensor:
        if self.images.is_pinned():
            # Indexing would return pageable memory, whose "non-blocking" copy blocks: gather into
            # pinned memory (PyTorch's caching host allocator) so the copy overlaps the GPU's work.
            shape = (index.shape[0], *self.images.shape[1:])
            out = torch.empty(shape, dtype=self.images.dtype, pin_memory=True)
            return torch.index_select(self.images, 0, index, out=out)
        return self.images[index]

    def _on_device(self, images: Tensor) -> Tensor:
        return (
            images if images.device == self.device else images.to(self.device, non_blocking=True)
        )
