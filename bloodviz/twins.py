"""The Kaggle blood-cells split's leakage: which source field every image was cut from.

Kaggle's "Blood Cell Images" TRAIN (9,957) and TEST (2,487) are augmentations (rotation, flip,
shear, zoom, shift, colour) of white cells cut from the BCCD smear fields, which the same
download ships in ``dataset-master/JPEGImages`` (366 fields, 640x480). Two images cut from one
field are near-twins, whichever split they landed in. We find each image's source field by
geometry, not by appearance:

1. SIFT keypoints on the field (2,000) and on the image (1,000), and on the image's mirror,
   since a flip is one of the augmentations and SIFT descriptors are not mirror-invariant;
2. the image's descriptors vote for fields through one FLANN index over every field's
   descriptors (ratio test 0.85); the four most-voted fields of each orientation are checked;
3. a full affine transform (the augmentation's rotation, shear, zoom and shift) is fitted by
   RANSAC to the ratio-test matches (0.8) against each candidate; its inliers are the score.

An image is matched to the best field when that field has at least :data:`MIN_INLIERS` inliers
and at least :data:`MIN_MARGIN` times the runner-up's. Why not an embedding: a CNN embedding,
blurred-pixel correlation and nucleus-shape moments were tried first and grouped images of
different classes together (nearest-neighbour label agreement 27-54%); keypoint geometry survives
the augmentation because it is the augmentation that a transform undoes.

How a match is confirmed: (a) the field's own label in ``labels.csv`` is never used for
matching, so its agreement with the image's class is an independent check; (b) ``twins --sheet``
draws a sample of images beside their field warped into the image's frame, to be read by eye.

The result ships as ``bloodviz/resources/kaggle_sources.csv.gz`` (one row an image); the
``test_dedup`` split (TEST images whose source field has no image in TRAIN) is derived from it,
and an image left unmatched is kept out of ``test_dedup``: it cannot be shown to be twin-free.
"""

from __future__ import annotations

import csv
import gzip
import io
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from bloodviz.paths import REPO_ROOT, DataNotFoundError

SOURCES_PATH = REPO_ROOT / "bloodviz" / "resources" / "kaggle_sources.csv.gz"
MIN_INLIERS = 15
MIN_MARGIN = 2.0
FIELD_FEATURES = 2000
IMAGE_FEATURES = 1000
CANDIDATES = 4
VOTE_RATIO = 0.85
MATCH_RATIO = 0.8
RANSAC_PIXELS = 5.0
# the Kaggle folders and the split names the blood-cells dataset gives them ("val" is carved
# out of TRAIN, so every TRAIN image counts as training data here)
KAGGLE_SPLITS = {"TRAIN": "train", "TEST": "test", "TEST_SIMPLE": "test_simple"}
COLUMNS = (
    "image",
    "split",
    "label",
    "field",
    "inliers",
    "runner_up",
    "field_label",
    "affine",
    "region",
)


@dataclass(frozen=True)
class SourceMatch:
    """Where one Kaggle image came from: ``field`` is the BCCD image number, or None."""

    image: str  # "TEST/EOSINOPHIL/_0_5239.jpeg", the blood-cells sample id
    split: str
    label: str
    field: int | None
    inliers: int
    runner_up: int
    field_label: str
    affine: tuple[float, ...]  # image (x, y) -> field (x, y), 2x3 row-major; () if none
    # fields that are overlapping views of one smear region share a region (its lowest field)
    region: int | None = None

    @property
    def matched(self) -> bool:
        return self.field is not None


def accept(inliers: int, runner_up: int) -> bool:
    """The matching rule: enough agreeing keypoints, and clearly more than any other field."""
    return inliers >= MIN_INLIERS and inliers >= MIN_MARGIN * runner_up


def read_field_labels(labels_csv: Path) -> dict[int, str]:
    """BCCD's ``labels.csv``: field number -> category (blank or several for some fields)."""
    labels: dict[int, str] = {}
    with open(labels_csv, newline="") as handle:
        for row in csv.reader(handle):
            if len(row) > 2 and row[1].strip().isdigit():
                labels[int(row[1])] = row[2].strip().upper()
    return labels


