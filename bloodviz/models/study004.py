"""Study 004 (Kaggle 4-class WBC set, TEST and TEST_SIMPLE): residual MyCNN, ACNet,
Inception-style factorised and tower models, and the autoencoder with a classification head.

MyCNN follows the printed architecture (figure 3) and changelog (figure 4): v3 adds a fourth
stage (16>32>64>128), v4 widens the head to 128>512>classes, v9 puts three convs in each
residual block, v11 four. ACNet is v13: v4 with the first residual block's convs replaced by
asymmetric convolution blocks (3x3, 1x3 and 3x1 in parallel, summed). The study's Inception
models are described in prose only; the layouts here are our reading of that prose.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from bloodviz.models.registry import register_network

# no batch norm anywhere: at the default lr 2e-3 and batch 128 these nets stall near chance on
# the Kaggle set; smaller, more frequent steps train them (the study used batch 4 with Adam)
RECIPE = {"lr": 5e-4, "batch_size": 32}

MYCNN_ADAPTATION = (
    "the study fed 320x240 images, where stride-2 convs and max-pools leave 1x1x128 before fc1. "
    "Below 128 px the max-pools are dropped and a global average pool gives fc1 the same 128 "
    "inputs, so a 64 px cell keeps a 4x4 map for Grad-CAM"
)


class AsymmetricConv(nn.Module):
    """ACNet's block: 3x3, 1x3 and 3x1 convolutions in parallel, summed."""

    def __init__(self, channels: int):
        super().__init__()
        self.square = nn.Conv2d(channels, channels, 3, padding=1)
        self.horizontal = nn.Conv2d(channels, channels, (1, 3), padding=(0, 1))
        self.vertical = nn.Conv2d(channels, channels, (3, 1), padding=(1, 0))

    def forward(self, x):
        return self.square(x) + self.horizontal(x) + self.vertical(x)


class ResBlock(nn.Module):
    """``relu(x + conv_n(...relu(conv_1(x))))`` with n 3x3 convs (or ACBs)."""

    def __init__(self, channels: int, convs: int, asymmetric: bool = False):
        super().__init__()
        make = AsymmetricConv if asymmetric else (lambda c: nn.Conv2d(c, c, 3, padding=1))
        self.convs = nn.ModuleList(make(channels) for _ in range(convs))

    def forward(self, x):
        out = x
        for i, conv in enumerate(self.convs):
            out = conv(out)
            if i < len(self.convs) - 1:
                out = F.relu(out)
        return F.relu(out + x)


class MyCNN(nn.Module):
    def __init__(
        self,
        num_classes: int,
        in_size: int,
        convs_per_block: int = 2,
        widths=(16, 32, 64, 128),
        hidden: int = 512,
        asymmetric_first: bool = False,
    ):
        super().__init__()
        pool = in_size >= 128
        stages, channels = [], 3
        for i, width in enumerate(widths):
            down = [
                nn.Conv2d(channels, width, 3, stride=2, padding=1),
                nn.ReLU(inplace=True),
            ]
            if pool:
                down.append(nn.MaxPool2d(2))
            stages.append(
                nn.Sequential(*down, ResBlock(width, convs_per_block, asymmetric_first and i == 0))
            )
            channels = width
        self.features = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Linear(channels, hidden)
        self.fc2 = nn.Linear(hidden, num_classes)

    def forward(self, x):
        x = self.pool(self.features(x)).flatten(1)
        return self.fc2(F.relu(self.fc1(x)))


def _mycnn_register(name, display, description, **kwargs):
    register_network(
        name,
        MyCNN,
        kwargs,
        display_name=display,
        family="residual custom CNN",
        recipe=RECIPE,
        target_layer="features.3",  # the last residual stage: 4x4 at 64 px
        adaptation=MYCNN_ADAPTATION,
        description=description,
    )


