"""The cell bank: the evaluated cells ship, so a machine without the datasets shows them."""

import zipfile

import numpy as np
import pytest

from bloodviz.cellbank import bank_cells, build_bank, open_cells
from bloodviz.checkpoints import list_checkpoints
from bloodviz.data import get_dataset
from bloodviz.paths import DataNotFoundError


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255**2 / mse)


def test_shipped_banks_hold_every_evaluated_cell():
    for ckpt in list_checkpoints():
        cells = bank_cells(ckpt.dataset, ckpt.size)
        for split in ckpt.evaluation_splits:
            preds = ckpt.predictions(split)
            ids = cells.sample_ids(split)
            labels = dict(zip(ids, cells.labels(split)))
            missing = set(preds.ids) - set(ids)
            assert not missing, (ckpt.dataset_key, ckpt.name, split, sorted(missing)[:3])
            assert all(labels[i] == y for i, y in zip(preds.ids, preds.labels))


@pytest.mark.parametrize("key", ["pbc-64", "blood-cells-64", "blood-cells-120", "malaria-64"])
def test_bank_cells_are_close_copies_of_what_the_models_saw(key, data_root):
    name, _, size = key.rpartition("-")
    raw = get_dataset(name, int(size), data_root)
    bank = bank_cells(name, int(size))
    rng = np.random.default_rng(0)
    ids = rng.choice(bank.sample_ids("test"), size=12, replace=False)
    for sample_id in ids:
        with raw.open_image(sample_id) as image:
            exact = raw.preprocessing().prepare(image, raw.default_framing)
        stored = bank.image(sample_id)
        assert stored.shape == exact.shape == (int(size), int(size), 3)
        assert _psnr(stored, exact) > 36, sample_id


def test_build_writes_an_index_and_the_cells(tmp_path, data_root):
    path = build_bank("pbc", 32, data_root=data_root, root=tmp_path, limit_per_class=2)
    assert path == tmp_path / "pbc.zip"
    assert [p.name for p in tmp_path.iterdir()] == ["pbc.zip"]  # no temporary file left
    bank = bank_cells("pbc", 32, bank_root=tmp_path)
    assert bank.gallery_splits == ("test",)
    assert len(bank.sample_ids("test")) == 16  # 2 of each of the 8 classes
    assert bank.image(bank.sample_ids("test")[0]).shape == (32, 32, 3)
    assert bank.image(bank.sample_ids("test")[0]).dtype == np.uint8
    assert "CC BY 4.0" in bank.note
    assert bank.class_counts()["train"]["basophil"] > 0  # every split's counts are kept
    smaller = bank_cells("pbc", 16, bank_root=tmp_path)
    assert smaller.image(smaller.sample_ids("test")[0]).shape == (16, 16, 3)
    assert "resized from its 32 px copies" in smaller.note
    with pytest.raises(DataNotFoundError, match="smaller than 64"):
        bank_cells("pbc", 64, bank_root=tmp_path)
    with pytest.raises(KeyError, match="holds test"):
        bank.sample_ids("train")


def test_without_the_dataset_the_bank_is_used(monkeypatch, tmp_path):
    monkeypatch.setenv("BLOODVIZ_DATA", str(tmp_path))  # an empty data root
    cells = open_cells("pbc", 64)
    assert cells.from_bank
    assert "not on this machine" in cells.note
    assert len(cells.sample_ids("test")) == 3248
    blood = open_cells("blood-cells", 64)
    # test_dedup is derived from the bank's test cells: no cell stored twice
    assert blood.gallery_splits == ("test", "test_simple", "test_dedup")
    dedup = blood.sample_ids("test_dedup")
    assert 2000 < len(dedup) < 2487 and set(dedup) <= set(blood.sample_ids("test"))
    assert blood.image(dedup[0]).shape == (64, 64, 3)
    assert blood.image(blood.sample_ids("test_simple")[0]).shape == (64, 64, 3)


def test_with_the_dataset_the_raw_images_are_used(data_root):
    cells = open_cells("pbc", 64, data_root=data_root)
    assert not cells.from_bank
    assert cells.gallery_splits == ("train", "val", "test")


def test_a_damaged_or_missing_bank_is_named(monkeypatch, tmp_path):
    monkeypatch.setenv("BLOODVIZ_DATA", str(tmp_path))
    (tmp_path / "pbc.zip").write_bytes(b"PK\x03\x04 cut off")
    with pytest.raises(DataNotFoundError, match="missing or damaged"):
        open_cells("pbc", 64, bank_root=tmp_path)
    with zipfile.ZipFile(tmp_path / "pbc.zip", "w") as archive:
        archive.writestr("index.json", '{"version": 0}')
    with pytest.raises(DataNotFoundError, match="rebuild it"):
        open_cells("pbc", 64, bank_root=tmp_path)
    with pytest.raises(DataNotFoundError, match="not on this machine.*no cell bank"):
        open_cells("blood-cells", 64, bank_root=tmp_path)


def test_malaria_banks_are_webp_and_the_random_split_borrows_the_test_patients(tmp_path, data_root):
    build_bank("malaria", 64, data_root=data_root, root=tmp_path, limit_per_class=3)
    build_bank("malaria-cells", 64, data_root=data_root, root=tmp_path, limit_per_class=3)
    with zipfile.ZipFile(tmp_path / "malaria-cells.zip") as archive:
        names = archive.namelist()
    # its own test_seen cells only: the test patients' cells are the malaria bank's
    assert names and all(n.startswith("test_seen/") or n == "index.json" for n in names)
    assert any(n.endswith(".webp") for n in names)
    both = bank_cells("malaria-cells", 64, bank_root=tmp_path)
    assert both.gallery_splits == ("test", "test_seen")
    assert both.sample_ids("test") == bank_cells("malaria", 64, bank_root=tmp_path).sample_ids(
        "test"
    )
    raw = get_dataset("malaria-cells", 64, data_root)
    for split in ("test", "test_seen"):
        sample_id = both.sample_ids(split)[0]
        with raw.open_image(sample_id) as image:
            exact = raw.preprocessing().prepare(image, raw.default_framing)
        assert _psnr(both.image(sample_id), exact) > 36
    assert "WEBP quality 95" in both.note and "PeerJ" in both.note
    (tmp_path / "malaria.zip").unlink()
    with pytest.raises(DataNotFoundError, match="missing or damaged"):
        bank_cells("malaria-cells", 64, bank_root=tmp_path)