def field_number(path: Path) -> int:
    found = re.search(r"(\d+)$", path.stem)
    if not found:
        raise ValueError(f"{path.name} is not a BCCD field name (BloodImage_00042.jpg)")
    return int(found.group(1))


def find_bccd_fields(root: Path) -> Path:
    """The ``dataset-master`` folder (JPEGImages + labels.csv) under the blood-cells root."""
    root = Path(root)
    for candidate in [root, root / "dataset-master", *sorted(root.glob("**/dataset-master"))]:
        if (candidate / "JPEGImages").is_dir():
            return candidate
    raise DataNotFoundError(
        f"no BCCD fields under {root}: expected dataset-master/JPEGImages/BloodImage_*.jpg"
    )


class FieldIndex:
    """Every BCCD field's SIFT keypoints, and one FLANN index over all their descriptors."""

    def __init__(self, fields_dir: Path, progress: bool = True):
        import cv2
        from tqdm.auto import tqdm

        self.cv2 = cv2
        paths = sorted(p for p in Path(fields_dir).glob("*.jpg"))
        if not paths:
            raise DataNotFoundError(f"no field images (*.jpg) in {fields_dir}")
        sift = cv2.SIFT_create(nfeatures=FIELD_FEATURES)
        self.numbers: list[int] = []
        self.points: list[np.ndarray] = []
        self.descriptors: list[np.ndarray] = []
        for path in tqdm(paths, desc="field keypoints", disable=not progress):
            grey = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
            if grey is None:
                continue
            keypoints, desc = sift.detectAndCompute(grey, None)
            if desc is None:
                continue
            self.numbers.append(field_number(path))
            self.points.append(np.float32([k.pt for k in keypoints]))
            self.descriptors.append(desc)
        self.owner = np.concatenate([np.full(len(d), i) for i, d in enumerate(self.descriptors)])
        self.flann = cv2.FlannBasedMatcher({"algorithm": 1, "trees": 4}, {"checks": 64})
        self.flann.add([np.vstack(self.descriptors)])
        self.flann.train()
        self.pair_matcher = cv2.BFMatcher(cv2.NORM_L2)
        self.sift = cv2.SIFT_create(nfeatures=IMAGE_FEATURES)

    def _verify(self, points, desc, field: int) -> tuple[int, np.ndarray | None]:
        cv2 = self.cv2
        pairs = self.pair_matcher.knnMatch(desc, self.descriptors[field], k=2)
        good = [
            a for a, b in (p for p in pairs if len(p) == 2) if a.distance < MATCH_RATIO * b.distance
        ]
        if len(good) < 6:
            return 0, None
        src = points[[g.queryIdx for g in good]]
        dst = self.points[field][[g.trainIdx for g in good]]
        affine, inliers = cv2.estimateAffine2D(
            src, dst, method=cv2.RANSAC, ransacReprojThreshold=RANSAC_PIXELS
        )
        if inliers is None:
            return 0, None
        return int(inliers.sum()), affine

    def field_links(self, progress: bool = True) -> list[tuple[int, int, int]]:
        """(field, other field, inliers) for every field that is an overlapping view of
        another (the same smear region photographed twice), by the images' matching rule."""
        from tqdm.auto import tqdm

        links = []
        for i, (points, desc) in enumerate(
            tqdm(
                list(zip(self.points, self.descriptors)),
                desc="field overlaps",
                disable=not progress,
            )
        ):
            # the nearest descriptor is the field's own: vote with the second and third
            triples = [t for t in self.flann.knnMatch(desc, k=3) if len(t) == 3]
            votes = np.bincount(
                [
                    self.owner[b.trainIdx]
                    for a, b, c in triples
                    if self.owner[a.trainIdx] == i and b.distance < VOTE_RATIO * c.distance
                ],
                minlength=len(self.descriptors),
            )
            votes[i] = 0
            scored = sorted(
                (
                    (self._verify(points, desc, int(f))[0], int(f))
                    for f in np.argsort(votes)[::-1][:CANDIDATES]
                ),
                reverse=True,
            )
            (inliers, best), runner_up = scored[0], scored[1][0] if len(scored) > 1 else 0
            if accept(inliers, runner_up):
                links.append((self.numbers[i], self.numbers[best], inliers))
        return links

    def match(self, grey: np.ndarray) -> tuple[int | None, int, int, tuple[float, ...]]:
        """(field number or None, inliers, runner-up inliers, affine image -> field)."""
        width = grey.shape[1]
        scored: dict[int, tuple[int, np.ndarray | None]] = {}
        for mirrored in (False, True):
            view = np.ascontiguousarray(grey[:, ::-1]) if mirrored else grey
            keypoints, desc = self.sift.detectAndCompute(view, None)
            if desc is None or len(keypoints) < 6:
                continue
            points = np.float32([k.pt for k in keypoints])
            votes = np.bincount(
                [
                    self.owner[a.trainIdx]
                    for a, b in (p for p in self.flann.knnMatch(desc, k=2) if len(p) == 2)
                    if a.distance < VOTE_RATIO * b.distance
                ],
                minlength=len(self.descriptors),
            )
            for field in np.argsort(votes)[::-1][:CANDIDATES]:
                inliers, affine = self._verify(points, desc, int(field))
                if affine is not None and mirrored:
                    # fold the mirror into the transform: x_view = width - 1 - x_image
                    flip = np.array([[-1.0, 0.0, width - 1.0], [0.0, 1.0, 0.0], [0, 0, 1]])
                    affine = affine @ flip
                if inliers > scored.get(int(field), (-1, None))[0]:
                    scored[int(field)] = (inliers, affine)
        if not scored:
            return None, 0, 0, ()
        ranked = sorted(scored.items(), key=lambda kv: kv[1][0], reverse=True)
        best, (inliers, affine) = ranked[0]
        runner_up = ranked[1][1][0] if len(ranked) > 1 else 0
        if not accept(inliers, runner_up) or affine is None:
            return None, inliers, runner_up, ()
        return (
            self.numbers[best],
            inliers,
            runner_up,
            tuple(round(float(v), 4) for v in np.asarray(affine)[:2].ravel()),
        )