_mycnn_register(
    "mycnn_v4",
    "MyCNN v4 (study 004)",
    "4 stride-2 conv stages (16-32-64-128), each followed by a 2-conv residual block; "
    "fc 128>512>classes.",
    convs_per_block=2,
)
_mycnn_register(
    "mycnn_v9",
    "MyCNN v9 (study 004)",
    "v4 with three 3x3 convs in each residual block.",
    convs_per_block=3,
)
_mycnn_register(
    "mycnn_v11",
    "MyCNN v11 (study 004)",
    "v9 with a fourth 3x3 conv in each residual block.",
    convs_per_block=4,
)


register_network(
    "acnet",
    MyCNN,
    {"convs_per_block": 2, "asymmetric_first": True},
    display_name="ACNet (MyCNN v13, study 004)",
    family="residual custom CNN",
    recipe=RECIPE,
    target_layer="features.3",
    adaptation=MYCNN_ADAPTATION,
    description="MyCNN v4 whose first residual block uses asymmetric convolution blocks "
    "(3x3 + 1x3 + 3x1 in parallel, summed), as in Ding et al. 2019.",
)


def conv_relu(cin: int, cout: int, kernel: int = 3) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, padding=kernel // 2), nn.ReLU(inplace=True))


def factorised(cin: int, cout: int, depth: int) -> nn.Sequential:
    """1x1 bottleneck then ``depth`` 3x3 convs: effective kernel 3, 5 or 7 for depth 1-3."""
    layers = [conv_relu(cin, cout // 2, 1)]
    channels = cout // 2
    for _ in range(depth):
        layers.append(conv_relu(channels, cout))
        channels = cout
    return nn.Sequential(*layers)


class FactorisedNet(nn.Module):
    """Stem, three bottleneck+factorised stages with max-pool, dense 128, softmax."""

    def __init__(self, num_classes: int, in_size: int, depth: int):
        super().__init__()
        self.features = nn.Sequential(
            conv_relu(3, 32),
            nn.MaxPool2d(2),
            nn.Sequential(factorised(32, 32, depth), nn.MaxPool2d(2)),
            nn.Sequential(factorised(32, 64, depth), nn.MaxPool2d(2)),
            nn.Sequential(factorised(64, 128, depth)),
        )
        side = in_size // 8
        self.classifier = nn.Sequential(
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(128 * (side // 2) ** 2, 128),
            nn.ReLU(inplace=True),
            nn.Dropout(0.5),
            nn.Linear(128, num_classes),
        )
        # He initialisation: without batch norm, PyTorch's default (kaiming_uniform, a=sqrt(5))
        # shrinks the signal about 3x per conv, and depth 3's 13 convs left blood-cells-64 at
        # chance (loss ln 4 after 12 epochs, at lr 5e-4 and 2e-4 alike)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
                nn.init.zeros_(module.bias)

    def forward(self, x):
        return self.classifier(self.features(x))


for _depth, _test, _simple in ((1, 73.0, 63.4), (2, 87.0, 78.9), (3, 88.0, 85.9)):
    _k = 2 * _depth + 1

    register_network(
        f"inception_eff{_k}",
        FactorisedNet,
        {"depth": _depth},
        display_name=f"Factorised {_k}x{_k} (study 004)",
        family="Inception-style",
        recipe=RECIPE,
        target_layer="features.4",  # last stage: 8x8 at 64 px
        adaptation="layout (stem 32, stages 32-64-128, dense 128) is our reading of the "
        "study's prose; the study fed 80x60 images",
        description=f"1x1 bottleneck before {_depth} stacked 3x3 conv(s) (effective {_k}x{_k}) "
        "in each of three stages, then dense 128 and softmax.",
    )


class Towers(nn.Module):
    """ParaA's three towers: effective 5x5, effective 3x3, max-pool into 1x1; concatenated."""

    def __init__(self, cin: int, width: int = 32):
        super().__init__()
        self.eff5 = factorised(cin, width, 2)
        self.eff3 = factorised(cin, width, 1)
        self.pool = nn.Sequential(nn.MaxPool2d(3, stride=1, padding=1), conv_relu(cin, width, 1))

    def forward(self, x):
        return torch.cat([self.eff5(x), self.eff3(x), self.pool(x)], dim=1)


class ParaNet(nn.Module):
    def __init__(self, num_classes: int, in_size: int, tower_sets: int):
        super().__init__()
        stages: list[nn.Module] = [conv_relu(3, 32), conv_relu(32, 32), nn.MaxPool2d(2)]
        channels = 32
        for _ in range(tower_sets):
            stages += [Towers(channels), nn.MaxPool2d(2)]
            channels = 96
        self.features = nn.Sequential(*stages)
        side = in_size // 2 ** (1 + tower_sets)
        self.classifier = nn.Sequential(
            nn.MaxPool2d(2) if side > 8 else nn.Identity(),
            nn.Flatten(),
            nn.Linear(channels * (side // 2 if side > 8 else side) ** 2, 128),
            nn.ReLU(inplace=True),
            nn.Linear(128, num_classes),
        )

    def forward(self, x):
        return self.classifier(self.features(x))


for _name, _sets, _desc in (
    (
        "para_a",
        1,
        "two 3x3 convs (stem) into three parallel towers (effective 5x5, effective "
        "3x3, max-pool + 1x1), concatenated, flattened into a dense layer and softmax",
    ),
    (
        "para_b",
        2,
        "ParaA whose concatenated output feeds a second, identical set of towers",
    ),
):
    register_network(
        _name,
        ParaNet,
        {"tower_sets": _sets},
        display_name=f"{'ParaA' if _sets == 1 else 'ParaB'} towers (study 004)",
        family="Inception-style",
        recipe=RECIPE,
        target_layer=f"features.{1 + 2 * _sets}",  # the last set of towers, before its pool
        adaptation="tower widths (32 each) and the dense width (128) are ours; the study "
        "printed neither, nor ParaA/ParaB's accuracy (its table 4 is missing from the text)",
        description=_desc + ".",
    )


class AutoencoderClassifier(nn.Module):
    """MyAE v1: dense encoder 128 > 1024, dense decoder back, dropout 0.2, fc on the code.

    The loss is MSE(reconstruction, input) + cross-entropy, as in the study; training adds
    the reconstruction term through :meth:`auxiliary_loss`.
    """

    def __init__(self, num_classes: int, in_size: int, hidden: int = 128, code: int = 1024):
        super().__init__()
        pixels = 3 * in_size * in_size
        # a per-channel scale over the input image (starts as identity; 6 parameters): the
        # only spatial layer, so Grad-CAM has a map to explain (gradient x input)
        self.pixels = nn.Conv2d(3, 3, 1, groups=3)
        nn.init.ones_(self.pixels.weight)
        nn.init.zeros_(self.pixels.bias)
        self.encoder = nn.Sequential(
            nn.Linear(pixels, hidden), nn.ReLU(), nn.Linear(hidden, code), nn.ReLU()
        )
        self.decoder = nn.Sequential(
            nn.Linear(code, hidden), nn.ReLU(), nn.Linear(hidden, pixels), nn.ReLU()
        )
        self.dropout = nn.Dropout(0.2)
        self.fc = nn.Linear(code, num_classes)
        self._reconstruction_loss: torch.Tensor | None = None

    def forward(self, x):
        flat = self.pixels(x).flatten(1)
        code = self.encoder(flat)
        if self.training:
            self._reconstruction_loss = F.mse_loss(self.decoder(code).float(), flat.float())
        return self.fc(self.dropout(code))

    def auxiliary_loss(self, labels: torch.Tensor | None = None) -> torch.Tensor | None:
        loss, self._reconstruction_loss = self._reconstruction_loss, None
        return loss


register_network(
    "autoencoder",
    AutoencoderClassifier,
    {},
    display_name="Autoencoder + classifier (study 004)",
    family="autoencoder",
    recipe=RECIPE,
    target_layer="pixels",
    adaptation="input 3x64x64 = 12,288 values instead of the study's 230,400 (320x240x3). "
    "It has no conv layer, so Grad-CAM runs on the input pixels (gradient x input)",
    description="dense encoder (pixels>128>1024), decoder (1024>128>pixels), dropout 0.2 and a "
    "linear classifier on the 1024-d code; loss = MSE + cross-entropy.",
)
