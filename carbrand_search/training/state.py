"""A training run's whole state between two batches, so an interrupted `fit` can go on exactly
where it stopped: weights, optimizer, LR schedule, every random generator, history, best epoch."""

import io
import random
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

StateDict = dict[str, Any]


@dataclass(frozen=True)
class FitState:
    """`fit` after `epoch` whole epochs and `batch` batches of the next one (0 at a boundary)."""

    epoch: int
    batch: int
    model: dict[str, Tensor]
    optimizer: StateDict
    schedule: StateDict
    rng: StateDict  # see `capture_rng`
    shuffle: Tensor  # the shuffle generator at the start of the epoch in progress
    epoch_loss: float  # the partial epoch's summed loss and sample count
    epoch_seen: int
    epoch_seconds: float
    history: tuple[dict[str, float], ...]
    best_epoch: int
    best_value: float
    best_state: dict[str, Tensor]

    def to_bytes(self) -> bytes:
        buffer = io.BytesIO()
        torch.save({name: getattr(self, name) for name in self.__dataclass_fields__}, buffer)
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> "FitState":
        # weights_only: a resume file from a shared store is never a pickle that runs code.
        fields = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        fields["history"] = tuple(fields["history"])
        return cls(**fields)


def capture_rng(augment: torch.Generator) -> StateDict:
    """Python, NumPy (timm's Mixup), torch's global generators (dropout) and augmentation's,
    in types `torch.load(weights_only=True)` accepts."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state(legacy=True)
    assert isinstance(keys, np.ndarray)  # legacy=True: the MT19937 tuple, never a dict
    state: StateDict = {
        "python": random.getstate(),
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss),
        "torch": torch.get_rng_state(),
        "augment": augment.get_state(),
    }
    if augment.device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(augment.device)
    return state


def restore_rng(state: StateDict, augment: torch.Generator) -> None:
    """Undo everything drawn since `capture_rng`."""
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    augment.set_state(state["augment"])
    if "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], augment.device)
