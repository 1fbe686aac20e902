"""The cell bank: every cell the shipped checkpoints were evaluated on, small enough to ship.

A fresh clone, or a Community Cloud deployment, has the checkpoints but not the datasets, so
galleries, confusion cells, disagreements and Grad-CAM on test cells had nothing to show. The
bank keeps each evaluation-split cell of a dataset (pbc: test; blood-cells: test and
test_simple), framed as the models saw it, at the largest input size any shipped checkpoint of
that dataset uses, in one zip a dataset under ``cellbank/``, with the split's ids and labels, the
class counts of every split, the dataset's attribution and how the file was built. A smaller
size is the stored cell resized the same way (bicubic).

Malaria's cells are WebP (quality 95): 4.0 MB for its 2,992 test cells against 6.8 MB as JPEG
at the same PSNR. Its random-split twin (``malaria-cells``) stores only its own ``test_seen``
cells and takes ``test`` (the same patients' cells) from the malaria bank.

Why lossy, and why one size: losslessly (WebP) the cells of the three shipped keys take about
75 MB; the limit is 25 MB. JPEG at quality 90-95 without chroma subsampling keeps them at 42-49
dB PSNR. Measured on the test cells when choosing: pbc-64 resnet18 changes 2 of 3,248
predictions on the stored cells; blood-cells-64 resnet18 changes 15 of 2,487 when its cells are
resized from the 120 px bank, but 40 when they are stored at 64 px directly, so the smaller key
is derived. ``python -m bloodviz cellbank --verify`` measures it for every checkpoint. Metrics
always come from the cached predictions, made on the raw images; the bank only shows cells and
feeds Grad-CAM.

:func:`open_cells` is what the pages use: the raw dataset where it is on this machine (exact),
else the bank.
"""

from __future__ import annotations

import io
import json
import os
import platform
import threading
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from bloodviz.paths import REPO_ROOT, DataNotFoundError

BANK_ROOT = Path(os.environ.get("BLOODVIZ_CELLBANK", REPO_ROOT / "cellbank"))
BANK_VERSION = 1
# pbc's 64 px cells at 95 (10.6 MB); blood-cells' 120 px cells at 90 (13 MB)
JPEG_QUALITY = {"pbc": 95, "blood-cells": 90}
# (format, quality) where JPEG is not the codec: malaria's 2,992 test cells are 6.8 MB as JPEG
# q95 4:4:4 and 4.0 MB as WebP q95 at the same PSNR (43.5 dB), measured on 600 of them
CODEC = {"malaria": ("WEBP", 95), "malaria-cells": ("WEBP", 95)}
SUFFIX = {"JPEG": "jpg", "WEBP": "webp"}
# splits a bank takes from another dataset's bank instead of storing them twice: the random
# cell split of the malaria cells tests on the very test patients of the patient split
BORROWED = {"malaria-cells": {"test": "malaria"}}
INDEX_MEMBER = "index.json"
ATTRIBUTION = {
    "pbc": "PBC dataset: Acevedo A., Merino A., Alférez S., Molina Á., Boldú L., Rodellar J. "
    "'A dataset of microscopic peripheral blood cell images for development of automatic "
    "recognition systems', Data in Brief 30 (2020) 105474, doi:10.1016/j.dib.2020.105474. "
    "Licence: CC BY 4.0. Cells here are MedMNIST-style centre crops, resized.",
    "blood-cells": "Blood Cell Images, Paul Mooney, Kaggle (kaggle.com/datasets/paultimothymooney/"
    "blood-cells), derived from the BCCD dataset (github.com/Shenggan/BCCD_Dataset). "
    "Licence: MIT. Cells here are centre squares of the 320x240 crops, resized.",
    "malaria": "Malaria cell images: Rajaraman S., Antani S.K., Poostchi M., Silamut K., Hossain "
    "M.A., Maude R.J., Jaeger S., Thoma G.R. 'Pre-trained convolutional neural networks as "
    "feature extractors toward improved malaria parasite detection in thin blood smear images', "
    "PeerJ 6:e4568 (2018), doi:10.7717/peerj.4568; U.S. National Library of Medicine "
    "(lhncbc.nlm.nih.gov), public domain. Cells here are the whole cell images, resized.",
}
ATTRIBUTION["malaria-cells"] = ATTRIBUTION["malaria"]


