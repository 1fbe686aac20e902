"""Study 000's supervised contrastive model: a ResNet encoder trained with the SupCon loss
(Khosla et al. 2020) and a linear classifier on its features.

The study trained the encoder first and the classifier after. Here both run in one pass: the
classifier sees the features through a stop-gradient, so only the SupCon loss shapes the
encoder and the classifier is a linear probe of it (the "online linear evaluation" of the
self-supervised literature). One augmented view per image: the positives of an anchor are the
other images of its class in the batch (a batch of 128 holds many per class).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from bloodviz.models.pretrained import timm_model
from bloodviz.models.registry import register_model
from bloodviz.models.resnet import SMALL_INPUT_ADAPTATION, adapt_resnet_stem


def supcon_loss(features: torch.Tensor, labels: torch.Tensor, temperature: float = 0.1):
    """Supervised contrastive loss over L2-normalised ``features`` (N, D) with ``labels`` (N,).

    For each anchor with at least one positive: minus the mean log-probability of its
    positives under a softmax over every other sample's similarity.
    """
    z = F.normalize(features.float(), dim=1)
    logits = z @ z.T / temperature
    n = len(labels)
    not_self = ~torch.eye(n, dtype=torch.bool, device=z.device)
    logits = logits.masked_fill(~not_self, float("-inf"))
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    positives = (labels[:, None] == labels[None, :]) & not_self
    counts = positives.sum(1)
    has_positive = counts > 0
    if not has_positive.any():
        return features.sum() * 0.0
    mean_log_prob = (log_prob.masked_fill(~positives, 0.0)).sum(1)[has_positive] / counts[
        has_positive
    ]
    return -mean_log_prob.mean()


class SupConResNet(nn.Module):
    def __init__(self, num_classes: int, in_size: int, pretrained: bool | str = False):
        super().__init__()
        encoder = timm_model("resnet18", 0, pretrained)
        self.encoder = (
            adapt_resnet_stem(encoder, keep_weights=pretrained) if in_size < 160 else encoder
        )
        width = self.encoder.num_features
        self.projection = nn.Sequential(
            nn.Linear(width, width), nn.ReLU(inplace=True), nn.Linear(width, 128)
        )
        self.classifier = nn.Linear(width, num_classes)
        self._projected: torch.Tensor | None = None

    def forward(self, x):
        features = self.encoder(x)
        if self.training:
            self._projected = self.projection(features)
            features = features.detach()  # the linear probe does not shape the encoder
        return self.classifier(features)

    def auxiliary_loss(self, labels: torch.Tensor) -> torch.Tensor | None:
        projected, self._projected = self._projected, None
        return None if projected is None else supcon_loss(projected, labels)


@register_model(
    "supcon_resnet18",
    display_name="SupCon ResNet-18 + linear (study 000)",
    family="contrastive",
    target_layer="encoder.layer4",
    adaptation=SMALL_INPUT_ADAPTATION + "; encoder and linear probe trained together, the probe "
    "behind a stop-gradient; one view per image",
    pretrained_source="resnet18",
    description="ResNet-18 encoder (512-d) trained with the supervised contrastive loss "
    "(temperature 0.1) on a 512-512-128 projection head; a linear classifier on the encoder's "
    "features. The study named only 'ResNet'.",
)
def supcon_resnet18(num_classes: int, in_size: int = 64, pretrained: bool | str = False):
    return SupConResNet(num_classes, in_size, pretrained)
