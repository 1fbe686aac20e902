"""Image decoding and the preprocessing a checkpoint carries with it.

Every checkpoint stores its :class:`Preprocessing` (like torchvision's ``weights.transforms()``),
and the dataset loaders build their training arrays with the very same
:meth:`Preprocessing.prepare`, so inference on an uploaded image cannot drift from what the
model was trained on.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image, ImageOps

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

Framing = Literal["cell", "full"]


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any PIL image (16-bit, greyscale, palette, RGBA, CMYK) to 8-bit RGB, upright."""
    image = ImageOps.exif_transpose(image)
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        array = np.asarray(image, dtype=np.float64)
        hi = array.max() if array.size else 1.0
        # 16-bit microscope exports rarely use the full range: scale by the data's own maximum.
        scale = 255.0 / hi if hi > 0 else 1.0
        image = Image.fromarray(np.clip(array * scale, 0, 255).astype(np.uint8))
    elif image.mode == "F":
        array = np.asarray(image, dtype=np.float64)
        lo, hi = float(array.min()), float(array.max())
        array = (array - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(array)
        image = Image.fromarray(array.astype(np.uint8))
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        # Transparent pixels become white, like the glass background of a smear.
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return image.convert("RGB")


def center_square(image: Image.Image, fraction: float = 1.0) -> Image.Image:
    """Centre crop a square whose side is ``fraction`` of the image's shorter side."""
    width, height = image.size
    side = max(1, int(round(min(width, height) * fraction)))
    left = (width - side) // 2
    top = (height - side) // 2
    return image.crop((left, top, left + side, top + side))


@dataclass(frozen=True)
class Preprocessing:
    """How a raw image becomes the tensor a model was trained on.

    ``cell`` framing: the image is already a single-cell crop as in the dataset; it is centre
    cropped to a square and resized to ``size``.
    ``full`` framing: a whole microscope field as the instrument saved it; the centre
    ``field_crop_fraction`` of the shorter side is cut out first (MedMNIST's recipe for PBC: the
    centre 200 of 360 pixels), resized to ``field_resize`` if the dataset did that, then treated
    as a cell.

    ``square``: how a non-square cell becomes square: ``crop`` its centre (the white-cell sets,
    whose crops have room around the cell) or ``stretch`` it whole (NIH's malaria cells are cut
    to the red cell's outline, so a centre crop would cut parasites at the rim off).

    ``stain``: a stain normalisation (:class:`bloodviz.stain.StainNormaliser`'s settings) the
    photometric part applies first, as training did to every batch; None: none.
    """

    size: int
    class_names: tuple[str, ...]
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    resample: str = "bicubic"
    field_crop_fraction: float = 1.0
    field_resize: int | None = None
    square: str = "crop"
    description: str = ""
    stain: dict | None = None
    extra: dict = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def _resample(self) -> int:
        return {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR, "lanczos": Image.LANCZOS}[
            self.resample
        ]

    def prepare(self, image: Image.Image, framing: Framing = "cell") -> np.ndarray:
        """Geometric part: PIL image in, ``size x size x 3`` uint8 array out."""
        image = to_rgb(image)
        if framing == "full":
            if self.field_crop_fraction < 1.0:  # 1.0: the field is the cell (then: `square`)
                image = center_square(image, self.field_crop_fraction)
            if self.field_resize:
                image = image.resize((self.field_resize, self.field_resize), self._resample())
        elif framing != "cell":
            raise ValueError(f"framing must be 'cell' or 'full', not {framing!r}")
        if self.square == "crop":
            image = center_square(image)
        elif self.square != "stretch":
            raise ValueError(f"square must be 'crop' or 'stretch', not {self.square!r}")
        if image.size != (self.size, self.size):
            image = image.resize((self.size, self.size), self._resample())
        return np.asarray(image, dtype=np.uint8)

    @cached_property
    def _stain_normaliser(self):
        from bloodviz.stain import StainNormaliser

        return StainNormaliser.from_dict(self.stain)

    def normalise_stain(self, batch_uint8: np.ndarray) -> np.ndarray:
        """The stain normalisation this checkpoint was trained with (uint8 in and out); the
        batch itself where there is none."""
        if not self.stain:
            return batch_uint8
        return self._stain_normaliser(np.asarray(batch_uint8))

    def to_array(self, batch_uint8: np.ndarray) -> np.ndarray:
        """Photometric part in numpy: uint8 NHWC (or one HWC image) to float32 NCHW, the input
        of an ONNX session (no torch needed)."""
        batch = self.normalise_stain(np.asarray(batch_uint8))
        if batch.ndim == 3:
            batch = batch[None]
        batch = batch.transpose(0, 3, 1, 2).astype(np.float32) / np.float32(255.0)
        mean = np.asarray(self.mean, dtype=np.float32).reshape(1, 3, 1, 1)
        std = np.asarray(self.std, dtype=np.float32).reshape(1, 3, 1, 1)
        return np.ascontiguousarray((batch - mean) / std)

    def normalize(self, batch_uint8):
        """Photometric part: uint8 NHWC (numpy or torch) to a float32 NCHW torch tensor."""
        import torch

        if self.stain:
            if not isinstance(batch_uint8, np.ndarray):
                batch_uint8 = batch_uint8.cpu().numpy()
            batch_uint8 = self.normalise_stain(batch_uint8)
        if isinstance(batch_uint8, np.ndarray) and not batch_uint8.flags.writeable:
            batch_uint8 = batch_uint8.copy()  # torch warns on read-only numpy buffers
        batch = torch.as_tensor(batch_uint8)
        if batch.ndim == 3:
            batch = batch.unsqueeze(0)
        batch = batch.permute(0, 3, 1, 2).float().div_(255.0)
        mean = torch.tensor(self.mean, dtype=batch.dtype).view(1, 3, 1, 1)
        std = torch.tensor(self.std, dtype=batch.dtype).view(1, 3, 1, 1)
        return (batch - mean) / std

    def to_dict(self) -> dict:
        data = asdict(self)
        if not data["stain"]:
            data.pop("stain")  # only where it applies, as the files have always been written
        data["class_names"] = list(self.class_names)
        data["mean"] = list(self.mean)
        data["std"] = list(self.std)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> Preprocessing:
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown preprocessing fields: {sorted(unknown)}")
        data = dict(data)
        data["class_names"] = tuple(data["class_names"])
        data["mean"] = tuple(data.get("mean", IMAGENET_MEAN))
        data["std"] = tuple(data.get("std", IMAGENET_STD))
        return cls(**data)

    def save(self, path: Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: Path) -> Preprocessing:
        return cls.from_dict(json.loads(Path(path).read_text()))


def upscale(image: np.ndarray, side: int = 256) -> np.ndarray:
    """Nearest-neighbour enlargement for display, so small cells are not blurred into mush."""
    return np.asarray(Image.fromarray(image).resize((side, side), Image.NEAREST))
