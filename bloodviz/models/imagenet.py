"""Standard ImageNet architectures from timm, adapted to small cells (see ``pretrained``)."""

from __future__ import annotations

from torch import nn

from bloodviz.models.pretrained import timm_model
from bloodviz.models.registry import register_model
from bloodviz.models.resnet import SMALL_INPUT_ADAPTATION, adapt_resnet_stem


# -- ResNet-50 (studies 000, 001, 003) --------------------------------------------------------
@register_model(
    "resnet50",
    display_name="ResNet-50",
    family="ResNet",
    target_layer="layer4",
    adaptation=SMALL_INPUT_ADAPTATION,
    pretrained_source="resnet50",
    description="timm resnet50 (ImageNet-pretrained in study 000).",
)
def resnet50(num_classes: int, in_size: int = 64, pretrained: bool = False) -> nn.Module:
    model = timm_model("resnet50", num_classes, pretrained)
    return adapt_resnet_stem(model, keep_weights=pretrained) if in_size < 160 else model


class ResNet50DenseHead(nn.Module):
    """Study 001's Keras summary: ResNet-50 features, flatten, then
    [BN, dense 256, dropout] [BN, dense 128, dropout] [BN, dense 64, dropout] BN, dense."""

    def __init__(self, num_classes: int, in_size: int, pretrained: bool):
        super().__init__()
        backbone = timm_model("resnet50", 0, pretrained, global_pool="")
        self.backbone = adapt_resnet_stem(backbone, keep_weights=pretrained)
        side = max(1, in_size // 16 if in_size < 160 else in_size // 32)
        width = 2048 * side * side
        layers: list[nn.Module] = [nn.Flatten()]
        for hidden in (256, 128, 64):
            layers += [
                nn.BatchNorm1d(width),
                nn.Linear(width, hidden),
                nn.ReLU(),
                nn.Dropout(0.3),
            ]
            width = hidden
        layers += [nn.BatchNorm1d(width), nn.Linear(width, num_classes)]
        self.head = nn.Sequential(*layers)

    def forward(self, x):
        return self.head(self.backbone.forward_features(x))


@register_model(
    "resnet50_head001",
    display_name="ResNet-50 + dense head (study 001)",
    family="ResNet",
    target_layer="backbone.layer4",
    adaptation=SMALL_INPUT_ADAPTATION + "; the head flattens 4x4x2048 as the study's did",
    pretrained_source="resnet50",
    description="ResNet-50 + flatten (32,768) + BN/dense 256/128/64 with dropout + BN + dense, "
    "as study 001's model summary (8.4M parameters in the first dense layer alone).",
)
def resnet50_head001(num_classes: int, in_size: int = 64, pretrained: bool = False) -> nn.Module:
    return ResNet50DenseHead(num_classes, in_size, pretrained)


# -- Inception family (studies 000, 001, 002) -------------------------------------------------
INCEPTION_ADAPTATION = (
    "first conv stride 1 instead of 2 below 160 px (timm's stem needs >= 75 px and would leave "
    "1x1 at 64 px); a 64 px cell keeps 2x2 at the last stage"
)


@register_model(
    "inception_v3",
    display_name="Inception-v3",
    family="Inception",
    target_layer="Mixed_7c",
    adaptation=INCEPTION_ADAPTATION,
    pretrained_source="inception_v3",
    description="timm inception_v3 (21.8M parameters; study 002 printed 10.3M for its own "
    "variant, whose layers it did not list).",
)
def inception_v3(num_classes: int, in_size: int = 64, pretrained: bool = False) -> nn.Module:
    model = timm_model("inception_v3", num_classes, pretrained)
    if in_size < 160:
        model.Conv2d_1a_3x3.conv.stride = (1, 1)
    return model


@register_model(
    "inception_resnet_v2",
    display_name="Inception-ResNet-v2 (study 000)",
    family="Inception",
    target_layer="conv2d_7b",
    adaptation=INCEPTION_ADAPTATION,
    pretrained_source="inception_resnet_v2",
    description="timm inception_resnet_v2 (54M parameters: even fp16 weights, 109 MB, exceed "
    "the 50 MB checkpoint limit).",
)
def inception_resnet_v2(num_classes: int, in_size: int = 64, pretrained: bool = False):
    model = timm_model("inception_resnet_v2", num_classes, pretrained)
    if in_size < 160:
        model.conv2d_1a.conv.stride = (1, 1)
    return model


# -- EfficientNet-B0 (study 001) --------------------------------------------------------------
@register_model(
    "efficientnet_b0",
    display_name="EfficientNet-B0 (study 001)",
    family="EfficientNet",
    target_layer="conv_head",
    adaptation="stem stride 1 instead of 2 below 160 px: a 64 px cell keeps 4x4 at the end "
    "(2x2 otherwise)",
    pretrained_source="efficientnet_b0",
    description="timm efficientnet_b0.",
)
def efficientnet_b0(num_classes: int, in_size: int = 64, pretrained: bool = False) -> nn.Module:
    model = timm_model("efficientnet_b0", num_classes, pretrained)
    if in_size < 160:
        model.conv_stem.stride = (1, 1)
    return model


# -- VGG16 (study 003) ------------------------------------------------------------------------
class VGG16Features(nn.Module):
    """VGG-16's 13 convs (timm) + global average pool + linear: the transfer-learning setup."""

    def __init__(self, num_classes: int, in_size: int, pretrained: bool):
        super().__init__()
        backbone = timm_model("vgg16", 0, pretrained)
        layers = list(backbone.features)
        if in_size < 160:
            layers = layers[:-1]  # keep 4x4 at 64 px instead of 2x2
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512, num_classes)

    def forward(self, x):
        return self.fc(self.pool(self.features(x)).flatten(1))


