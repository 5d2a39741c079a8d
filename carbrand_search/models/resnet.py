"""Small ResNets trained from scratch, assembled from timm's `ResNet` and its blocks."""

from typing import Any

from timm.models.resnet import BasicBlock, Bottleneck, ResNet
from torch import nn

from carbrand_search.models.params import ResNetParams

BLOCKS = {"basic": BasicBlock, "bottleneck": Bottleneck}  # 2 or 3 convolutions per block
STEMS = {"conv7": "", "deep": "deep"}  # timm's stem types: one 7×7 conv, or three 3×3 convs


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
