"""Study 002 (BloodMNIST 64x64, 8 classes): its CNN ladder, SE attention and VGG-16 variants.

The study printed Keras parameter totals but no layer tables. The layouts below are the ones
whose Keras totals equal the printed figures (found by enumerating plausible layouts; Keras
counts batch-norm moving mean and variance as non-trainable parameters, so ``keras_total``
adds them back):

- 4-layer CNN, 130,792: conv 16-32-64-128 (3x3, valid) each with 2x2 max-pool, flatten 2x2x128,
  dense 64, dense 8. The 3-layer version (171,624) is 0.67 MB, the table's figure.
- dropout CNN, 549,032: conv 16-32-64 (same), flatten 8x8x64, dense 128, dropout 0.4, dense 8.
- batch-norm CNN, 626,024 (992 non-trainable): conv 16-32-64-128 (same) + BN, flatten 4x4x128,
  dense 256 + BN, dropout 0.4, dense 8. The L2 model is the same network with L2 1e-4.
- SE CNN, 287,807 (352 non-trainable): conv 16-32-64 (same) + BN + squeeze-excitation
  (ratio 16), flatten, dense 64 + BN, dense 8; L2 1e-4.
- VGG-16, 5,787,560: VGG-16's 13 convs at half width (32-64-128-256-256), flatten 2x2x256,
  dense 1024-1024-8. Trimmed (4,607,400): blocks 4 and 5 keep two convs each.
- VGG-16 + CBAM: the printed 5,800,994 (+13,434) matches no CBAM placement we tried; ours adds
  CBAM (ratio 8, 7x7 spatial) after each block and says so.
"""

from __future__ import annotations

import torch
from torch import nn

from bloodviz.models.registry import register_network

L2_STUDY = 1e-4


def keras_total(model: nn.Module) -> int:
    """Parameters as Keras counts them: weights plus batch-norm moving statistics."""
    stats = sum(
        m.running_mean.numel() + m.running_var.numel()
        for m in model.modules()
        if isinstance(m, nn.BatchNorm2d | nn.BatchNorm1d) and m.running_mean is not None
    )
    return sum(p.numel() for p in model.parameters()) + stats