@register_model(
    "vgg16",
    display_name="VGG16 (study 003)",
    family="VGG",
    target_layer="features.29",  # last conv ReLU
    adaptation="13 VGG-16 convs with a global-average-pool + linear head (study 003 printed no "
    "head); the last max-pool dropped below 160 px",
    pretrained_source="vgg16",
    # no batch norm: like study 002's VGGs it needs a low rate and a clipped gradient norm
    recipe={"lr": 5e-4, "grad_clip": 5.0},
    description="VGG-16 conv base from timm with a small head; 14.7M parameters.",
)
def vgg16(num_classes: int, in_size: int = 64, pretrained: bool = False) -> nn.Module:
    return VGG16Features(num_classes, in_size, pretrained)


# -- ResNet-50 features + one-vs-one SVM (study 003) ------------------------------------------
@register_model(
    "resnet50_svm",
    display_name="ResNet-50 features + OvO SVM (study 003)",
    family="ResNet + SVM",
    adaptation=SMALL_INPUT_ADAPTATION + "; without ImageNet weights the features come from "
    "bloodviz's own resnet50 checkpoint on the same data (the study used ImageNet features); "
    "cost figures are the feature extractor's, the SVM's kernel sums are not timed",
    pretrained_source="resnet50",
    trainer="svm",
    target_layer="layer4",  # the feature network's last stage, as for resnet50
    description="2048 pooled ResNet-50 features, standardised, into scikit-learn's RBF SVC "
    "(one-vs-one; probabilities by sigmoid calibration). The network built here is the feature "
    "extractor; `bloodviz train` fits the SVM (see bloodviz.svm).",
)
def resnet50_svm(num_classes: int, in_size: int = 64, pretrained: bool = False) -> nn.Module:
    from bloodviz.models.svm_head import SVMHead

    network = resnet50(0, in_size, pretrained)  # timm: num_classes=0 gives pooled features
    # the fitted SVM takes the classifier's place; unfitted, it passes the features through
    network.fc = SVMHead()
    return network
