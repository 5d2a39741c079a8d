"""The one parser of device names: `auto`, `cpu`, `cuda` or `cuda:N` → a device that exists."""

from collections.abc import Callable

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


class PeakMemory:
    """Context manager: on leaving, calls `report` with the most memory torch allocated on the
    CUDA `device` inside it, in bytes (nothing on the CPU, where torch does not count)."""

    def __init__(self, device: torch.device, report: Callable[[int], None]) -> None:
        self.device, self.report = device, report

    def __enter__(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            self.report(int(torch.cuda.max_memory_allocated(self.device)))


def available_memory(device: torch.device) -> int | None:
    """Bytes this process could use on the CUDA `device`: free now (every process counted)
    plus what it holds already (its data split), which is what a trial's peak also counts.
    None on the CPU."""
    if device.type != "cuda":
        return None
    torch.cuda.empty_cache()  # blocks cached by finished trials are free for anyone
    return int(torch.cuda.mem_get_info(device)[0] + torch.cuda.memory_allocated(device))
