"""The seed's from-scratch CNN: conv blocks, global average pool, dropout, dense head."""

from torch import Tensor, nn

from carbrand_search.models.params import SmallCNNParams


class ConvBlock(nn.Module):
    """Conv → (BatchNorm) → ReLU → 2× max-pool; `act` is the Grad-CAM target."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, batch_norm: bool):
        super().__init__()
        self.conv = nn.Conv2d(
            in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=not batch_norm
        )
        self.norm = nn.BatchNorm2d(out_channels) if batch_norm else nn.Identity()
        # Not in-place: Grad-CAM hooks the activation's output and its gradient.
        self.act = nn.ReLU()
        self.pool = nn.MaxPool2d(2)

    def group_matcher(self, coarse: bool = False) -> dict[str, str]:
        """Parameter groups from the input up, for timm's layer-wise learning-rate decay; the
        head, matched by neither, comes last."""
        return {"stem": r"^features\.0\.", "blocks": r"^features\.(\d+)\."}

    def forward(self, x: Tensor) -> Tensor:
        return self.pool(self.act(self.norm(self.conv(x))))


class SmallCNN(nn.Module):
    """Conv blocks with per-block filters and kernel sizes, GAP, dropout, dense units → classes."""

    def __init__(self, num_classes: int, params: SmallCNNParams):
        super().__init__()
        extra = len(params.filters) - len(params.kernel_sizes)
        kernels = params.kernel_sizes + params.kernel_sizes[-1:] * extra
        channels = (3, *params.filters)
        self.features = nn.Sequential(
            *(
                ConvBlock(channels[i], channels[i + 1], kernels[i], params.batch_norm)
                for i in range(len(params.filters))
            )
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Dropout(params.dropout),
            nn.Linear(params.filters[-1], params.dense_units),
            nn.ReLU(inplace=True),
            nn.Dropout(params.dropout),
            nn.Linear(params.dense_units, num_classes),
        )

    def get_classifier(self) -> nn.Module:
        """The layers trained while `freeze_epochs` holds the rest (timm's name for it)."""
        return self.head

    def group_matcher(self, coarse: bool = False) -> dict[str, str]:
        """Parameter groups from the input up, for timm's layer-wise learning-rate decay; the
        head, matched by neither, comes last."""
        return {"stem": r"^features\.0\.", "blocks": r"^features\.(\d+)\."}

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.pool(self.features(x)))