def bank_path(dataset: str, root: Path | None = None) -> Path:
    return (root or BANK_ROOT) / f"{dataset}.zip"


def bank_codec(dataset: str) -> tuple[str, int]:
    return CODEC.get(dataset, ("JPEG", JPEG_QUALITY.get(dataset, 95)))


def encode_cell(cell: np.ndarray, quality: int, codec: str = "JPEG") -> bytes:
    buffer = io.BytesIO()
    if codec == "WEBP":
        Image.fromarray(cell).save(buffer, "WEBP", quality=quality, method=6)
    else:
        Image.fromarray(cell).save(buffer, "JPEG", quality=quality, subsampling=0, optimize=True)
    return buffer.getvalue()


def decode_cell(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB"), dtype=np.uint8)


class CellBank:
    """Read access to one key's bank. Safe to share between sessions: reads are locked, since
    one ``ZipFile`` handle must not be read from two threads at once."""

    def __init__(self, path: Path):
        self.path = Path(path)
        try:
            self._zip = zipfile.ZipFile(self.path)
            self.index = json.loads(self._zip.read(INDEX_MEMBER))
        except (OSError, zipfile.BadZipFile, KeyError, json.JSONDecodeError) as exc:
            raise DataNotFoundError(f"cell bank {self.path} is missing or damaged ({exc})") from exc
        if self.index.get("version") != BANK_VERSION:
            raise DataNotFoundError(
                f"cell bank {self.path} has version {self.index.get('version')}, this bloodviz "
                f"reads {BANK_VERSION}; rebuild it with `python -m bloodviz cellbank`"
            )
        self._lock = threading.Lock()
        self._members = {
            sample_id: (self, member)
            for split in self.index["splits"].values()
            for sample_id, _, member in split
        }
        for split, other in self.index.get("borrowed", {}).items():
            lender = CellBank(bank_path(other, self.path.parent))
            if lender.size != self.size:
                raise DataNotFoundError(
                    f"cell bank {self.path} takes its {split} cells from {lender.path}, which "
                    f"holds {lender.size} px cells, not {self.size}; rebuild both"
                )
            self.index["splits"][split] = lender.index["splits"][split]
            for sample_id, _, member in lender.index["splits"][split]:
                self._members[sample_id] = (lender, member)
        from bloodviz.data import derived_splits

        for split, (parent, ids) in derived_splits(self.index["dataset"]).items():
            if parent in self.index["splits"] and split not in self.index["splits"]:
                rows = self.index["splits"][parent]
                self.index["splits"][split] = [row for row in rows if row[0] in ids]
        # test first, as every page offers it first
        self.index["splits"] = dict(
            sorted(self.index["splits"].items(), key=lambda item: item[0] != "test")
        )

    @property
    def splits(self) -> tuple[str, ...]:
        return tuple(self.index["splits"])

    def sample_ids(self, split: str) -> list[str]:
        return [row[0] for row in self._split(split)]

    def labels(self, split: str) -> np.ndarray:
        return np.asarray([row[1] for row in self._split(split)], dtype=np.int64)

    def _split(self, split: str) -> list:
        try:
            return self.index["splits"][split]
        except KeyError:
            raise KeyError(
                f"the cell bank of {self.index['dataset']} holds {', '.join(self.splits)}, "
                f"not {split!r}"
            ) from None

    @property
    def size(self) -> int:
        return int(self.index["size"])

    def image(self, sample_id: str, size: int | None = None) -> np.ndarray:
        """The cell at ``size`` pixels (the stored size, or smaller: resized as the dataset
        resizes)."""
        found = self._members.get(sample_id)
        if found is None:
            raise KeyError(f"no cell {sample_id!r} in the cell bank of {self.index['dataset']}")
        owner, member = found
        with owner._lock:
            data = owner._zip.read(member)
        cell = decode_cell(data)
        if size is None or size == self.size:
            return cell
        if size > self.size:
            raise ValueError(
                f"the cell bank holds {self.index['dataset']} at {self.size} px; {size} px "
                "cells would be enlarged, not what the model saw"
            )
        resized = Image.fromarray(cell).resize((size, size), Image.BICUBIC)
        return np.asarray(resized, dtype=np.uint8)


@dataclass(frozen=True)
class CellSource:
    """The cells of one dataset key as the models saw them: the raw dataset when it is on this
    machine, else the cell bank (test cells only). Pages show ``note`` beside the cells."""

    dataset_key: str
    class_names: tuple[str, ...]
    description: str
    note: str
    gallery_splits: tuple[str, ...]
    counts: dict
    _raw: object = None
    _bank: CellBank | None = None

    @property
    def from_bank(self) -> bool:
        return self._bank is not None

    def sample_ids(self, split: str) -> list[str]:
        return (self._bank or self._raw).sample_ids(split)

    def labels(self, split: str) -> np.ndarray:
        return (self._bank or self._raw).labels(split)

    def class_counts(self) -> dict[str, dict[str, int]]:
        return self.counts

    def display_class(self, name: str) -> str:
        from bloodviz.data import PBC_DISPLAY

        return PBC_DISPLAY.get(name, name)

    @property
    def size(self) -> int:
        return int(self.dataset_key.rpartition("-")[2])

    def image(self, sample_id: str) -> np.ndarray:
        if self._bank is not None:
            return self._bank.image(sample_id, self.size)
        data = self._raw
        with data.open_image(sample_id) as image:
            return data.preprocessing().prepare(image, data.default_framing)


def sample_files(
    cells: CellSource,
    *,
    split: str = "test",
    per_class: int = 1,
    seed: int = 0,
    classes: tuple[str, ...] | None = None,
) -> list[tuple[str, bytes, str]]:
    """A few real cells to classify when a visitor has no image of their own: ``per_class``
    of each class (of ``classes`` only, when given) from ``split``, as (name, PNG bytes, true
    class). PNG keeps the cell exactly as stored, and it goes through the same decoding as an
    upload."""
    labels = cells.labels(split)
    ids = cells.sample_ids(split)
    rng = np.random.default_rng(seed)
    files = []
    for k, name in enumerate(cells.class_names):
        if classes is not None and name not in classes:
            continue
        members = np.flatnonzero(labels == k)
        for i in rng.choice(members, size=min(per_class, len(members)), replace=False):
            buffer = io.BytesIO()
            Image.fromarray(cells.image(ids[i])).save(buffer, "PNG")
            files.append((f"{ids[i]}", buffer.getvalue(), name))
    return files


def open_cells(name: str, size: int, data_root=None, bank_root: Path | None = None) -> CellSource:
    """The raw dataset if it opens here, else the shipped bank; else DataNotFoundError naming
    both."""
    from bloodviz.data import get_dataset

    try:
        raw = get_dataset(name, size, data_root)
        counts = raw.class_counts()
    except (DataNotFoundError, ValueError) as raw_error:
        try:
            return bank_cells(name, size, bank_root)
        except DataNotFoundError as bank_error:
            raise DataNotFoundError(
                f"the {name} images are not on this machine ({raw_error}), and {bank_error}"
            ) from raw_error
    return CellSource(
        f"{name}-{size}",
        tuple(raw.class_names),
        raw.description,
        f"Cells from the {name} images at {raw.folder}.",
        tuple(raw.splits),
        counts,
        _raw=raw,
    )


def bank_cells(name: str, size: int, bank_root: Path | None = None) -> CellSource:
    """The shipped bank's cells of ``name`` at ``size`` px, or DataNotFoundError saying why not."""
    path = bank_path(name, bank_root)
    if not path.exists():
        raise DataNotFoundError(f"no cell bank {path} ships for {name}")
    bank = CellBank(path)
    if size > bank.size:
        raise DataNotFoundError(
            f"the cell bank holds {name} at {bank.size} px, smaller than {size}"
        )
    index = bank.index
    resized = "" if size == bank.size else f", resized from its {bank.size} px copies"
    return CellSource(
        f"{name}-{size}",
        tuple(index["class_names"]),
        index["description"],
        f"The {name} images are not on this machine: these are the shipped cell bank's "
        f"copies of the evaluated cells ({_codec_text(index)}"
        f"{resized}), framed as the models saw them. Metrics come from predictions on the "
        f"original images. {index['attribution']}",
        bank.splits,
        index["class_counts"],
        _bank=bank,
    )


def _codec_text(index: dict) -> str:
    codec = index.get("codec", "JPEG")
    return f"{codec} quality {index['jpeg_quality']}" + (", 4:4:4" if codec == "JPEG" else "")


def verify_bank(checkpoints, bank_root: Path | None = None, progress: bool = True) -> list[dict]:
    """For each checkpoint with weights: how many of its cached predictions (made on the raw
    images) the bank's cells change. Imports torch."""
    from tqdm.auto import tqdm

    from bloodviz.inference import predict_probs

    rows = []
    for ckpt in tqdm(checkpoints, desc="verify cell bank", disable=not progress):
        if not ckpt.has_weights:
            continue
        try:
            cells = bank_cells(ckpt.dataset, ckpt.size, bank_root)
        except DataNotFoundError:
            continue
        model = ckpt.load_model()
        for split in ckpt.evaluation_splits:
            if split not in cells.gallery_splits:
                continue
            cached = ckpt.predictions(split)
            ids = list(cached.ids)
            images = np.stack([cells.image(i) for i in ids])
            predicted = predict_probs(model, ckpt.preprocessing, images).argmax(1)
            changed = int((predicted != cached.predicted).sum())
            rows.append(
                {
                    "dataset": ckpt.dataset_key,
                    "model": ckpt.name,
                    "split": split,
                    "n": len(ids),
                    "changed": changed,
                    "agreement": round(1 - changed / len(ids), 5),
                }
            )
    return rows


def build_bank(
    name: str,
    size: int,
    splits: tuple[str, ...] | None = None,
    data_root=None,
    root: Path | None = None,
    progress: bool = True,
    limit_per_class: int | None = None,
) -> Path:
    """Write ``cellbank/<name>.zip`` from the raw dataset: every cell of the evaluation splits,
    framed as the models saw it at ``size`` px. Atomic: a temporary file renamed into place."""
    from tqdm.auto import tqdm

    from bloodviz.data import get_dataset

    data = get_dataset(name, size, data_root)
    borrowed = {
        split: other
        for split, other in BORROWED.get(name, {}).items()
        if bank_path(other, root).exists()
    }
    splits = tuple(s for s in (splits or data.eval_splits) if s not in borrowed)
    key = data.key
    codec, quality = bank_codec(name)
    index = {
        "version": BANK_VERSION,
        "dataset": name,
        "size": size,
        "class_names": list(data.class_names),
        "description": data.description,
        "framing": data.default_framing,
        "preprocessing": data.preprocessing().to_dict(),
        "codec": codec,
        "jpeg_quality": quality,  # the codec's quality (named so in version 1 banks)
        "attribution": ATTRIBUTION.get(name, ""),
        "class_counts": data.class_counts(),
        "splits": {},
        "borrowed": borrowed,
        "built": {
            "command": f"python -m bloodviz cellbank --dataset {name} --size {size}",
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "python": platform.python_version(),
            "pillow": Image.__version__,
        },
    }
    path = bank_path(name, root)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    try:
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as archive:
            for split in splits:
                arrays = data.load_split(split, limit=limit_per_class, progress=progress)
                rows = []
                bar = tqdm(
                    zip(arrays.ids, arrays.labels, arrays.images),
                    total=len(arrays),
                    desc=f"cell bank {key}/{split}",
                    disable=not progress,
                )
                for n, (sample_id, label, cell) in enumerate(bar):
                    member = f"{split}/{n:05d}.{SUFFIX[codec]}"
                    archive.writestr(member, encode_cell(cell, quality, codec))
                    rows.append([str(sample_id), int(label), member])
                index["splits"][split] = rows
            archive.writestr(INDEX_MEMBER, json.dumps(index, indent=1))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
