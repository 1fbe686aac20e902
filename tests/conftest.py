import os
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    """Decoded-array cache and training state go to temp folders, never into the repo."""
    cache = tmp_path_factory.mktemp("cache")
    runs = tmp_path_factory.mktemp("runs")
    old = {k: os.environ.get(k) for k in ("BLOODVIZ_CACHE", "BLOODVIZ_RUNS", "HF_HUB_OFFLINE")}
    os.environ["BLOODVIZ_CACHE"] = str(cache)
    os.environ["BLOODVIZ_RUNS"] = str(runs)
    os.environ["HF_HUB_OFFLINE"] = "1"  # no ImageNet download attempts (and retries) in tests
    yield
    for key, value in old.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="session")
def data_root() -> Path:
    assert SHARED_DATA.is_dir(), f"tests read real images from {SHARED_DATA}"
    return SHARED_DATA


@pytest.fixture()
def small_pbc(tmp_path, data_root) -> Path:
    """A PBC folder with a manifest naming 6 real images a class (4 train, 1 val, 1 test)."""
    import csv

    rows = list(csv.DictReader(open(data_root / "pbc" / "manifest.csv")))
    out = tmp_path / "pbc"
    chosen = []
    for cls in sorted({r["label"] for r in rows}):
        for split, n in (("train", 4), ("val", 1), ("test", 1)):
            picks = [r for r in rows if r["label"] == cls and r["split"] == split][:n]
            chosen.extend(picks)
    for r in chosen:
        target = out / r["path"]
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(data_root / "pbc" / r["path"], target)
    with open(out / "manifest.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["path", "label", "split"])
        writer.writeheader()
        writer.writerows(chosen)
    return out
