"""The seed's CNN. No I/O here: checkpoints live in `checkpoint.py`."""

import itertools
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class ModelConfig:
    num_classes: int
    in_channels: int = 3
    widths: tuple[int, ...] = (32, 64, 128, 256)
    pooled_size: int = 4  # adaptive average pool to pooled_size x pooled_size
    embedding_dim: int = 512
    dropout: float = 0.5


def conv_block(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
    )


class CNNClassifier(nn.Module):
    """4 conv blocks -> adaptive pool -> Linear(4096, 512) -> ReLU -> Dropout -> Linear."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        channels = (config.in_channels, *config.widths)
        self.features = nn.Sequential(
            *(conv_block(c_in, c_out) for c_in, c_out in itertools.pairwise(channels)),
            nn.AdaptiveAvgPool2d(config.pooled_size),
            nn.Flatten(),
        )
        flat_dim = config.widths[-1] * config.pooled_size**2
        self.embed = nn.Sequential(nn.Linear(flat_dim, config.embedding_dim), nn.ReLU(inplace=True))
        self.head = nn.Sequential(
            nn.Dropout(config.dropout), nn.Linear(config.embedding_dim, config.num_classes)
        )

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, embedding_dim): the penultimate layer, used for recommendations."""
        return self.embed(self.features(x))

    def forward_appearance(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, widths[-1]): the last conv block's channels, each averaged over
        the image. Images unlike the training data stand apart here more clearly than in
        the embedding, which training pulls toward the classes (see `catalog`)."""
        return self.features[:-2](x).mean(dim=(2, 3))  # features[:-2]: the conv blocks

    def forward_catalog(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, embedding_dim + widths[-1]): `forward_features` and
        `forward_appearance` side by side, from one pass of the conv blocks."""
        maps = self.features[:-2](x)  # (B, C, h, w)
        embedding = self.embed(self.features[-2:](maps))  # the pool and flatten, then embed
        return torch.cat([embedding, maps.mean(dim=(2, 3))], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, num_classes) logits."""
        return self.head(self.forward_features(x))
