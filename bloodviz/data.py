"""Datasets: one loader API over the PBC folder, MedMNIST's BloodMNIST files, Kaggle's set and
NIH's malaria cells.

Each dataset gives its class names, its splits, stable sample ids, the :class:`Preprocessing`
it implies, and decoded ``uint8`` arrays per split (cached on disk after the first decode).
"""

from __future__ import annotations

import csv
import hashlib
import os
import re
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError
from tqdm.auto import tqdm

from bloodviz.paths import DataNotFoundError, cache_root, resolve_data_root
from bloodviz.preprocess import Preprocessing

PBC_CLASSES = (
    "basophil",
    "eosinophil",
    "erythroblast",
    "ig",
    "lymphocyte",
    "monocyte",
    "neutrophil",
    "platelet",
)
PBC_DISPLAY = {"ig": "immature granulocyte"}
BLOOD_CELLS_CLASSES = ("eosinophil", "lymphocyte", "monocyte", "neutrophil")
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}
# MedMNIST's recipe for PBC: centre 200x200 of the 360x363 original, then resize.
PBC_FIELD_CROP_FRACTION = 200 / 360
PBC_SPLIT_FILE = Path(__file__).parent / "resources" / "pbc_split.csv"


class DataError(ValueError):
    """Data is present but unusable (corrupt image, malformed manifest or npz)."""


@dataclass
class SplitArrays:
    """One split, decoded: ids, ``N x H x W x 3`` uint8 images and integer labels."""

    ids: np.ndarray
    images: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.ids)


def stratified_split(
    labels: np.ndarray, fractions: tuple[float, ...], seed: int
) -> list[np.ndarray]:
    """Indices for each fraction, stratified by label, reproducible from ``seed``."""
    rng = np.random.default_rng(seed)
    parts: list[list[int]] = [[] for _ in fractions]
    for label in np.unique(labels):
        idx = np.flatnonzero(labels == label)
        rng.shuffle(idx)
        bounds = np.round(np.cumsum(fractions) / sum(fractions) * len(idx)).astype(int)
        start = 0
        for part, stop in zip(parts, bounds):
            part.extend(idx[start:stop].tolist())
            start = stop
    return [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]


def limit_per_class(labels: np.ndarray, limit: int | None, seed: int = 0) -> np.ndarray:
    """Indices of at most ``limit`` samples of each class, chosen reproducibly."""
    if not limit:
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    keep = []
    for label in np.unique(labels):
        idx = np.flatnonzero(labels == label)
        keep.extend(rng.permutation(idx)[:limit].tolist())
    return np.sort(np.asarray(keep, dtype=np.int64))


