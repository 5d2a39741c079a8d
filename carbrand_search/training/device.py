"""The one parser of device names: `auto`, `cpu`, `cuda` or `cuda:N` → a device that exists."""

import torch

from carbrand_search.core.defaults import DEVICE_NAMES
from carbrand_search.core.errors import UserError


def resolve_device(name: str) -> torch.device:
    """`name` as a device this machine has: `auto` is CUDA when torch sees a GPU, else the CPU;
    `cuda` without an index is GPU 0. Anything else is a UserError naming --device."""
    if name == "auto":
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"--device must be {DEVICE_NAMES}, got {name!r}") from None
    if device.type == "cpu":
        return torch.device("cpu")
    if device.type != "cuda":
        raise UserError(f"--device must be {DEVICE_NAMES}, got {name!r}")
    gpus = torch.cuda.device_count()
    if gpus == 0:
        raise UserError(f"--device {name}: torch sees no CUDA GPU")
    index = device.index or 0
    if index >= gpus:
        raise UserError(f"--device {name}: torch sees {gpus} GPU(s), cuda:0 to cuda:{gpus - 1}")
    return torch.device("cuda", index)


def pinned_gpu(name: str) -> bool:
    """Whether `name` names one GPU (`cuda:N`) rather than letting the plan choose."""
    return name.startswith("cuda:")
