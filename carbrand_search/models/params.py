"""Each model family's hyperparameters, typed and range-checked without importing torch or
timm, so a study file is validated (by `status`, `create`, the dashboard note) for free."""

from dataclasses import dataclass
from typing import Literal

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

    filters: tuple[int, ...] = (32, 64, 128)
    kernel_sizes: tuple[int, ...] = (3,)  # per block; the last repeats for further blocks
    dense_units: int = 256
    dropout: float = 0.3
    batch_norm: bool = False

    def __post_init__(self) -> None:
        if not 1 <= len(self.filters) <= 8:
            raise ValueError(f"model.filters needs 1 to 8 blocks, got {len(self.filters)}")
        if not all(1 <= f <= 4096 for f in self.filters):
            raise ValueError(f"model.filters must be in [1, 4096], got {list(self.filters)}")
        if not 1 <= len(self.kernel_sizes) <= len(self.filters):
            raise ValueError(
                f"model.kernel_sizes needs 1 to {len(self.filters)} entries (one per block, the "
                f"last repeating), got {list(self.kernel_sizes)}"
            )
        if not all(1 <= k <= 31 and k % 2 for k in self.kernel_sizes):
            raise ValueError(
                f"model.kernel_sizes must be odd and in [1, 31], got {list(self.kernel_sizes)}"
            )
        if not 1 <= self.dense_units <= 65536:
            raise ValueError(f"model.dense_units must be in [1, 65536], got {self.dense_units}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"model.dropout must be in [0, 1), got {self.dropout}")
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

    block: Literal["basic", "bottleneck"] = "basic"
    layers: tuple[int, ...] = (2, 2, 2, 2)  # residual blocks in each of the 4 stages
    channels: tuple[int, ...] = (32, 64, 128, 256)  # width of each stage
    stem: Literal["conv7", "deep"] = "conv7"
    stem_width: int = 32  # deep stem only: 3×3 convs of stem_width, stem_width, 2×stem_width
    # (timm's 7×7 stem always has 64 channels)
    # 4 = timm's stride-2 conv plus max-pool; 2 drops the pool, keeping detail in small images
    # at four times the compute of every stage.
    stem_stride: Literal[2, 4] = 4
    attention: Literal["none", "se", "eca"] = "none"  # channel attention in every block
    drop_rate: float = 0.2  # dropout before the classifier
    drop_path_rate: float = 0.0  # stochastic depth, rising linearly to this in the last block

    def __post_init__(self) -> None:
        # timm's ResNet runs exactly four stages (layer1 … layer4).
        if len(self.layers) != 4 or not all(1 <= n <= 8 for n in self.layers):
            raise ValueError(
                f"model.layers needs 4 stages of 1 to 8 blocks, got {list(self.layers)}"
            )
        if len(self.channels) != 4:
            raise ValueError(
                f"model.channels needs one width per stage (4), got {list(self.channels)}"
            )
        if not all(4 <= c <= 2048 for c in self.channels):
            raise ValueError(f"model.channels must be in [4, 2048], got {list(self.channels)}")
        if not 4 <= self.stem_width <= 256:
            raise ValueError(f"model.stem_width must be in [4, 256], got {self.stem_width}")
        for name in ("drop_rate", "drop_path_rate"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"model.{name} must be in [0, 1), got {getattr(self, name)}")
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
    """Hyperparameters of a timm backbone; `weights` is a local safetensors/state-dict file."""

    pretrained: bool = True
    weights: str = ""
    drop_rate: float = 0.2

    def __post_init__(self) -> None:
        if not 0.0 <= self.drop_rate < 1.0:
            raise ValueError(f"model.drop_rate must be in [0, 1), got {self.drop_rate}")
