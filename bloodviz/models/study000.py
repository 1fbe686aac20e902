"""Study 000 (Kaggle 4-class WBC set at 120x120): LeNet-5 and the modified AlexNet.

Both follow the Keras summaries the study printed (kernel sizes are implied by the parameter
counts: 168 = 3*3*3*6 + 6). Activations are not printed; ReLU is assumed. The flatten width
follows the input size, so at 120 px the parameter counts equal the study's (1,516,952 and
1,413,732) and at other sizes they differ only in the first dense layer.
"""

from __future__ import annotations

import torch.nn as nn

from bloodviz.models.registry import register_model


def _side_after(size: int, steps: list[str]) -> int:
    for step in steps:
        size = size - 2 if step == "conv" else size // 2
    return size


class LeNet5(nn.Module):
    def __init__(self, num_classes: int, in_size: int = 120):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 6, 3),
            nn.ReLU(inplace=True),
            nn.AvgPool2d(2),
            nn.Conv2d(6, 16, 3),
            nn.ReLU(inplace=True),
            nn.AvgPool2d(2),
        )
        side = _side_after(in_size, ["conv", "pool", "conv", "pool"])
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(16 * side * side, 120),
            nn.ReLU(inplace=True),
            nn.Linear(120, 84),
            nn.ReLU(inplace=True),
            nn.Linear(84, num_classes),
        )

    def forward(self, x):
        return self.classifier(self.features(x))


class AlexNet000(nn.Module):
    def __init__(self, num_classes: int, in_size: int = 120):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 32, 3),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 32, 3),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
        )
        side = _side_after(in_size, ["conv", "pool"] * 3)
        self.classifier = nn.Sequential(
            nn.Dropout(0.5),
            nn.Flatten(),
            nn.Linear(64 * side * side, 128),
            nn.ReLU(inplace=True),
            nn.Dropout(0.5),
            nn.Linear(128, num_classes),
        )

    def forward(self, x):
        return self.classifier(self.features(x))


@register_model(
    "lenet5",
    display_name="LeNet-5 (study 000)",
    family="classic CNN",
    default_size=120,
    target_layer="features.4",  # ReLU after the second conv: 57x57 at 120 px
    description="3x3 conv 6 - avgpool - 3x3 conv 16 - avgpool - dense 120 - 84 - classes, as "
    "in the study's Keras summary (1,516,952 parameters at 120 px, 4 classes).",
)
def lenet5(num_classes: int, in_size: int = 120, pretrained: bool = False) -> nn.Module:
    if pretrained:
        raise ValueError("LeNet-5 has no pretrained weights")
    return LeNet5(num_classes, in_size)


@register_model(
    "alexnet000",
    display_name="AlexNet, modified for 120x120 (study 000)",
    family="classic CNN",
    default_size=120,
    target_layer="features.7",  # ReLU after the third conv: 26x26 at 120 px
    description="3 conv (32-32-64) with max-pool, dropout, dense 128, dropout, as in the study's "
    "Keras summary (1,413,732 parameters at 120 px, 4 classes).",
)
def alexnet000(num_classes: int, in_size: int = 120, pretrained: bool = False) -> nn.Module:
    if pretrained:
        raise ValueError("the study-000 AlexNet has no pretrained weights")
    return AlexNet000(num_classes, in_size)
