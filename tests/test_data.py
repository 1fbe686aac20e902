import csv
import shutil
from collections import Counter

import numpy as np
import pytest

from bloodviz.data import (
    BLOOD_CELLS_CLASSES,
    PBC_CLASSES,
    DataError,
    get_dataset,
    limit_per_class,
    stratified_split,
)
from bloodviz.paths import DataNotFoundError


def test_pbc_manifest_splits_match_manifest(data_root):
    ds = get_dataset("pbc", 64, data_root)
    rows = list(csv.DictReader(open(data_root / "pbc" / "manifest.csv")))
    expected = Counter(r["split"] for r in rows)
    assert {s: len(ds.sample_ids(s)) for s in ds.splits} == dict(expected)
    assert ds.class_names == PBC_CLASSES
    all_ids = [i for s in ds.splits for i in ds.sample_ids(s)]
    assert len(all_ids) == len(set(all_ids)) == len(rows)
    assert ds.key == "pbc-64"


@pytest.mark.parametrize("size", [28, 64])
def test_pbc_load_split_limited(data_root, size):
    ds = get_dataset("pbc", size, data_root)
    arrays = ds.load_split("test", limit=3, progress=False)
    assert arrays.images.shape == (24, size, size, 3)
    assert arrays.images.dtype == np.uint8
    assert np.bincount(arrays.labels).tolist() == [3] * 8
    # same ids and pixels from the on-disk cache the second time
    again = ds.load_split("test", limit=3, progress=False)
    assert np.array_equal(again.images, arrays.images) and list(again.ids) == list(arrays.ids)
    # the images are real cells, not blank arrays
    assert arrays.images.std() > 20


@pytest.mark.slow
def test_pbc_plain_originals_framed_like_manifest_crops(data_root):
    """A plain PBC download (360x363 originals) gets MedMNIST's crop and our split."""
    plain = get_dataset("pbc", 64, data_root / "pbc-originals")
    assert plain.default_framing == "full"
    assert len(plain.sample_ids("train")) == 80  # all originals are in the train split
    assert plain.sample_ids("val") == [] and plain.sample_ids("test") == []
    from_originals = plain.load_split("train", progress=False)
    prepared = get_dataset("pbc", 64, data_root)
    ids = list(from_originals.ids)
    position = {sid: i for i, sid in enumerate(prepared.sample_ids("train"))}
    subset = prepared.load_split("train", progress=False)  # cached after the first decode
    crops = subset.images[[position[i] for i in ids]]
    diff = np.abs(crops.astype(float) - from_originals.images.astype(float)).mean()
    assert diff < 6, f"full-field framing drifts from the dataset's crops by {diff:.1f} levels"


def test_pbc_plain_files_outside_the_list_get_seeded_split(tmp_path, data_root):
    for cls in PBC_CLASSES:
        sources = sorted((data_root / "pbc-originals" / cls).iterdir())
        (tmp_path / cls).mkdir()
        for k, src in enumerate(sources):
            shutil.copy(src, tmp_path / cls / f"new_{k}.jpg")
    first = get_dataset("pbc", 28, tmp_path)
    counts = {s: len(first.sample_ids(s)) for s in first.splits}
    assert counts == {"train": 56, "val": 8, "test": 16}
    second = get_dataset("pbc", 28, tmp_path)
    assert second.sample_ids("test") == first.sample_ids("test")


def test_blood_cells_layout_found_under_root(data_root):
    for root in (data_root, data_root / "blood-cells"):
        ds = get_dataset("blood-cells", 32, root) if root == data_root else None
        if ds is None:
            from bloodviz.data import BloodCellsDataset

            ds = BloodCellsDataset(root, 32)
        counts = {s: len(ds.sample_ids(s)) for s in ds.splits}
        assert counts["train"] + counts["val"] == 9957
        assert counts["test"] == 2487 and counts["test_simple"] == 71
        # the twin-free part of TEST: a subset named by the shipped sources file
        assert 2000 < counts["test_dedup"] < counts["test"]
        assert set(ds.sample_ids("test_dedup")) <= set(ds.sample_ids("test"))
        assert 0.09 < counts["val"] / 9957 < 0.11
    assert ds.class_names == BLOOD_CELLS_CLASSES
    assert ds.eval_splits == ("test", "test_simple")
    assert "optimistic" in ds.description and "TEST_SIMPLE" in ds.description
    arrays = ds.load_split("test_simple", limit=2, progress=False)
    assert arrays.images.shape == (8, 32, 32, 3)


