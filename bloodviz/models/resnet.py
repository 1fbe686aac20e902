"""ResNets from timm, adapted to small inputs."""

from __future__ import annotations

import torch.nn as nn

from bloodviz.models.pretrained import timm_model
from bloodviz.models.registry import register_model

SMALL_INPUT_ADAPTATION = (
    "stem: 3x3 stride-2 conv instead of 7x7 stride-2, max-pool removed, so a 64 px cell keeps "
    "a 4x4 map at the last stage (ImageNet's stem would leave 2x2; 28 px would reach 1x1)"
)


def adapt_resnet_stem(model: nn.Module, keep_weights: bool = False) -> nn.Module:
    """Swap a timm ResNet's ImageNet stem for one that keeps small inputs spatial.

    Full-resolution (stride-1) stems cost 4x the compute; on CPU training that is the
    difference between minutes and an hour an epoch, so stride 2 is kept. With ImageNet
    weights (``keep_weights``) the pretrained 7x7 stride-2 conv stays and only the max-pool
    goes, which gives the same 4x4 last stage at 64 px.
    """
    if not keep_weights:
        out_channels = model.conv1.out_channels
        model.conv1 = nn.Conv2d(3, out_channels, 3, stride=2, padding=1, bias=False)
    model.maxpool = nn.Identity()
    return model


@register_model(
    "resnet18",
    display_name="ResNet-18",
    family="ResNet",
    target_layer="layer4",
    pretrained_source="resnet18",
    adaptation=SMALL_INPUT_ADAPTATION,
    description="timm resnet18 with a small-input stem.",
)
def resnet18(num_classes: int, in_size: int = 64, pretrained: bool = False) -> nn.Module:
    model = timm_model("resnet18", num_classes, pretrained)
    return adapt_resnet_stem(model, keep_weights=pretrained) if in_size < 160 else model