def kaggle_images(images_root: Path) -> list[tuple[str, str, str, Path]]:
    """(sample id, split, class, path) for every Kaggle image, in the dataset's id scheme."""
    rows = []
    for folder, split in KAGGLE_SPLITS.items():
        for path in sorted(Path(images_root, folder).glob("*/*")):
            if path.suffix.lower() in {".jpeg", ".jpg", ".png"}:
                rows.append(
                    (
                        f"{folder}/{path.parent.name}/{path.name}",
                        split,
                        path.parent.name.lower(),
                        path,
                    )
                )
    return rows


def match_sources(
    data_root: Path, *, limit: int | None = None, progress: bool = True
) -> list[SourceMatch]:
    """Match every Kaggle image (or the first ``limit``) under ``data_root`` to its field."""
    import cv2
    from tqdm.auto import tqdm

    from bloodviz.data import find_kaggle_images

    cv2.setNumThreads(1)
    images_root = find_kaggle_images(data_root)
    fields_root = find_bccd_fields(Path(data_root))
    field_labels = read_field_labels(fields_root / "labels.csv")
    index = FieldIndex(fields_root / "JPEGImages", progress=progress)
    regions = regions_of(index.numbers, index.field_links(progress=progress))
    images = kaggle_images(images_root)[:limit]
    matches = []
    for sample_id, split, label, path in tqdm(images, desc="images", disable=not progress):
        grey = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        if grey is None:
            field, inliers, runner_up, affine = None, 0, 0, ()
        else:
            field, inliers, runner_up, affine = index.match(grey)
        matches.append(
            SourceMatch(
                image=sample_id,
                split=split,
                label=label,
                field=field,
                inliers=inliers,
                runner_up=runner_up,
                field_label=field_labels.get(field, "").lower() if field is not None else "",
                affine=affine,
                region=regions.get(field) if field is not None else None,
            )
        )
    return matches


