"""Stain and scale robustness (#16, part 2): training augmentation and stain normalisation.

Cells from another lab differ from the training cells in three ways a network trained on one
lab never sees: the stain's colours (PBC's May-Grünwald-Giemsa on a CellaVision against the
BCCD smears' Giemsa under another camera), the magnification (a PBC cell fills 72% of its
crop, a Kaggle cell 40%) and where the cell sits (Kaggle's crops are shifted and sheared).

- :func:`robust_augment` perturbs exactly those on a training batch: a random similarity
  transform (any angle, a mirror, a scale, a shift; mirrored at the border as a smear goes
  on), stain jitter in the haematoxylin-eosin-DAB optical-density space (Tellez et al.,
  "Quantifying the effects of data augmentation and stain color normalization", Medical Image
  Analysis 2019), hue and saturation jitter, and a lower resolution.
- :class:`StainNormaliser` is Reinhard's colour transfer (each image's L*a*b* mean and spread
  moved to the training cells'), through torchstain's numpy backend (no torch needed, so the
  upload page can use it on ONNX Runtime). A checkpoint that uses it carries the target
  statistics in its preprocessing, and training applied the same function to every batch, so
  inference cannot drift from training.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

# Ruifrok & Johnston's stain vectors (rows: haematoxylin, eosin, DAB optical densities in RGB),
# as scikit-image's ``rgb_from_hed``; Giemsa's azure/eosin pair lies close to the first two.
RGB_FROM_HED = np.array(
    [[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]], dtype=np.float32
)
RGB_FROM_HED = RGB_FROM_HED / np.linalg.norm(RGB_FROM_HED, axis=1, keepdims=True)
RGB_FROM_HED[2] = np.cross(RGB_FROM_HED[0], RGB_FROM_HED[1])
RGB_FROM_HED[2] /= np.linalg.norm(RGB_FROM_HED[2])
HED_FROM_RGB = np.linalg.inv(RGB_FROM_HED).astype(np.float32)


@dataclass(frozen=True)
class RobustAugment:
    """How strongly :func:`robust_augment` perturbs a batch (a run card records it).

    ``scale``: the range of the cell's size relative to the training crop (0.5: half as large,
    as a PBC cell framed like a Kaggle one); ``shift``: the largest move of the centre, as a
    share of the side; ``stain``: the spread of each stain's amount (multiplicative) and
    offset (a tenth of it, additive, in optical density); ``hue``: the largest hue turn (share
    of the colour circle); ``saturation``: the spread of the saturation factor; ``lowres``:
    the chance of rendering the cell at 35-100% of its resolution (other cameras and
    magnifications are blurrier).
    """

    scale: tuple[float, float] = (0.5, 1.3)
    shift: float = 0.2
    stain: float = 0.3
    hue: float = 0.06
    saturation: float = 0.4
    lowres: float = 0.5

    def to_dict(self) -> dict:
        return {**asdict(self), "scale": list(self.scale)}

    @classmethod
    def from_dict(cls, data: dict) -> RobustAugment:
        data = dict(data)
        if "scale" in data:
            data["scale"] = tuple(data["scale"])
        return cls(**data)


def _uniform(n: int, low: float, high: float, generator):
    import torch

    return low + (high - low) * torch.rand(n, generator=generator)


def robust_augment(x, generator, settings: RobustAugment = RobustAugment()):
    """Perturb a float NCHW batch in [0, 255] as another lab's cells would look; returns a new
    batch of the same shape. Every draw comes from ``generator`` (a seeded run stays exact)."""
    import torch
    import torch.nn.functional as F

    n, _, height, width = x.shape
    # -- geometry: rotate by any angle, mirror, scale the cell, move it ------------------------
    angle = _uniform(n, 0.0, 2 * math.pi, generator)
    low, high = settings.scale
    scale = torch.exp(_uniform(n, math.log(low), math.log(high), generator))
    mirror = torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0)
    shift = _uniform(2 * n, -settings.shift, settings.shift, generator).view(n, 2) * 2
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    # affine_grid maps output to input coordinates: dividing by the scale enlarges the cell
    theta = torch.stack(
        [
            torch.stack([cos * mirror, -sin, shift[:, 0]], dim=1),
            torch.stack([sin * mirror, cos, shift[:, 1]], dim=1),
        ],
        dim=1,
    )
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)

    # -- resolution: some cells seen at 35-100% of theirs, then back to the input size -------
    if settings.lowres > 0:
        chosen = torch.rand(n, generator=generator) < settings.lowres
        factor = float(_uniform(1, 0.35, 1.0, generator))
        if chosen.any():
            small = F.interpolate(
                x[chosen],
                size=(max(8, round(height * factor)), max(8, round(width * factor))),
                mode="bilinear",
                antialias=True,
                align_corners=False,
            )
            x = x.clone()
            x[chosen] = F.interpolate(small, size=(height, width), mode="bilinear")

    # -- stain: each stain's amount scaled and shifted in optical density ---------------------
    if settings.stain > 0:
        density = -torch.log((x.clamp(0, 255) + 1.0) / 256.0)  # N x 3 x H x W, >= 0
        to_stains = torch.from_numpy(HED_FROM_RGB)
        to_rgb = torch.from_numpy(RGB_FROM_HED)
        stains = torch.einsum("nchw,cs->nshw", density, to_stains)
        amount = _uniform(3 * n, 1 - settings.stain, 1 + settings.stain, generator).view(n, 3, 1, 1)
        offset = _uniform(3 * n, -settings.stain, settings.stain, generator).view(n, 3, 1, 1) * 0.1
        density = torch.einsum("nshw,sc->nchw", stains * amount + offset, to_rgb)
        x = (256.0 * torch.exp(-density) - 1.0).clamp(0, 255)

    # -- hue (a turn about the grey axis) and saturation -------------------------------------
    if settings.hue > 0 or settings.saturation > 0:
        grey = x.mean(dim=1, keepdim=True)
        chroma = x - grey
        turn = _uniform(n, -settings.hue, settings.hue, generator) * 2 * math.pi
        axis = torch.full((3,), 1 / math.sqrt(3))
        # Rodrigues' rotation about the grey axis; chroma is orthogonal to it
        cos_t, sin_t = torch.cos(turn).view(n, 1, 1, 1), torch.sin(turn).view(n, 1, 1, 1)
        cross = torch.cross(axis.view(1, 3, 1, 1).expand_as(chroma), chroma, dim=1)
        chroma = chroma * cos_t + cross * sin_t
        saturation = _uniform(n, 1 - settings.saturation, 1 + settings.saturation, generator)
        x = (grey + chroma * saturation.view(n, 1, 1, 1)).clamp(0, 255)
    return x


class StainNormaliser:
    """Reinhard colour transfer to fixed target statistics (torchstain, numpy backend)."""

    method = "reinhard"

    def __init__(self, target_means, target_stds):
        from torchstain.numpy.normalizers import NumpyReinhardNormalizer

        self._normaliser = NumpyReinhardNormalizer()
        self._normaliser.target_means = np.asarray(target_means, dtype=np.float32)
        self._normaliser.target_stds = np.asarray(target_stds, dtype=np.float32)

    @classmethod
    def fit(cls, images: np.ndarray) -> StainNormaliser:
        """Target statistics: the mean over ``images`` (uint8 N x H x W x 3) of each image's
        L*a*b* channel means and spreads."""
        from torchstain.numpy.normalizers import NumpyReinhardNormalizer

        probe = NumpyReinhardNormalizer()
        means, stds = [], []
        for image in images:
            probe.fit(np.asarray(image))
            means.append(probe.target_means)
            stds.append(probe.target_stds)
        return cls(np.mean(means, axis=0), np.mean(stds, axis=0))

    def to_dict(self) -> dict:
        return {
            "method": self.method,
            "target_means": [float(v) for v in self._normaliser.target_means],
            "target_stds": [float(v) for v in self._normaliser.target_stds],
        }

    @classmethod
    def from_dict(cls, data: dict) -> StainNormaliser:
        if data.get("method") != cls.method:
            raise ValueError(f"unknown stain normalisation {data.get('method')!r}")
        return cls(data["target_means"], data["target_stds"])

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """uint8 NHWC (or one HWC image) in, the same shape out."""
        batch = np.asarray(batch)
        if batch.ndim == 3:
            return self._one(batch)
        return np.stack([self._one(image) for image in batch]) if len(batch) else batch

    def _one(self, image: np.ndarray) -> np.ndarray:
        if float(image.std()) < 1e-3:  # a flat image has no spread to standardise
            return image
        with np.errstate(invalid="ignore", divide="ignore"):
            out = self._normaliser.normalize(image)
        return np.nan_to_num(out).astype(np.uint8)
