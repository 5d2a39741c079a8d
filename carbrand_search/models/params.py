"""Each model family's hyperparameters, typed and range-checked without importing torch or
timm, so a study file is validated (by `status`, `create`, the dashboard note) for free."""

from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar, Literal

from carbrand_search.core.fields import Bound, check_bounds

# What a scratch model may weigh: 100 M parameters are 0.4 GB of float32 weights, about 1.6 GB
# with gradients and AdamW's two moments. `filters = [4096, 4096, 4096]` with 31×31 kernels
# would have asked for 64 GB before the first batch; the estimate refuses it up front.
MAX_PARAMETERS = 100_000_000
HEAD_CLASSES = 1_000  # the estimate's allowance for the classifier: the class count comes later


def _refuse_heavy(estimate: int) -> None:
    if estimate > MAX_PARAMETERS:
        raise ValueError(
            f"model would have about {estimate / 1e6:,.0f} M parameters "
            f"({estimate * 4 / 2**30:,.1f} GiB of float32 weights); at most "
            f"{MAX_PARAMETERS / 1e6:,.0f} M"
        )


@dataclass(frozen=True)
class SmallCNNParams:
    """Hyperparameters of `small_cnn`: the seed's SmallCarCNN by default; `batch_norm` for _BN."""

    BOUNDS: ClassVar[Mapping[str, Bound]] = {
        "filters": Bound(1, 4096),
        "kernel_sizes": Bound(1, 31),
        "dense_units": Bound(1, 65536),
        "dropout": Bound(0, 1, high_open=True),
    }

    filters: tuple[int, ...] = (32, 64, 128)
    """Width of each conv block, 1 to 8 blocks."""
    kernel_sizes: tuple[int, ...] = (3,)
    """Odd kernel side per block; the last repeats for further blocks."""
    dense_units: int = 256
    """Width of the dense layer before the classifier."""
    dropout: float = 0.3
    """Dropout before the classifier."""
    batch_norm: bool = False
    """BatchNorm after every conv (the seed's _BN variant)."""

    def __post_init__(self) -> None:
        check_bounds("model", self, self.BOUNDS)
        if not 1 <= len(self.filters) <= 8:
            raise ValueError(f"model.filters needs 1 to 8 blocks, got {len(self.filters)}")
        if not 1 <= len(self.kernel_sizes) <= len(self.filters):
            raise ValueError(
                f"model.kernel_sizes needs 1 to {len(self.filters)} entries (one per block, the "
                f"last repeating), got {list(self.kernel_sizes)}"
            )
        if not all(k % 2 for k in self.kernel_sizes):
            raise ValueError(f"model.kernel_sizes must be odd, got {list(self.kernel_sizes)}")
        _refuse_heavy(self.parameters())

    def parameters(self) -> int:
        """About how many parameters the network has (an upper bound, without torch)."""
        kernels = self.kernel_sizes + self.kernel_sizes[-1:] * len(self.filters)
        widths = (3, *self.filters)
        convs = sum(
            widths[i] * widths[i + 1] * kernels[i] ** 2 + 3 * widths[i + 1]
            for i in range(len(self.filters))
        )
        return convs + (self.filters[-1] + 1 + HEAD_CLASSES) * self.dense_units + HEAD_CLASSES


@dataclass(frozen=True)
class ResNetParams:
    """Hyperparameters of `resnet`: stages of residual blocks, their widths, the stem."""

    BOUNDS: ClassVar[Mapping[str, Bound]] = {
        "layers": Bound(1, 8),
        "channels": Bound(4, 2048),
        "stem_width": Bound(4, 256),
        "drop_rate": Bound(0, 1, high_open=True),
        "drop_path_rate": Bound(0, 1, high_open=True),
    }

    block: Literal["basic", "bottleneck"] = "basic"
    """timm's BasicBlock (two 3×3 convs) or Bottleneck (1×1, 3×3, 1×1 to 4× the width)."""
    layers: tuple[int, ...] = (2, 2, 2, 2)
    """Residual blocks in each of the 4 stages."""
    channels: tuple[int, ...] = (32, 64, 128, 256)
    """Width of each of the 4 stages."""
    stem: Literal["conv7", "deep"] = "conv7"
    """timm's 7×7 stem (always 64 channels) or its deep stem of three 3×3 convs."""
    stem_width: int = 32
    """Deep stem only: its convs have stem_width, stem_width and 2 × stem_width channels."""
    stem_stride: Literal[2, 4] = 4
    """4 = timm's stride-2 conv plus max-pool; 2 drops the pool, keeping detail in small images
    at four times the compute of every stage."""
    attention: Literal["none", "se", "eca"] = "none"
    """Channel attention in every block: none, squeeze-and-excitation, or ECA."""
    drop_rate: float = 0.2
    """Dropout before the classifier."""
    drop_path_rate: float = 0.0
    """Stochastic depth, rising linearly to this in the last block."""

    def __post_init__(self) -> None:
        check_bounds("model", self, self.BOUNDS)
        # timm's ResNet runs exactly four stages (layer1 … layer4).
        if len(self.layers) != 4:
            raise ValueError(
                f"model.layers needs 4 stages of 1 to 8 blocks, got {list(self.layers)}"
            )
        if len(self.channels) != 4:
            raise ValueError(
                f"model.channels needs one width per stage (4), got {list(self.channels)}"
            )
        _refuse_heavy(self.parameters())

    def parameters(self) -> int:
        """About how many parameters the network has (an upper bound, without torch): timm's
        basic block is two 3×3 convs, its bottleneck 1×1, 3×3, 1×1 to 4× the width, each stage
        opening with a 1×1 projection."""
        stem = 3 * 64 * 49 if self.stem == "conv7" else 27 * self.stem_width * 4
        expansion = 1 if self.block == "basic" else 4
        total, width_in = stem, 64 if self.stem == "conv7" else 2 * self.stem_width
        for blocks, width in zip(self.layers, self.channels, strict=True):
            out = width * expansion
            total += width_in * out + self._block(width_in, width)
            total += (blocks - 1) * self._block(out, width)
            total += blocks * 2 * out * out // 8  # channel attention, at most (SE at 1/4)
            width_in = out
        return total + 4 * total // 100 + (width_in + 1) * HEAD_CLASSES  # + norms, the head

    def _block(self, width_in: int, width: int) -> int:
        if self.block == "basic":
            return width_in * width * 9 + width * width * 9
        return width_in * width + width * width * 9 + width * width * 4


@dataclass(frozen=True)
class TimmParams:
    """Hyperparameters of a timm backbone."""

    BOUNDS: ClassVar[Mapping[str, Bound]] = {"drop_rate": Bound(0, 1, high_open=True)}

    pretrained: bool = True
    """Start from ImageNet weights: timm's download, or `weights`."""
    weights: str = ""
    """A local safetensors or state-dict file of the weights (for machines offline)."""
    drop_rate: float = 0.2
    """Dropout before the classifier."""

    def __post_init__(self) -> None:
        check_bounds("model", self, self.BOUNDS)
