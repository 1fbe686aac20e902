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
# How much of a model's input square the localiser's box takes in its dataset's training cells
# (median): measured on the 60 white-cell PBC originals (box / the 200 px centre crop the
# dataset keeps: 0.72) and on 297 Kaggle TRAIN images at BCCD's scale (box / the 240 px square
# the models see: 0.40). A field's cell is cropped so that it takes the same share
# (tests/test_localise.py measures it again).
CELL_SHARE = {"pbc": 0.72, "blood-cells": 0.40}
FIELD_MIN_SIDE = 400  # shorter side from which an image is taken for a field, not a crop


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
        # plain floats: OpenCV's stats are numpy integers, which would leak into printouts
        cx, cy = float(x + w / 2), float(y + h / 2)
        half = float(max(w, h) * CELL_OVER_NUCLEUS / 2)
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


def crop_cell(rgb: np.ndarray, box: Box, share: float) -> np.ndarray:
    """The square around ``box`` in which the cell takes ``share`` of the side, as in the
    training data; where the square leaves the field, the field is mirrored into it (a black
    border would be unlike any training cell)."""
    rgb = np.asarray(rgb)
    side = max(box.x1 - box.x0, box.y1 - box.y0) / share
    cx, cy = (box.x0 + box.x1) / 2, (box.y0 + box.y1) / 2
    left, top = int(round(cx - side / 2)), int(round(cy - side / 2))
    size = max(1, int(round(side)))
    while True:
        height, width = rgb.shape[:2]
        pad = max(0, -left, -top, left + size - width, top + size - height)
        if not pad:
            break
        # mirror as often as needed: a cell near a small field's edge may want more than it
        step = min(pad, min(height, width) - 1)
        rgb = np.pad(rgb, ((step, step), (step, step), (0, 0)), mode="reflect")
        left, top = left + step, top + step
    return np.ascontiguousarray(rgb[top : top + size, left : left + size])


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


@dataclass(frozen=True)
class FieldCalls:
    """Labelled BCCD fields, each one's largest white cell found and classified."""

    truth: np.ndarray  # the field's category from labels.csv, lower case
    regions: np.ndarray  # smear region (twins), for grouped intervals
    seen: np.ndarray  # bool: a Kaggle TRAIN image comes from this field's region
    probs: dict  # checkpoint name -> (fields, classes) probabilities; NaN rows: no cell found
    categories: tuple[str, ...]  # the categories kept (those the models know)


def localised_probs(
    ckpts,
    paths: list[Path],
    *,
    progress: bool = True,
    desc: str = "localising",
    runners: dict | None = None,
) -> dict[str, np.ndarray]:
    """Each image's largest white cell found and cropped as the ``field`` framing does (as an
    upload would be), classified by each checkpoint (all of one dataset, so one class list):
    checkpoint name -> (images, classes) probabilities; a row of NaN where no cell was found.
    ``runners``: checkpoint name -> runner to classify with (else each checkpoint's own)."""
    from tqdm.auto import tqdm

    from bloodviz.predict import Runner, classify

    classes = ckpts[0].preprocessing.class_names
    runners = runners or {c.name: Runner(c) for c in ckpts}
    probs: dict[str, list] = {c.name: [] for c in ckpts}
    for path in tqdm(paths, desc=desc, disable=not progress):
        result = classify([(path.name, path.read_bytes())], ckpts, runners, framing="field")[0]
        for ckpt in ckpts:
            row = None if result.error else result.per_model[ckpt.name]
            probs[ckpt.name].append(np.full(len(classes), np.nan) if row is None else row)
    return {name: np.stack(rows) for name, rows in probs.items()}


def field_calls(ckpts, root: Path, *, progress: bool = True) -> FieldCalls:
    """Every BCCD field whose ``labels.csv`` names one category the models know, its largest
    white cell found and cropped as the ``field`` framing does, classified by each checkpoint
    (all of one dataset, so one class list)."""
    from bloodviz.twins import (
        find_bccd_fields,
        read_field_labels,
        read_sources,
        source_of,
        training_sources,
    )

    folder = find_bccd_fields(Path(root))
    labels = read_field_labels(folder / "labels.csv")
    try:
        matches = read_sources()
        region_of = {m.field: source_of(m) for m in matches if m.matched}
        seen_regions = training_sources(matches)
    except (OSError, ValueError):
        region_of, seen_regions = {}, set()
    classes = ckpts[0].preprocessing.class_names
    fields = [
        (number, category.lower())
        for number, category in sorted(labels.items())
        if category.lower() in classes
        and (folder / "JPEGImages" / f"BloodImage_{number:05d}.jpg").exists()
    ]
    if not fields:
        raise DataNotFoundError(f"no BCCD field under {folder} has a category these models know")
    paths = [folder / "JPEGImages" / f"BloodImage_{number:05d}.jpg" for number, _ in fields]
    regions = np.array([region_of.get(n, n) for n, _ in fields])
    return FieldCalls(
        truth=np.array([c for _, c in fields]),
        regions=regions,
        seen=np.array([r in seen_regions for r in regions]),
        probs=localised_probs(ckpts, paths, progress=progress, desc="BCCD fields"),
        categories=tuple(sorted(set(c for _, c in fields))),
    )