def _write_bloodmnist(path, data_root, size=28, keys=None):
    """A small npz of the official layout, written from real PBC images."""
    ds = get_dataset("pbc", size, data_root)
    arrays = {}
    for split in ("train", "val", "test"):
        part = ds.load_split(split, limit=2, progress=False)
        arrays[f"{split}_images"] = part.images
        arrays[f"{split}_labels"] = part.labels.reshape(-1, 1).astype(np.uint8)
    if keys is not None:
        arrays = {k: v for k, v in arrays.items() if k in keys}
    np.savez_compressed(path, **arrays)


def test_bloodmnist_npz_official_layout(tmp_path, data_root):
    (tmp_path / "bloodmnist").mkdir()
    _write_bloodmnist(tmp_path / "bloodmnist" / "bloodmnist.npz", data_root, 28)
    ds = get_dataset("bloodmnist", 28, tmp_path)
    assert ds.class_names == PBC_CLASSES
    test = ds.load_split("test", progress=False)
    assert test.images.shape == (16, 28, 28, 3)
    assert list(test.ids[:2]) == ["test/00000", "test/00001"]
    assert ds.open_image("test/00001").size == (28, 28)


def test_bloodmnist_missing_corrupt_and_foreign(tmp_path, data_root):
    with pytest.raises(DataNotFoundError, match="bloodviz download bloodmnist"):
        get_dataset("bloodmnist", 64, tmp_path)
    (tmp_path / "bloodmnist_64.npz").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(DataError, match="not a readable npz"):
        get_dataset("bloodmnist", 64, tmp_path).load_split("train")
    _write_bloodmnist(tmp_path / "bloodmnist.npz", data_root, 28, keys={"train_images"})
    with pytest.raises(DataError, match="missing key"):
        get_dataset("bloodmnist", 28, tmp_path).load_split("train")


def test_missing_data_root_names_the_path(tmp_path):
    with pytest.raises(DataNotFoundError, match=str(tmp_path / "nowhere")):
        get_dataset("pbc", 64, tmp_path / "nowhere")
    with pytest.raises(DataNotFoundError, match="blood-cells layout"):
        get_dataset("blood-cells", 64, tmp_path)
    with pytest.raises(KeyError, match="unknown dataset"):
        get_dataset("cifar10", 32, tmp_path)


def test_malformed_manifest(small_pbc):
    manifest = small_pbc / "manifest.csv"
    text = manifest.read_text()
    manifest.write_text(text.replace("path,label,split", "file,label,split"))
    with pytest.raises(DataError, match="lacks column"):
        get_dataset("pbc", 28, small_pbc.parent).sample_ids("train")
    manifest.write_text(text.replace(",basophil,", ",basofil,", 1))
    with pytest.raises(DataError, match="basofil"):
        get_dataset("pbc", 28, small_pbc.parent).sample_ids("train")


def test_corrupt_and_missing_images_are_named(small_pbc):
    ds = get_dataset("pbc", 28, small_pbc.parent)
    train_ids = ds.sample_ids("train")
    truncated = small_pbc / train_ids[0]
    truncated.write_bytes(truncated.read_bytes()[:300])
    (small_pbc / train_ids[1]).write_bytes(b"")
    (small_pbc / train_ids[2]).unlink()
    with pytest.raises(DataError) as info:
        ds.load_split("train", progress=False)
    message = str(info.value)
    assert "3 unreadable" in message
    for sid in train_ids[:3]:
        assert sid in message
    # the other splits still load
    assert len(ds.load_split("val", progress=False)) == 8


