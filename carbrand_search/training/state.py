"""A training run's whole state between two batches, so an interrupted `fit` can go on exactly
where it stopped: weights, optimizer, LR schedule, every random generator, history, best epoch."""

import json
import random
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from carbrand_search.core.errors import first_line
from carbrand_search.core.metric import EpochMetrics

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
    history: tuple[EpochMetrics, ...]
    best_epoch: int
    best_value: float
    best_state: dict[str, Tensor]

    def to_bytes(self) -> bytes:
        """safetensors: every tensor as data, everything else (counters, the RNG states, the
        history) as JSON in its header. Reading it back runs no code, whatever torch is
        installed: no pickle, so no `weights_only` loader to get around."""
        from safetensors.torch import save

        tensors: dict[str, Tensor] = {}
        values = {name: getattr(self, name) for name in self.__dataclass_fields__}
        values["history"] = tuple(m.to_dict() for m in self.history)
        fields = {name: _encode(value, tensors) for name, value in values.items()}
        # safetensors refuses tensors that share memory (a weight kept in two places).
        seen: set[int] = set()
        for name, tensor in tensors.items():
            memory = tensor.untyped_storage().data_ptr()
            if memory in seen:
                tensors[name] = tensor.clone()
            seen.add(memory)
        return save(tensors, metadata={STATE_KEY: json.dumps(fields)})

    @classmethod
    def from_bytes(cls, data: bytes) -> "FitState":
        """The state `to_bytes` wrote; ValueError when the bytes are not one."""
        from safetensors import SafetensorError
        from safetensors.torch import load

        try:
            header = json.loads(data[8 : 8 + int.from_bytes(data[:8], "little")])
            fields = json.loads(header["__metadata__"][STATE_KEY])
            tensors = load(data)
            state = {name: _decode(value, tensors) for name, value in fields.items()}
            if set(state) != set(cls.__dataclass_fields__):
                raise ValueError("its fields differ")
            state["history"] = tuple(map(EpochMetrics.from_dict, state["history"]))
        except (KeyError, TypeError, ValueError, SafetensorError) as e:
            raise ValueError(f"not a resume point ({first_line(e)})") from e
        return cls(**state)


STATE_KEY = "carbrand_search.fit_state"


def _encode(value: Any, tensors: dict[str, Tensor]) -> Any:
    """`value` as JSON, its tensors moved into `tensors` (named by their order); tuples and
    dicts with keys other than strings (an optimizer's per-parameter state) tagged so they
    come back as they were."""
    if isinstance(value, Tensor):
        name = str(len(tensors))
        tensors[name] = value.detach().cpu().contiguous()
        return {"tensor": name}
    if isinstance(value, tuple):
        return {"tuple": [_encode(v, tensors) for v in value]}
    if isinstance(value, dict):
        if all(isinstance(k, str) for k in value):
            return {"dict": {k: _encode(v, tensors) for k, v in value.items()}}
        return {"items": [[_encode(k, tensors), _encode(v, tensors)] for k, v in value.items()]}
    if isinstance(value, list):
        return [_encode(v, tensors) for v in value]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    raise TypeError(f"a resume point holds no {type(value).__name__}")


def _decode(value: Any, tensors: dict[str, Tensor]) -> Any:
    if isinstance(value, list):
        return [_decode(v, tensors) for v in value]
    if not isinstance(value, dict):
        return value
    ((tag, inner),) = value.items()
    if tag == "tensor":
        return tensors[inner]
    if tag == "tuple":
        return tuple(_decode(v, tensors) for v in inner)
    if tag == "dict":
        return {k: _decode(v, tensors) for k, v in inner.items()}
    return {_decode(k, tensors): _decode(v, tensors) for k, v in inner}


def capture_rng(augment: torch.Generator) -> StateDict:
    """Python, NumPy (timm's Mixup), torch's global generators (dropout) and augmentation's,
    as numbers, tuples and tensors (what a resume point stores)."""
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
