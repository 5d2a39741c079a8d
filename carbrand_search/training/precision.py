"""bf16 autocast and the channels_last layout: whether a device gets them, and applying them."""

from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import torch
from torch import Tensor, nn


def native_bf16(device: torch.device) -> bool:
    """Whether `device` computes in bf16 natively: CUDA, or a CPU with AVX-512 BF16 or AMX
    (oneDNN's bf16 kernels). Elsewhere bf16 is emulated and slower than float32."""
    if device.type == "cuda":
        return True
    return device.type == "cpu" and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


@dataclass(frozen=True)
class Precision:
    """How batches run: bf16 autocast (float32 weights and loss) and channels_last tensors."""

    bf16: bool = False
    channels_last: bool = False

    @classmethod
    def for_device(cls, device: torch.device, amp: bool, channels_last: bool) -> "Precision":
        """The study's `train.amp` where `device` runs bf16 natively, and its
        `train.channels_last` everywhere (faster on this CPU in float32 too: bench/RESULTS.md,
        "CPU precision")."""
        return cls(bf16=amp and native_bf16(device), channels_last=channels_last)

    def autocast(self, device: torch.device) -> AbstractContextManager[object]:
        if self.bf16:
            return torch.autocast(device.type, dtype=torch.bfloat16)
        return nullcontext()

    def prepare(self, model: nn.Module) -> nn.Module:
        if self.channels_last:
            model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        return model

    def input(self, x: Tensor) -> Tensor:
        """A float batch in the layout the model runs in."""
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x