def test_split_helpers_are_stratified_and_seeded():
    labels = np.repeat(np.arange(4), 50)
    parts = stratified_split(labels, (0.7, 0.1, 0.2), seed=3)
    assert [len(p) for p in parts] == [140, 20, 40]
    assert all(np.bincount(labels[p]).tolist() == [len(p) // 4] * 4 for p in parts)
    again = stratified_split(labels, (0.7, 0.1, 0.2), seed=3)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again))
    assert len(set(np.concatenate(parts))) == 200
    keep = limit_per_class(labels, 5, seed=1)
    assert np.bincount(labels[keep]).tolist() == [5] * 4


def test_malaria_manifest_split_is_by_patient(data_root):
    ds = get_dataset("malaria", 64, data_root)
    rows = list(csv.DictReader(open(data_root / "malaria" / "manifest.csv")))
    assert {s: len(ds.sample_ids(s)) for s in ds.splits} == dict(Counter(r["split"] for r in rows))
    assert ds.class_names == ("parasitized", "uninfected") and ds.key == "malaria-64"
    patients = {s: set(ds.patients(s)) for s in ds.splits}
    assert len(patients["train"]) + len(patients["val"]) + len(patients["test"]) == len(
        set().union(*patients.values())
    )
    # the patient read from the file name is the manifest's own column
    assert {r["patient"] for r in rows if r["split"] == "test"} == patients["test"]
    cells = ds.load_split("test", limit=4, progress=False)
    assert cells.images.shape == (8, 64, 64, 3) and cells.images.std() > 10


def test_malaria_manifest_with_a_patient_in_two_splits_is_refused(tmp_path, data_root):
    rows = list(csv.DictReader(open(data_root / "malaria" / "manifest.csv")))
    patient = rows[0]["patient"]
    mine = [r for r in rows if r["patient"] == patient][:2]
    mine[1] = {**mine[1], "split": "test" if mine[0]["split"] != "test" else "train"}
    folder = tmp_path / "malaria"
    for r in mine:
        (folder / r["path"]).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(data_root / "malaria" / r["path"], folder / r["path"])
    with open(folder / "manifest.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["path", "label", "split", "patient"])
        writer.writeheader()
        writer.writerows(mine)
    with pytest.raises(DataError, match=f"patient {patient} has cells in both"):
        get_dataset("malaria", 64, tmp_path).sample_ids("train")
    (folder / "manifest.csv").unlink()
    with pytest.raises(DataNotFoundError, match="download malaria"):
        get_dataset("malaria", 64, tmp_path)


def test_malaria_cell_split_keeps_the_unseen_patients_apart(data_root):
    by_patient = get_dataset("malaria", 64, data_root)
    by_cell = get_dataset("malaria-cells", 64, data_root)
    assert by_cell.sample_ids("test") == by_patient.sample_ids("test")
    assert len(by_cell.sample_ids("train")) == len(by_patient.sample_ids("train"))
    seen = set(by_cell.patients("train"))
    # a random split by cell: its own test cells come from patients it trained on
    assert set(by_cell.patients("test_seen")) <= seen
    assert not seen & set(by_cell.patients("test"))
    ids = [i for s in ("train", "val", "test_seen") for i in by_cell.sample_ids(s)]
    assert sorted(ids) == sorted(by_patient.sample_ids("train") + by_patient.sample_ids("val"))


def test_stretch_square_keeps_the_whole_cell():
    from PIL import Image

    from bloodviz.preprocess import Preprocessing

    wide = np.zeros((50, 100, 3), dtype=np.uint8)
    wide[:, :10] = (255, 0, 0)  # a parasite at the rim
    image = Image.fromarray(wide)
    stretched = Preprocessing(size=32, class_names=("a", "b"), square="stretch").prepare(image)
    cropped = Preprocessing(size=32, class_names=("a", "b")).prepare(image)
    assert stretched[:, 0, 0].min() > 200 and cropped[:, 0, 0].max() == 0
    with pytest.raises(ValueError, match="square must be"):
        Preprocessing(size=32, class_names=("a",), square="pad").prepare(image)