def field_accuracy(ckpts, root: Path, *, progress: bool = True) -> list[dict]:
    """Field-level accuracy on the BCCD fields whose ``labels.csv`` names one category that
    the models know (:func:`field_calls`), against the field's category.

    The Kaggle blood-cells images were cut from these very fields, so for blood-cells models
    a field whose smear region has a Kaggle TRAIN image was trained on: those and the unseen
    ones are reported apart. ``restricted``: the prediction taken among the categories that
    occur in BCCD's labels only (a PBC model also knows platelets, erythroblasts, IG).
    Intervals resample whole smear regions (:func:`bloodviz.metrics.grouped_accuracy_ci`)."""
    from bloodviz.metrics import grouped_accuracy_ci

    found = field_calls(ckpts, root, progress=progress)
    classes = np.asarray(ckpts[0].preprocessing.class_names)
    allowed = np.isin(classes, found.categories)
    rows = []
    for ckpt in ckpts:
        probs = found.probs[ckpt.name]
        missed = np.isnan(probs).any(axis=1)
        filled = np.nan_to_num(probs, nan=-1.0)
        plain = (classes[filled.argmax(axis=1)] == found.truth) & ~missed
        restricted = classes[np.where(allowed, filled, -2.0).argmax(axis=1)] == found.truth
        restricted &= ~missed
        seen = found.seen if ckpt.dataset == "blood-cells" else np.zeros(len(missed), bool)
        for part, mask in (("unseen fields", ~seen), ("fields trained on", seen)):
            if not mask.any():
                continue
            rows.append(
                {
                    "model": ckpt.name,
                    "dataset": ckpt.dataset_key,
                    "fields": part,
                    "n": int(mask.sum()),
                    "no cell found": int(missed[mask].sum()),
                    "accuracy": float(plain[mask].mean()),
                    "accuracy_ci": grouped_accuracy_ci(plain[mask], found.regions[mask]),
                    "restricted": float(restricted[mask].mean()),
                    "restricted_ci": grouped_accuracy_ci(restricted[mask], found.regions[mask]),
                    "categories": ", ".join(found.categories),
                }
            )
    return rows


def format_field_accuracy(rows: list[dict]) -> str:
    lines = [
        f"{'dataset':16s} {'model':16s} {'fields':18s} {'n':>4s} {'no cell':>7s} "
        f"{'accuracy [95% CI]':>24s} {'restricted [95% CI]':>24s}"
    ]
    for r in rows:
        lines.append(
            f"{r['dataset']:16s} {r['model']:16s} {r['fields']:18s} {r['n']:4d} "
            f"{r['no cell found']:7d} {r['accuracy']:8.2%} [{r['accuracy_ci'][0]:.3f}, "
            f"{r['accuracy_ci'][1]:.3f}] {r['restricted']:8.2%} [{r['restricted_ci'][0]:.3f}, "
            f"{r['restricted_ci'][1]:.3f}]"
        )
    return "\n".join(lines)


def draw_boxes(rgb: np.ndarray, boxes, labels: list[str] | None = None) -> np.ndarray:
    """The field with each box outlined and labelled (``#1``, or the given labels): what
    the upload page shows above a field's cells."""
    from PIL import Image, ImageDraw, ImageFont

    image = Image.fromarray(np.asarray(rgb, dtype=np.uint8)).convert("RGB")
    draw = ImageDraw.Draw(image)
    width = max(2, round(min(image.size) / 160))
    font = ImageFont.load_default(size=max(12, min(image.size) // 24))
    for number, box in enumerate(boxes, start=1):
        corners = box.corners if isinstance(box, Box) else tuple(box)
        text = labels[number - 1] if labels else f"#{number}"
        draw.rectangle(corners, outline=(255, 215, 0), width=width)
        x, y = corners[0] + width, corners[1] + width  # inside the box: never off the image
        draw.rectangle(draw.textbbox((x, y), text, font=font), fill=(0, 0, 0))
        draw.text((x, y), text, fill=(255, 215, 0), font=font)
    return np.asarray(image)