def regions_of(fields, links) -> dict[int, int]:
    """Field -> region (the lowest field number of its group): the connected components of
    the overlap links."""
    parent = {f: f for f in fields}

    def root(f):
        while parent[f] != f:
            parent[f] = parent[parent[f]]
            f = parent[f]
        return f

    for a, b, _ in links:
        ra, rb = root(a), root(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    return {f: root(f) for f in fields}


def with_regions(matches, regions: dict[int, int]) -> list[SourceMatch]:
    """``matches`` with each image's region set from its field."""
    from dataclasses import replace

    return [
        replace(m, region=regions.get(m.field) if m.field is not None else None) for m in matches
    ]


def write_sources(matches: list[SourceMatch], path: Path = SOURCES_PATH) -> Path:
    """The matches as a gzipped CSV (deterministic bytes: no timestamp in the gzip header)."""
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(COLUMNS)
    for m in matches:
        writer.writerow(
            [
                m.image,
                m.split,
                m.label,
                "" if m.field is None else m.field,
                m.inliers,
                m.runner_up,
                m.field_label,
                " ".join(f"{v:g}" for v in m.affine),
                "" if m.region is None else m.region,
            ]
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as handle:
        handle.write(text.getvalue().encode())
    tmp.replace(path)
    return path


@lru_cache(maxsize=2)
def read_sources(path: Path = SOURCES_PATH) -> tuple[SourceMatch, ...]:
    if not Path(path).exists():
        raise DataNotFoundError(
            f"{path} is missing: rebuild it with `python -m bloodviz twins` (needs the raw "
            "blood-cells data with dataset-master)"
        )
    with gzip.open(path, "rt", newline="") as handle:
        rows = list(csv.DictReader(handle))
    return tuple(
        SourceMatch(
            image=r["image"],
            split=r["split"],
            label=r["label"],
            field=int(r["field"]) if r["field"] else None,
            inliers=int(r["inliers"]),
            runner_up=int(r["runner_up"]),
            field_label=r["field_label"],
            affine=tuple(float(v) for v in r["affine"].split()),
            region=int(r["region"]) if r.get("region") else None,
        )
        for r in rows
    )


def source_of(m: SourceMatch) -> int | None:
    """The smear region an image shows: its field's region (the field where none is known)."""
    return m.region if m.region is not None else m.field


def training_sources(matches) -> set[int]:
    """Regions with at least one image in Kaggle's TRAIN (which our train and val split)."""
    return {source_of(m) for m in matches if m.split == "train" and m.matched}


def _by_twin(matches, split: str) -> tuple[list[str], list[str]]:
    """The matched ``split`` images: (those with a TRAIN twin, those without)."""
    seen = training_sources(matches)
    chosen = [m for m in matches if m.split == split and m.matched]
    return (
        [m.image for m in chosen if source_of(m) in seen],
        [m.image for m in chosen if source_of(m) not in seen],
    )


def dedup_ids(matches, split: str = "test") -> list[str]:
    """The ``split`` images whose source region is known and has no image in TRAIN."""
    return _by_twin(matches, split)[1]


def twinned_ids(matches, split: str = "test") -> list[str]:
    """The ``split`` images with a TRAIN image of the same source (one pass, not a
    :func:`twins_of` per image)."""
    return _by_twin(matches, split)[0]


def leakage_table(matches) -> list[dict]:
    """Per evaluation split and class: images, matched, with a TRAIN twin, and the shares."""
    seen = training_sources(matches)
    rows = []
    for split in ("test", "test_simple"):
        chosen = [m for m in matches if m.split == split]
        for label in sorted({m.label for m in chosen}) + ["all"]:
            group = [m for m in chosen if label in ("all", m.label)]
            matched = [m for m in group if m.matched]
            twin = [m for m in matched if source_of(m) in seen]
            agree = [m for m in matched if m.field_label == m.label]
            rows.append(
                {
                    "split": split,
                    "class": label,
                    "images": len(group),
                    "matched": len(matched),
                    "with_train_twin": len(twin),
                    "twin_share": len(twin) / len(matched) if matched else float("nan"),
                    "source_fields": len({m.field for m in matched}),
                    "label_agreement": len(agree) / len(matched) if matched else float("nan"),
                }
            )
    return rows


def twins_of(matches, image: str) -> list[SourceMatch]:
    """The TRAIN images cut from the same smear region as ``image`` (its field, or a field that
    overlaps it)."""
    found = {m.image: m for m in matches}.get(image)
    if found is None or found.field is None:
        return []
    return [
        m for m in matches if m.split == "train" and m.matched and source_of(m) == source_of(found)
    ]


def contact_sheet(
    matches, data_root: Path, out: Path, *, count: int = 12, seed: int = 0, split: str = "test"
) -> Path:
    """A PNG to confirm matches by eye: per row, an image, its field warped into the image's
    frame by the fitted transform, and one TRAIN image of the same field (or a blank)."""
    import cv2

    from bloodviz.data import find_kaggle_images

    images_root = find_kaggle_images(data_root)
    fields_dir = find_bccd_fields(Path(data_root)) / "JPEGImages"
    chosen = [m for m in matches if m.split == split and m.matched]
    if not chosen:
        raise DataNotFoundError(f"no matched {split} images to draw")
    rng = np.random.default_rng(seed)
    picked = [chosen[i] for i in rng.choice(len(chosen), min(count, len(chosen)), replace=False)]
    rows = []
    for m in picked:
        image = cv2.imread(str(images_root / m.image))
        height, width = image.shape[:2]
        field = cv2.imread(str(next(fields_dir.glob(f"*{m.field:05d}.jpg"))))
        to_field = np.asarray(m.affine, dtype=np.float64).reshape(2, 3)
        warped = cv2.warpAffine(field, cv2.invertAffineTransform(to_field), (width, height))
        twin_list = twins_of(matches, m.image)
        twin = (
            cv2.resize(cv2.imread(str(images_root / twin_list[0].image)), (width, height))
            if twin_list
            else np.zeros_like(image)
        )
        caption = (
            f"{m.image}  field {m.field} ({m.field_label})  {m.inliers} inliers  "
            f"{len(twin_list)} TRAIN twins"
        )
        row = np.hstack([image, warped, twin])
        cv2.putText(row, caption, (6, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 2)
        cv2.putText(row, caption, (6, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1)
        rows.append(row)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(out), np.vstack(rows))
    return out


def format_leakage(rows: list[dict]) -> str:
    lines = [
        f"{'split':12s} {'class':11s} {'images':>6s} {'matched':>7s} {'fields':>6s} "
        f"{'TRAIN twin':>10s} {'share':>6s} {'labels agree':>12s}"
    ]
    for r in rows:
        lines.append(
            f"{r['split']:12s} {r['class']:11s} {r['images']:6d} {r['matched']:7d} "
            f"{r['source_fields']:6d} {r['with_train_twin']:10d} {r['twin_share']:6.1%} "
            f"{r['label_agreement']:12.1%}"
        )
    return "\n".join(lines)


def field_with_footprints(fields_root: Path, field: int, shown, *, image_size=(320, 240)):
    """The BCCD field (PIL image) with the outline of each of ``shown`` (SourceMatch rows of
    that field) drawn where its transform puts it: red for TEST, blue for TRAIN."""
    from PIL import Image, ImageDraw

    path = next(Path(fields_root, "JPEGImages").glob(f"*{field:05d}.jpg"), None)
    if path is None:
        raise DataNotFoundError(f"field {field} is not in {fields_root}/JPEGImages")
    image = Image.open(path).convert("RGB")
    draw = ImageDraw.Draw(image)
    width, height = image_size
    corners = np.array([[0, 0, 1], [width, 0, 1], [width, height, 1], [0, height, 1]], float)
    for m in shown:
        if m.field != field or not m.affine:
            continue
        outline = corners @ np.asarray(m.affine).reshape(2, 3).T
        color = (220, 30, 30) if m.split != "train" else (30, 90, 220)
        draw.polygon(
            [tuple(p) for p in outline], outline=color, width=3 if m.split != "train" else 1
        )
    return image
