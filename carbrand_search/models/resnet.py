"""Small ResNets trained from scratch, assembled from timm's `ResNet` and its blocks."""

from dataclasses import dataclass
from typing import Any, Literal

from timm.models.resnet import BasicBlock, Bottleneck, ResNet
from torch import nn

BLOCKS = {"basic": BasicBlock, "bottleneck": Bottleneck}  # 2 or 3 convolutions per block
STEMS = {"conv7": "", "deep": "deep"}  # timm's stem types: one 7×7 conv, or three 3×3 convs


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


def build_resnet(num_classes: int, params: ResNetParams) -> nn.Module:
    """timm's ResNet at random initialisation (zero-initialised last norm of each block)."""
    block_args: dict[str, Any] = {}
    if params.attention != "none":
        block_args["attn_layer"] = params.attention
    model = ResNet(
        block=BLOCKS[params.block],  # type: ignore[arg-type]
        layers=params.layers,
        channels=params.channels,
        num_classes=num_classes,
        stem_width=params.stem_width,
        stem_type=STEMS[params.stem],
        drop_rate=params.drop_rate,
        drop_path_rate=params.drop_path_rate,
        block_args=block_args,
    )
    if params.stem_stride == 2:
        model.maxpool = nn.Identity()  # type: ignore[assignment]
    return model


def last_stage(model: Any) -> nn.Module:
    """The last residual stage: the Grad-CAM layer."""
    return model.get_submodule(model.feature_info[-1]["module"])
