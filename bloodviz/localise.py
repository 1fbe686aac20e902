"""Find the white blood cells in a smear field (#16, part 1): stain-based nucleus segmentation.

A white cell's nucleus is the one large object in a Giemsa/Wright smear whose blue channel
stands well above its red (red cells are red, the background grey, platelets small). So:

1. ``blue - red`` per pixel, Gaussian-smoothed (sigma 2 px);
2. pixels above :data:`BLUE_OVER_RED` are nucleus; an opening (7 px) drops specks, a closing
   (25 px) joins a neutrophil's lobes into one object;
3. objects smaller than :data:`MIN_NUCLEUS_SHARE` of the field are platelets or debris;
4. each remaining object's box is the square around its nucleus, :data:`CELL_OVER_NUCLEUS`
   times its longer side: the cytoplasm around the nucleus.

The four numbers were chosen on the even-numbered BCCD fields (a grid of 72 settings, the
best of recall and precision at IoU 0.5) and are reported on the odd-numbered ones, which the
choice never saw (``python -m bloodviz localise``). They assume BCCD's magnification (a white
cell about 100-200 px across in a 640x480 field); the area rule is a share of the field, so a
field resized whole keeps working, but a field at another magnification does not.
"""

from __future__ import annotations

import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bloodviz.paths import DataNotFoundError

BLUE_OVER_RED = 25.0
MIN_NUCLEUS_SHARE = 5000 / (640 * 480)
CELL_OVER_NUCLEUS = 1.2
OPEN_PX, CLOSE_PX, SMOOTH_SIGMA = 7, 25, 2.0
IOU_MATCH = 0.5


@dataclass(frozen=True)
class Box:
    """A white cell's box in pixels of the field (x right, y down), and its nucleus area."""

    x0: float
    y0: float
    x1: float
    y1: float
    nucleus_px: int = 0

    @property
    def corners(self) -> tuple[float, float, float, float]:
        return self.x0, self.y0, self.x1, self.y1


def find_white_cells(rgb: np.ndarray) -> list[Box]:
    """White-cell boxes in an RGB uint8 field (H x W x 3), largest nucleus first."""
    import cv2

    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected an RGB image (H x W x 3), got shape {rgb.shape}")
    height, width = rgb.shape[:2]
    pixels = rgb.astype(np.float32)
    score = cv2.GaussianBlur(pixels[..., 2] - pixels[..., 0], (0, 0), SMOOTH_SIGMA)
    mask = (score > BLUE_OVER_RED).astype(np.uint8)
    ellipse = cv2.MORPH_ELLIPSE
    mask = cv2.morphologyEx(
        mask, cv2.MORPH_OPEN, cv2.getStructuringElement(ellipse, (OPEN_PX,) * 2)
    )
    mask = cv2.morphologyEx(
        mask, cv2.MORPH_CLOSE, cv2.getStructuringElement(ellipse, (CLOSE_PX,) * 2)
    )
    count, _, stats, _ = cv2.connectedComponentsWithStats(mask)
    min_area = MIN_NUCLEUS_SHARE * height * width
    boxes = []
    for x, y, w, h, area in stats[1:count]:
        if area < min_area:
            continue
        cx, cy, half = x + w / 2, y + h / 2, max(w, h) * CELL_OVER_NUCLEUS / 2
        boxes.append(
            Box(
                max(0.0, cx - half),
                max(0.0, cy - half),
                min(float(width), cx + half),
                min(float(height), cy + half),
                int(area),
            )
        )
    return sorted(boxes, key=lambda b: -b.nucleus_px)


def iou(a, b) -> float:
    """Intersection over union of two (x0, y0, x1, y1) boxes."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def match_boxes(truth, found, *, threshold: float = IOU_MATCH) -> tuple[int, int, int]:
    """(true positives, false positives, false negatives): each true box takes the unused
    found box it overlaps most, a hit at IoU >= ``threshold``."""
    used: set[int] = set()
    hits = 0
    for t in truth:
        options = [(iou(t, f), j) for j, f in enumerate(found) if j not in used]
        best, j = max(options, default=(0.0, None))
        if best >= threshold:
            hits += 1
            used.add(j)
    return hits, len(found) - hits, len(truth) - hits


def read_voc_boxes(xml_file: Path, name: str = "WBC") -> list[tuple[float, float, float, float]]:
    """The ``name`` boxes of a Pascal VOC annotation (BCCD's format)."""
    root = ET.parse(xml_file).getroot()
    boxes = []
    for obj in root.iter("object"):
        if (obj.findtext("name") or "").strip() != name:
            continue
        box = obj.find("bndbox")
        boxes.append(tuple(float(box.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax")))
    return boxes


def bccd_fields(root: Path, part: str = "odd") -> list[tuple[Path, Path]]:
    """(image, annotation) pairs of the BCCD fields: ``odd`` (held out), ``even`` (where the
    settings were chosen) or ``all``."""
    from bloodviz.twins import field_number, find_bccd_fields

    folder = find_bccd_fields(Path(root))
    pairs = []
    for xml_file in sorted((folder / "Annotations").glob("*.xml")):
        image = folder / "JPEGImages" / f"{xml_file.stem}.jpg"
        number = field_number(xml_file)
        if image.exists() and (part == "all" or (number % 2 == 1) == (part == "odd")):
            pairs.append((image, xml_file))
    if not pairs:
        raise DataNotFoundError(f"no annotated BCCD fields under {folder}")
    return pairs


def benchmark(root: Path, part: str = "odd", progress: bool = True) -> dict:
    """Recall and precision of :func:`find_white_cells` against BCCD's WBC boxes."""
    from PIL import Image
    from tqdm.auto import tqdm

    pairs = bccd_fields(root, part)
    tp = fp = fn = 0
    tick = time.perf_counter()
    for image, xml_file in tqdm(pairs, desc=f"BCCD fields ({part})", disable=not progress):
        found = find_white_cells(np.asarray(Image.open(image).convert("RGB")))
        hits, extra, missed = match_boxes(read_voc_boxes(xml_file), [b.corners for b in found])
        tp, fp, fn = tp + hits, fp + extra, fn + missed
    seconds = time.perf_counter() - tick
    return {
        "fields": len(pairs),
        "part": part,
        "white_cells": tp + fn,
        "found": tp + fp,
        "true_positives": tp,
        "recall": tp / (tp + fn) if tp + fn else float("nan"),
        "precision": tp / (tp + fp) if tp + fp else float("nan"),
        "iou": IOU_MATCH,
        "ms_per_field": 1000 * seconds / len(pairs),
    }
