"""The seed's from-scratch CNN: conv blocks, global average pool, dropout, dense head."""

from dataclasses import dataclass

from torch import Tensor, nn


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

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.pool(self.features(x)))