class L2Penalty:
    """Keras-style ``kernel_regularizer=l2(λ)``: λ·Σw² over conv and dense kernels."""

    l2: float = 0.0

    def auxiliary_loss(self, labels: torch.Tensor | None = None) -> torch.Tensor | None:
        if not self.l2:
            return None
        kernels = [m.weight for m in self.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
        return self.l2 * sum(w.float().pow(2).sum() for w in kernels)


class SqueezeExcite(nn.Module):
    def __init__(self, channels: int, ratio: int = 16):
        super().__init__()
        hidden = max(1, channels // ratio)
        self.fc = nn.Sequential(
            nn.Linear(channels, hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, channels),
        )

    def forward(self, x):
        weights = torch.sigmoid(self.fc(x.mean(dim=(2, 3))))
        return x * weights[:, :, None, None]


class CBAM(nn.Module):
    """Channel attention (shared MLP over avg- and max-pooled) then 7x7 spatial attention."""

    def __init__(self, channels: int, ratio: int = 8, kernel: int = 7):
        super().__init__()
        hidden = max(1, channels // ratio)
        self.mlp = nn.Sequential(
            nn.Linear(channels, hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, channels),
        )
        self.spatial = nn.Conv2d(2, 1, kernel, padding=kernel // 2)

    def forward(self, x):
        channel = self.mlp(x.mean(dim=(2, 3))) + self.mlp(x.amax(dim=(2, 3)))
        x = x * torch.sigmoid(channel)[:, :, None, None]
        pooled = torch.cat([x.mean(1, keepdim=True), x.amax(1, keepdim=True)], 1)
        return x * torch.sigmoid(self.spatial(pooled))


class StudyCNN(L2Penalty, nn.Module):
    """Keras-style plain CNN: [conv(+BN)(+SE)-ReLU-pool] blocks, flatten, dense head."""

    def __init__(
        self,
        num_classes: int,
        in_size: int,
        widths: tuple[int, ...],
        padding: str,
        dense: int,
        batch_norm: bool = False,
        squeeze_excite: bool = False,
        dropout: float = 0.0,
        l2: float = 0.0,
    ):
        super().__init__()
        blocks, channels, side = [], 3, in_size
        for width in widths:
            layers: list[nn.Module] = [nn.Conv2d(channels, width, 3, padding=padding)]
            if batch_norm:
                layers.append(nn.BatchNorm2d(width))
            layers.append(nn.ReLU(inplace=True))
            if squeeze_excite:
                layers.append(SqueezeExcite(width))
            layers.append(nn.MaxPool2d(2))
            blocks.append(nn.Sequential(*layers))
            side = (side - (2 if padding == "valid" else 0)) // 2
            channels = width
        if side < 1:
            raise ValueError(f"{in_size} px is too small for {len(widths)} pooled conv blocks")
        self.features = nn.Sequential(*blocks)
        head: list[nn.Module] = [nn.Flatten(), nn.Linear(channels * side * side, dense)]
        if batch_norm:
            head.append(nn.BatchNorm1d(dense))
        head.append(nn.ReLU(inplace=True))
        if dropout:
            head.append(nn.Dropout(dropout))
        head.append(nn.Linear(dense, num_classes))
        self.classifier = nn.Sequential(*head)
        self.l2 = l2

    def forward(self, x):
        return self.classifier(self.features(x))


def _registrar(network: type[nn.Module], family: str, **shared):
    """A one-line registration for each of the study's variants of ``network``."""

    def register(name, display, target, description, **kwargs):
        register_network(
            name,
            network,
            kwargs,
            display_name=display,
            family=family,
            target_layer=target,
            description=description,
            **shared,
        )

    return register


_cnn_register = _registrar(StudyCNN, "study-002 CNN")


_cnn_register(
    "cnn002_2layer",
    "Basic CNN, 2 conv layers (study 002)",
    "features.1.1",
    "conv 16-32 (valid) + max-pool, flatten, dense 64, dense 8. The study compared it but "
    "printed no number for it.",
    widths=(16, 32),
    padding="valid",
    dense=64,
)
_cnn_register(
    "cnn002_3layer",
    "Basic CNN, 3 conv layers (study 002)",
    "features.2.1",  # 12x12 before the last pool at 64 px
    "conv 16-32-64 (valid) + max-pool, flatten 6x6x64, dense 64, dense 8: 171,624 parameters, "
    "the table's 0.67 MB.",
    widths=(16, 32, 64),
    padding="valid",
    dense=64,
)
_cnn_register(
    "cnn002_4layer",
    "Basic CNN, 4 conv layers (study 002)",
    "features.2.1",  # the 4th block would be 4x4 -> 2x2; the 3rd keeps 12x12
    "conv 16-32-64-128 (valid) + max-pool, flatten 2x2x128, dense 64, dense 8: 130,792 "
    "parameters, as printed.",
    widths=(16, 32, 64, 128),
    padding="valid",
    dense=64,
)
_cnn_register(
    "cnn002_dropout",
    "CNN + dropout 0.4 (study 002)",
    "features.2.1",
    "conv 16-32-64 (same) + max-pool, flatten 8x8x64, dense 128, dropout 0.4, dense 8: "
    "549,032 parameters, as printed.",
    widths=(16, 32, 64),
    padding="same",
    dense=128,
    dropout=0.4,
)
_cnn_register(
    "cnn002_bn",
    "CNN 4 layers + batch norm (study 002)",
    "features.3.2",  # ReLU of the 4th block: 8x8 at 64 px
    "conv 16-32-64-128 (same) + BN + max-pool, flatten, dense 256 + BN, dropout 0.4, dense 8: "
    "626,024 Keras parameters (992 non-trainable), as printed.",
    widths=(16, 32, 64, 128),
    padding="same",
    dense=256,
    batch_norm=True,
    dropout=0.4,
)
_cnn_register(
    "cnn002_l2",
    "CNN 4 layers + BN + L2 (study 002)",
    "features.3.2",
    "the batch-norm CNN with a Keras-style L2 penalty 1e-4 on every kernel, added to the loss.",
    widths=(16, 32, 64, 128),
    padding="same",
    dense=256,
    batch_norm=True,
    dropout=0.4,
    l2=L2_STUDY,
)
_cnn_register(
    "cnn002_se",
    "CNN + SE attention + L2 (study 002)",
    "features.2.3",  # the SE output of the 3rd block: 16x16 at 64 px
    "conv 16-32-64 (same) + BN + ReLU + squeeze-excitation (ratio 16) + max-pool, flatten, "
    "dense 64 + BN, dense 8, L2 1e-4: 287,807 Keras parameters (352 non-trainable), as printed.",
    widths=(16, 32, 64),
    padding="same",
    dense=64,
    batch_norm=True,
    squeeze_excite=True,
    l2=L2_STUDY,
)


VGG16_BLOCKS = ((32, 2), (64, 2), (128, 3), (256, 3), (256, 3))
VGG16_TRIMMED = ((32, 2), (64, 2), (128, 3), (256, 2), (256, 2))


class StudyVGG(nn.Module):
    """VGG-16 at half width for 64 px: 5 conv blocks, flatten 2x2x256, dense 1024-1024."""

    def __init__(
        self,
        num_classes: int,
        in_size: int,
        blocks=VGG16_BLOCKS,
        dropout: float = 0.5,
        cbam: bool = False,
    ):
        super().__init__()
        stages, channels = [], 3
        for width, convs in blocks:
            layers: list[nn.Module] = []
            for _ in range(convs):
                layers += [
                    nn.Conv2d(channels, width, 3, padding=1),
                    nn.ReLU(inplace=True),
                ]
                channels = width
            if cbam:
                layers.append(CBAM(width))
            layers.append(nn.MaxPool2d(2))
            stages.append(nn.Sequential(*layers))
        self.features = nn.Sequential(*stages)
        side = in_size // 2 ** len(blocks)
        if side < 1:
            raise ValueError(f"{in_size} px is too small for VGG-16's five poolings")
        head: list[nn.Module] = [nn.Flatten()]
        width_in = channels * side * side
        for _ in range(2):
            head += [nn.Linear(width_in, 1024), nn.ReLU(inplace=True)]
            if dropout:
                head.append(nn.Dropout(dropout))
            width_in = 1024
        head.append(nn.Linear(1024, num_classes))
        self.classifier = nn.Sequential(*head)
        self._init_weights()

    def _init_weights(self) -> None:
        # Without batch norm, PyTorch's default conv init (variance 1/(3 fan_in)) shrinks the
        # signal at each of the 13 ReLU convs, and the network sat on the majority class for
        # whole epochs. He init keeps the activations' scale (torchvision's VGG does the same).
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, 0.0, 0.01)
                nn.init.zeros_(module.bias)

    def forward(self, x):
        return self.classifier(self.features(x))


VGG_ADAPTATION = (
    "half-width VGG-16 (32-64-128-256-256) with a 1024-1024 dense head; this layout gives "
    "exactly the study's 5,787,560 parameters at 64 px"
)


_vgg_register = _registrar(
    StudyVGG,
    "VGG",
    adaptation=VGG_ADAPTATION,
    # no batch norm: VGG diverges at the default 2e-3, and clipping keeps the first,
    # warm-up steps of a 16-layer plain network from blowing up
    recipe={"lr": 5e-4, "grad_clip": 5.0},
)


_vgg_register(
    "vgg16_002",
    "VGG-16 (study 002)",
    "features.4.5",  # last conv ReLU: 4x4 at 64 px
    "13 convs, dense 1024-1024, no dropout: 5,787,560 parameters, as printed.",
    dropout=0.0,
)
_vgg_register(
    "vgg16_dropout",
    "VGG-16 + dropout (study 002)",
    "features.4.5",
    "13 convs, dense 1024-1024 each followed by dropout 0.5: 5,787,560 parameters, as printed.",
)
_vgg_register(
    "vgg16_trimmed",
    "VGG-16, blocks 4-5 trimmed (study 002)",
    "features.4.3",
    "blocks 4 and 5 keep two convs each, dropout 0.5: 4,607,400 parameters, as printed.",
    blocks=VGG16_TRIMMED,
)
_vgg_register(
    "vgg16_cbam",
    "VGG-16 + CBAM (study 002)",
    "features.4.6",  # CBAM output of block 5: 4x4
    "VGG-16 + dropout with CBAM (ratio 8, 7x7 spatial) after every block. The study printed "
    "5,800,994 parameters; no CBAM placement we tried reproduces that figure.",
    cbam=True,
)
