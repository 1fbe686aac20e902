"""Plain convolutional baselines."""

from __future__ import annotations

import torch.nn as nn

from bloodviz.models.registry import register_model


def conv_bn_block(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
    )


class BaselineCNN(nn.Module):
    """Four conv-BN-ReLU-pool blocks, global average pooling, dropout, one linear layer."""

    def __init__(self, num_classes: int, widths=(32, 64, 128, 256), dropout: float = 0.4):
        super().__init__()
        blocks, channels = [], 3
        for width in widths:
            blocks.append(conv_bn_block(channels, width))
            channels = width
        self.features = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(channels, num_classes)

    def forward(self, x):
        x = self.pool(self.features(x)).flatten(1)
        return self.classifier(self.dropout(x))


@register_model(
    "cnn_baseline",
    display_name="Baseline CNN (4 conv + BN)",
    family="baseline CNN",
    target_layer="features.3.2",  # the ReLU before the last pool: 8x8 at 64 px, 3x3 at 28
    description="4 conv blocks (32-64-128-256) with batch norm, GAP, dropout 0.4: the engine's "
    "small reference model.",
)
def cnn_baseline(num_classes: int, in_size: int = 64, pretrained: bool = False) -> nn.Module:
    if pretrained:
        raise ValueError("cnn_baseline has no pretrained weights")
    return BaselineCNN(num_classes)