class BloodDataset:
    """Base class: subclasses fill ``_index`` (sample id, label, file path) per split."""

    name: str = ""
    class_names: tuple[str, ...] = ()
    splits: tuple[str, ...] = ("train", "val", "test")
    eval_splits: tuple[str, ...] = ("test",)
    description: str = ""
    default_framing: str = "cell"

    def __init__(self, folder: Path, size: int):
        self.folder = Path(folder)
        self.size = int(size)
        self._entries: dict[str, list[tuple[str, int, Path | None]]] = {}

    # -- subclasses ---------------------------------------------------------------------------
    def _index(self) -> dict[str, list[tuple[str, int, Path | None]]]:
        raise NotImplementedError

    def preprocessing(self) -> Preprocessing:
        raise NotImplementedError

    # -- public API ---------------------------------------------------------------------------
    @property
    def key(self) -> str:
        """Folder name of this dataset's checkpoints: ``<dataset>-<size>``."""
        return f"{self.name}-{self.size}"

    def display_class(self, name: str) -> str:
        return PBC_DISPLAY.get(name, name)

    def entries(self, split: str) -> list[tuple[str, int, Path | None]]:
        if split not in self.splits:
            raise KeyError(f"{self.name} has splits {', '.join(self.splits)}; not {split!r}")
        if not self._entries:
            self._entries = self._index()
        return self._entries[split]

    def sample_ids(self, split: str) -> list[str]:
        return [e[0] for e in self.entries(split)]

    def labels(self, split: str) -> np.ndarray:
        return np.asarray([e[1] for e in self.entries(split)], dtype=np.int64)

    def class_counts(self) -> dict[str, dict[str, int]]:
        counts = {}
        for split in self.splits:
            bins = np.bincount(self.labels(split), minlength=len(self.class_names))
            counts[split] = {c: int(n) for c, n in zip(self.class_names, bins)}
        return counts

    def open_image(self, sample_id: str) -> Image.Image:
        for split in self.splits:
            for sid, _, path in self.entries(split):
                if sid == sample_id:
                    return _open_image(path)
        raise KeyError(f"no sample {sample_id!r} in {self.name}")

    def load_split(
        self,
        split: str,
        limit: int | None = None,
        seed: int = 0,
        progress: bool = True,
    ) -> SplitArrays:
        """Decode a split (or ``limit`` samples a class of it) into arrays, cached on disk."""
        entries = self.entries(split)
        labels = np.asarray([e[1] for e in entries], dtype=np.int64)
        keep = limit_per_class(labels, limit, seed)
        chosen = [entries[i] for i in keep]
        ids = np.asarray([e[0] for e in chosen])
        labels = labels[keep]
        images = self._decode(split, chosen, progress)
        return SplitArrays(ids=ids, images=images, labels=labels)

    def _decode(self, split: str, chosen: list, progress: bool) -> np.ndarray:
        prep = self.preprocessing()
        framing = self.default_framing
        digest = hashlib.sha1()
        digest.update(repr((self.name, self.size, split, framing, prep.to_dict())).encode())
        for sid, _, path in chosen:
            try:
                stat = path.stat()
                digest.update(f"{sid}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
            except OSError:
                digest.update(f"{sid}|missing\n".encode())  # decoding reports it below
        cache_file = cache_root() / "arrays" / f"{self.key}-{split}-{digest.hexdigest()[:16]}.npy"
        if cache_file.exists():
            try:
                images = np.load(cache_file, allow_pickle=False)
                if images.shape == (len(chosen), self.size, self.size, 3):
                    return images
            except (OSError, ValueError):
                pass  # a damaged cache file is simply rebuilt

        def decode(item):
            sid, _, path = item
            try:
                with _open_image(path) as image:
                    return prep.prepare(image, framing)
            except DataError:
                raise
            except Exception as exc:  # PIL raises many types for broken files
                raise DataError(f"cannot decode {path}: {exc}") from exc

        images = np.empty((len(chosen), self.size, self.size, 3), dtype=np.uint8)
        errors: list[str] = []
        workers = min(4, os.cpu_count() or 1)
        with ThreadPoolExecutor(workers) as pool:
            results = pool.map(_capture(decode), chosen)
            bar = tqdm(
                results,
                total=len(chosen),
                desc=f"decode {self.key}/{split}",
                disable=not progress,
                leave=False,
            )
            for i, (array, error) in enumerate(bar):
                if error is not None:
                    errors.append(error)
                else:
                    images[i] = array
        if errors:
            more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
            raise DataError(
                f"{len(errors)} unreadable image(s) in {self.name}/{split}: "
                + "; ".join(errors[:5])
                + more
            )
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_file.with_suffix(f".tmp{os.getpid()}.npy")
        np.save(tmp, images)
        os.replace(tmp, cache_file)
        return images


def _capture(fn):
    def wrapped(item):
        try:
            return fn(item), None
        except DataError as exc:
            return None, str(exc)

    return wrapped


def _open_image(path: Path) -> Image.Image:
    if not path.exists():
        raise DataError(f"image file {path} is missing")
    if path.stat().st_size == 0:
        raise DataError(f"image file {path} is empty")
    try:
        image = Image.open(path)
        image.load()
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise DataError(f"image file {path} is not a readable image ({exc})") from exc
    return image


# ------------------------------------------------------------------------------------------------
class PBCDataset(BloodDataset):
    """PBC (Acevedo et al. 2020), the source of BloodMNIST: 8 classes.

    Two layouts: our prepared folder (MedMNIST-style 128 px crops with ``manifest.csv``), or a
    plain PBC download (one folder per class of 360x363 originals, no manifest), which gets
    MedMNIST's recipe on the fly and our shipped split list (seeded stratified 70/10/20 for any
    file the list does not name).
    """

    name = "pbc"
    class_names = PBC_CLASSES
    description = (
        "PBC peripheral blood cells (Acevedo et al., Data in Brief 2020, CC BY 4.0), the source "
        "of MedMNIST's BloodMNIST: 8 classes, a fixed stratified 70/10/20 train/val/test split. "
        "Images are MedMNIST-style crops (centre 200x200 of the 360x363 original) resized to "
        "the chosen size."
    )

    def __init__(self, folder: Path, size: int, split_seed: int = 0):
        super().__init__(folder, size)
        self.split_seed = split_seed
        self.has_manifest = (self.folder / "manifest.csv").exists()
        self.default_framing = "cell" if self.has_manifest else "full"
        if not self.has_manifest and not any((self.folder / c).is_dir() for c in PBC_CLASSES):
            raise DataNotFoundError(
                f"{self.folder} is not a PBC folder: expected manifest.csv, or class folders "
                f"{', '.join(PBC_CLASSES)}"
            )

    def preprocessing(self) -> Preprocessing:
        return Preprocessing(
            size=self.size,
            class_names=self.class_names,
            field_crop_fraction=PBC_FIELD_CROP_FRACTION,
            field_resize=128,
            description="PBC: a cell crop is resized; a full 360x363 field is first cut to its "
            "centre 200x200 and resized to 128 (MedMNIST's recipe, as in our pbc folder).",
        )

    def _index(self):
        return self._index_manifest() if self.has_manifest else self._index_plain()

    def _index_manifest(self):
        entries: dict[str, list] = {s: [] for s in self.splits}
        for row in read_manifest(self.folder / "manifest.csv", PBC_CLASSES, self.splits):
            entries[row["split"]].append(
                (row["path"], PBC_CLASSES.index(row["label"]), self.folder / row["path"])
            )
        return entries

    def _index_plain(self):
        files = []
        for label, cls in enumerate(PBC_CLASSES):
            folder = self.folder / cls
            if folder.is_dir():
                for path in sorted(folder.iterdir()):
                    if path.suffix.lower() in IMAGE_SUFFIXES:
                        files.append((f"{cls}/{path.name}", label, path))
        if not files:
            raise DataNotFoundError(f"no images in the class folders of {self.folder}")
        listed = read_pbc_split_list()
        entries: dict[str, list] = {s: [] for s in self.splits}
        unlisted = []
        for item in files:
            split = listed.get(item[0])
            if split is None:
                unlisted.append(item)
            else:
                entries[split].append(item)
        if unlisted:
            labels = np.asarray([u[1] for u in unlisted])
            parts = stratified_split(labels, (0.7, 0.1, 0.2), self.split_seed)
            for split, idx in zip(self.splits, parts):
                entries[split].extend(unlisted[i] for i in idx)
        return entries


def read_manifest(manifest: Path, classes: tuple[str, ...], splits: tuple[str, ...]) -> list[dict]:
    """The rows of a ``manifest.csv`` (path,label,split[,...]), each label and split checked."""
    with open(manifest, newline="") as handle:
        reader = csv.DictReader(handle)
        missing_cols = {"path", "label", "split"} - set(reader.fieldnames or [])
        if missing_cols:
            raise DataError(
                f"{manifest} lacks column(s) {sorted(missing_cols)}; expected path,label,split"
            )
        rows = []
        for line, row in enumerate(reader, start=2):
            if row["label"] not in classes or row["split"] not in splits:
                raise DataError(
                    f"{manifest}:{line}: label {row['label']!r} or split {row['split']!r} is "
                    f"not one of {classes} / {splits}"
                )
            rows.append(row)
    if not rows:
        raise DataError(f"{manifest} lists no images")
    return rows


def read_pbc_split_list() -> dict[str, str]:
    """Our fixed PBC split, shipped as a file list (relative path -> split)."""
    with open(PBC_SPLIT_FILE, newline="") as handle:
        return {row["path"]: row["split"] for row in csv.DictReader(handle)}


# ------------------------------------------------------------------------------------------------
class BloodCellsDataset(BloodDataset):
    """Kaggle "Blood Cell Images" (BCCD-derived), 4 WBC classes, 320x240 crops."""

    name = "blood-cells"
    class_names = BLOOD_CELLS_CLASSES
    splits = ("train", "val", "test", "test_simple", "test_dedup")
    # test_dedup is derived from test's predictions (see derived_splits), not predicted again
    eval_splits = ("test", "test_simple")
    description = (
        "Kaggle Blood Cell Images (Paul Mooney, BCCD-derived, MIT licence): 4 white-cell classes. "
        "TRAIN (9,957) and TEST (2,487) are augmented copies of BCCD smear fields. TEST's "
        "come from a few dozen source cells (the Data page counts them), so intervals over its "
        "images are optimistic, and validation (carved from TRAIN with a fixed seed) shares "
        "source cells with training; TEST_SIMPLE holds un-augmented copies of TEST's sources. "
        "TEST_DEDUP keeps the TEST images whose source has no image in TRAIN (found by keypoint "
        "matching to the BCCD fields: `python -m bloodviz twins`)."
    )
    folder_names = {"train": "TRAIN", "test": "TEST", "test_simple": "TEST_SIMPLE"}

    def __init__(self, folder: Path, size: int, val_fraction: float = 0.1, split_seed: int = 0):
        super().__init__(find_kaggle_images(folder), size)
        self.val_fraction = val_fraction
        self.split_seed = split_seed

    def preprocessing(self) -> Preprocessing:
        return Preprocessing(
            size=self.size,
            class_names=self.class_names,
            description="Kaggle crop (320x240): centre square (240x240), resized.",
        )

    def _index(self):
        raw: dict[str, list] = {}
        for split, folder_name in self.folder_names.items():
            items = []
            for label, cls in enumerate(self.class_names):
                folder = self.folder / folder_name / cls.upper()
                if not folder.is_dir():
                    raise DataNotFoundError(f"{folder} is missing (Kaggle layout expected)")
                for path in sorted(folder.iterdir()):
                    if path.suffix.lower() in IMAGE_SUFFIXES:
                        items.append((f"{folder_name}/{cls.upper()}/{path.name}", label, path))
            raw[split] = items
        labels = np.asarray([e[1] for e in raw["train"]])
        train_idx, val_idx = stratified_split(
            labels, (1 - self.val_fraction, self.val_fraction), self.split_seed
        )
        index = {
            "train": [raw["train"][i] for i in train_idx],
            "val": [raw["train"][i] for i in val_idx],
            "test": raw["test"],
            "test_simple": raw["test_simple"],
        }
        for split, (parent, ids) in derived_splits(self.name).items():
            index[split] = [e for e in index[parent] if e[0] in ids]
        return index


# Splits that are a subset of another split, named by the parent's sample ids: a model's
# predictions on them are the parent's rows, so no cell is decoded, predicted or stored twice.
def derived_splits(dataset: str) -> dict[str, tuple[str, frozenset[str]]]:
    """``{split: (parent split, its sample ids)}`` for ``dataset`` (base name, no size)."""
    if dataset != "blood-cells":
        return {}
    from bloodviz import twins

    try:
        sources = twins.read_sources()
    except DataNotFoundError:
        return {}
    return {"test_dedup": ("test", frozenset(twins.dedup_ids(sources)))}


def with_derived_splits(dataset: str, by_split: dict) -> dict:
    """``by_split`` (split -> Predictions-like with ``ids``) plus every derived split whose
    parent it holds, as the parent's rows in the parent's order."""
    out = dict(by_split)
    for split, (parent, ids) in derived_splits(dataset).items():
        if parent in by_split and split not in by_split:
            out[split] = subset_rows(by_split[parent], ids)
    return out


def subset_rows(preds, ids: frozenset[str]):
    """The rows of a Predictions (any dataclass with ``ids`` and per-row arrays) in ``ids``."""
    from dataclasses import fields, replace

    keep = np.isin(np.asarray(preds.ids).astype(str), list(ids))
    changed = {
        f.name: np.asarray(getattr(preds, f.name))[keep]
        for f in fields(preds)
        if isinstance(getattr(preds, f.name), np.ndarray)
        and len(getattr(preds, f.name)) == len(keep)
    }
    return replace(preds, **changed)


def find_kaggle_images(root: Path) -> Path:
    """The folder holding TRAIN/TEST/TEST_SIMPLE, wherever it sits under ``root``."""
    root = Path(root)
    if not root.is_dir():
        raise DataNotFoundError(f"{root} is not a folder")
    if (root / "TRAIN").is_dir():
        return root
    for candidate in [root / "dataset2-master" / "images", *sorted(root.glob("**/TRAIN"))]:
        folder = candidate if candidate.name != "TRAIN" else candidate.parent
        if (folder / "TRAIN").is_dir() and (folder / "TEST").is_dir():
            return folder
    raise DataNotFoundError(
        f"no Kaggle blood-cells layout under {root}: expected "
        "dataset2-master/images/{TRAIN,TEST,TEST_SIMPLE}/<CLASS>/*.jpeg"
    )


# ------------------------------------------------------------------------------------------------
MALARIA_CLASSES = ("parasitized", "uninfected")
# NIH names every cell after its slide and patient: C100P61ThinF_IMG_..., C68P29N_ThinF_...,
# and C1_thinF_... for the slides of healthy donors that carry no patient number.
MALARIA_PATIENT = re.compile(r"^(C\d+(?:P\d+)?)")
MALARIA_SPLIT_FRACTIONS = (0.7, 0.1, 0.2)


def malaria_patient(file_name: str) -> str:
    """The patient (slide) a NIH malaria cell comes from, read from its file name."""
    match = MALARIA_PATIENT.match(Path(file_name).name)
    if match is None:
        raise DataError(
            f"{file_name!r} does not start with NIH's C<slide>[P<patient>] prefix, so its "
            "patient is unknown and the cell cannot be split by patient"
        )
    return match.group(1)


def patient_split(patients: list[str], fractions: tuple[float, ...], seed: int) -> dict[str, int]:
    """Each patient's split index: a seeded shuffle of the patients cut by ``fractions``, so no
    patient has cells in two splits."""
    unique = sorted(set(patients))
    order = np.random.default_rng(seed).permutation(len(unique))
    bounds = np.round(np.cumsum(fractions) / sum(fractions) * len(unique)).astype(int)
    part_of = {}
    for rank, i in enumerate(order):
        part_of[unique[i]] = int(np.searchsorted(bounds, rank, side="right"))
    return part_of


def find_nih_cells(root: Path) -> Path | None:
    """The folder holding NIH's ``Parasitized`` and ``Uninfected``, wherever it sits."""
    for candidate in [root, root / "cell_images", root / "cell_images" / "cell_images"]:
        if (candidate / "Parasitized").is_dir() and (candidate / "Uninfected").is_dir():
            return candidate
    return None


class MalariaDataset(BloodDataset):
    """NIH "Cell Images for Detecting Malaria" (Rajaraman et al. 2018): thin-smear red cells,
    parasitized or uninfected, split **by patient**.

    Two layouts: our prepared folder (``manifest.csv`` with path,label,split,patient; 64 px
    cells), or NIH's own download (``cell_images/Parasitized``, ``cell_images/Uninfected``,
    original sizes, no split), which gets a seeded 70/10/20 split of its patients.
    """

    name = "malaria"
    class_names = MALARIA_CLASSES
    description = (
        "NIH malaria cells (Rajaraman et al., PeerJ 2018; U.S. National Library of Medicine, "
        "public domain): thin-smear red blood cells, parasitized or uninfected, split 70/10/20 "
        "by patient so no patient's cells are in two splits. Most published notebooks split by "
        "cell, which puts the same patients in training and test."
    )

    def __init__(self, folder: Path, size: int, split_seed: int = 0):
        super().__init__(folder, size)
        self.split_seed = split_seed
        self.has_manifest = (self.folder / "manifest.csv").exists()
        self.nih_folder = None if self.has_manifest else find_nih_cells(self.folder)
        if not self.has_manifest and self.nih_folder is None:
            raise DataNotFoundError(
                f"{self.folder} is not a malaria folder: expected manifest.csv, or NIH's "
                "cell_images/Parasitized and cell_images/Uninfected "
                "(python -m bloodviz download malaria)"
            )

    def preprocessing(self) -> Preprocessing:
        return Preprocessing(
            size=self.size,
            class_names=self.class_names,
            square="stretch",
            description="NIH malaria cell: the whole cell image (cut to the red cell's "
            "outline, any size) is resized to a square, as the prepared 64 px cells were.",
        )

    def patients(self, split: str) -> list[str]:
        return [malaria_patient(sid) for sid in self.sample_ids(split)]

    def _index(self):
        items = self._index_manifest() if self.has_manifest else self._index_nih()
        return self._assign_splits(items)

    def _index_manifest(self) -> list[tuple[str, int, Path, str, str | None]]:
        return [
            (
                row["path"],
                MALARIA_CLASSES.index(row["label"]),
                self.folder / row["path"],
                row.get("patient") or malaria_patient(row["path"]),
                row["split"],
            )
            for row in read_manifest(self.folder / "manifest.csv", MALARIA_CLASSES, self.splits)
        ]

    def _index_nih(self) -> list[tuple[str, int, Path, str, str | None]]:
        items = []
        for label, cls in enumerate(MALARIA_CLASSES):
            folder = self.nih_folder / cls.capitalize()
            for path in sorted(folder.iterdir()):
                if path.suffix.lower() in IMAGE_SUFFIXES:
                    rel = f"{cls}/{path.name}"
                    items.append((rel, label, path, malaria_patient(path.name), None))
        if not items:
            raise DataNotFoundError(f"no images in {self.nih_folder}/Parasitized, Uninfected")
        part_of = patient_split([i[3] for i in items], MALARIA_SPLIT_FRACTIONS, self.split_seed)
        return [(*i[:4], self.splits[part_of[i[3]]]) for i in items]

    def _assign_splits(self, items) -> dict[str, list[tuple[str, int, Path | None]]]:
        entries: dict[str, list] = {s: [] for s in self.splits}
        split_of_patient: dict[str, str] = {}
        for sid, label, path, patient, split in items:
            seen = split_of_patient.setdefault(patient, split)
            if seen != split:
                raise DataError(
                    f"patient {patient} has cells in both {seen} and {split}: a malaria split "
                    "must be by patient (fix the manifest's split column)"
                )
            entries[split].append((sid, label, path))
        return entries


class MalariaCellSplitDataset(MalariaDataset):
    """The same cells split the way most published notebooks do it: at random, **by cell**.

    Made to measure patient leakage. The patients of the patient split's train and val are
    pooled, and their cells shuffled: as many as the patient split trains on go to ``train``,
    the rest halves into ``val`` and ``test_seen`` (new cells of patients seen in training,
    what a random split tests on). ``test`` is the patient split's test: patients never seen.
    """

    name = "malaria-cells"
    splits = ("train", "val", "test", "test_seen")
    eval_splits = ("test", "test_seen")
    description = (
        "NIH malaria cells split at random by cell, as most published notebooks do, to measure "
        "patient leakage: test_seen holds new cells of the patients trained on; test holds the "
        "patient split's unseen patients."
    )

    def _assign_splits(self, items):
        by_patient = super()._assign_splits(items)
        pool = by_patient["train"] + by_patient["val"]
        order = np.random.default_rng(self.split_seed).permutation(len(pool))
        n_train = len(by_patient["train"])
        rest = order[n_train:]
        half = len(rest) // 2
        return {
            "train": [pool[i] for i in np.sort(order[:n_train])],
            "val": [pool[i] for i in np.sort(rest[:half])],
            "test": by_patient["test"],
            "test_seen": [pool[i] for i in np.sort(rest[half:])],
        }


# ------------------------------------------------------------------------------------------------
BLOODMNIST_SIZES = (28, 64, 128, 224)


def bloodmnist_filename(size: int) -> str:
    return "bloodmnist.npz" if size == 28 else f"bloodmnist_{size}.npz"


class BloodMNISTDataset(BloodDataset):
    """MedMNIST's official ``bloodmnist[_64|_128|_224].npz`` files."""

    name = "bloodmnist"
    class_names = PBC_CLASSES
    description = (
        "MedMNIST v2 BloodMNIST (official npz files, CC BY 4.0): the PBC images centre-cropped "
        "and resized by MedMNIST, with MedMNIST's own train/val/test split (11,959 / 1,712 / "
        "3,421)."
    )

    def __init__(self, folder: Path, size: int):
        if size not in BLOODMNIST_SIZES:
            raise ValueError(f"BloodMNIST comes in sizes {BLOODMNIST_SIZES}, not {size}")
        super().__init__(folder, size)
        name = bloodmnist_filename(size)
        candidates = [self.folder / name, self.folder / "bloodmnist" / name]
        found = [p for p in candidates if p.exists()]
        if not found:
            raise DataNotFoundError(
                f"{name} not found in {self.folder} or {self.folder / 'bloodmnist'}; "
                f"run `python -m bloodviz download bloodmnist --size {size}`"
            )
        self.file = found[0]
        self._arrays: dict[str, tuple[np.ndarray, np.ndarray]] | None = None

    def preprocessing(self) -> Preprocessing:
        return Preprocessing(
            size=self.size,
            class_names=self.class_names,
            field_crop_fraction=PBC_FIELD_CROP_FRACTION,
            description="BloodMNIST: a full 360x363 PBC field is cut to its centre 200x200 and "
            "resized straight to the model's size (MedMNIST's recipe).",
        )

    def _load(self):
        if self._arrays is None:
            try:
                with np.load(self.file, allow_pickle=False) as npz:
                    arrays = {}
                    for split in self.splits:
                        images = npz[f"{split}_images"]
                        labels = npz[f"{split}_labels"].reshape(-1).astype(np.int64)
                        arrays[split] = (images, labels)
            except KeyError as exc:
                raise DataError(
                    f"{self.file} is not a BloodMNIST file: missing key {exc}; expected "
                    "train_images, train_labels, val_*, test_*"
                ) from exc
            except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
                raise DataError(f"{self.file} is not a readable npz file ({exc})") from exc
            for split, (images, labels) in arrays.items():
                if images.ndim == 3:  # greyscale MedMNIST files have no channel axis
                    images = np.repeat(images[..., None], 3, axis=-1)
                if images.shape[1:] != (self.size, self.size, 3) or len(images) != len(labels):
                    raise DataError(
                        f"{self.file}: {split}_images has shape {images.shape}, expected "
                        f"(N, {self.size}, {self.size}, 3) with N = {len(labels)} labels"
                    )
                if labels.size and (labels.min() < 0 or labels.max() >= len(self.class_names)):
                    raise DataError(f"{self.file}: {split}_labels outside 0..7")
                arrays[split] = (images.astype(np.uint8), labels)
            self._arrays = arrays
        return self._arrays

    def _index(self):
        out = {}
        for split, (_, labels) in self._load().items():
            out[split] = [(f"{split}/{i:05d}", int(label), None) for i, label in enumerate(labels)]
        return out

    def open_image(self, sample_id: str) -> Image.Image:
        split, _, index = sample_id.partition("/")
        images, _ = self._load()[split]
        return Image.fromarray(images[int(index)])

    def load_split(self, split, limit=None, seed=0, progress=True) -> SplitArrays:
        images, labels = self._load()[split]
        keep = limit_per_class(labels, limit, seed)
        ids = np.asarray([f"{split}/{i:05d}" for i in keep])
        return SplitArrays(ids=ids, images=images[keep], labels=labels[keep])


# ------------------------------------------------------------------------------------------------
DATASETS = {
    "pbc": PBCDataset,
    "blood-cells": BloodCellsDataset,
    "bloodmnist": BloodMNISTDataset,
    "malaria": MalariaDataset,
    "malaria-cells": MalariaCellSplitDataset,
}
DEFAULT_SIZES = {"pbc": 64, "blood-cells": 64, "bloodmnist": 64, "malaria": 64, "malaria-cells": 64}
FOLDERS = {
    "pbc": "pbc",
    "blood-cells": "blood-cells",
    "bloodmnist": "bloodmnist",
    "malaria": "malaria",
    "malaria-cells": "malaria",
}


def get_dataset(
    name: str, size: int | None = None, data_root: str | os.PathLike | None = None
) -> BloodDataset:
    """Open dataset ``name`` at ``size`` pixels from the data root (see :mod:`bloodviz.paths`)."""
    if name not in DATASETS:
        raise KeyError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    root = resolve_data_root(data_root)
    folder = root / FOLDERS[name]
    if name == "bloodmnist" and not folder.exists():
        folder = root  # the npz files may sit directly in the data root
    if not folder.exists():
        # the root may be the dataset folder itself
        if name == "pbc" and (
            (root / "manifest.csv").exists() or any((root / c).is_dir() for c in PBC_CLASSES)
        ):
            folder = root
        elif name == "blood-cells":
            folder = root
        else:
            raise DataNotFoundError(f"dataset folder {folder} is missing")
    return DATASETS[name](folder, size or DEFAULT_SIZES[name])
