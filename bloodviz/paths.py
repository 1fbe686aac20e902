"""Where data, checkpoints and caches live.

Data root, in order: an explicit ``--data-root``, the ``BLOODVIZ_DATA`` environment variable,
``./data`` in the repository, then ``../shared/data`` beside the repository (development and CI).
"""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


class DataNotFoundError(FileNotFoundError):
    """A data folder is missing or does not have the layout a loader expects."""


def data_root_candidates() -> list[Path]:
    return [REPO_ROOT / "data", REPO_ROOT.parent / "shared" / "data"]


def resolve_data_root(data_root: str | os.PathLike | None = None) -> Path:
    """Return the folder that holds the datasets, or raise naming what was tried."""
    explicit = data_root if data_root is not None else os.environ.get("BLOODVIZ_DATA")
    if explicit:
        path = Path(explicit).expanduser()
        if not path.is_dir():
            source = "--data-root" if data_root is not None else "BLOODVIZ_DATA"
            raise DataNotFoundError(f"data root {path} (from {source}) is not a folder")
        return path
    for path in data_root_candidates():
        if path.is_dir():
            return path
    tried = ", ".join(str(p) for p in data_root_candidates())
    raise DataNotFoundError(
        f"no data root found; pass --data-root or set BLOODVIZ_DATA (tried {tried})"
    )


def checkpoints_root() -> Path:
    return Path(os.environ.get("BLOODVIZ_CHECKPOINTS", REPO_ROOT / "checkpoints"))


def runs_root() -> Path:
    """Resumable training state (not shipped; ignored by git)."""
    return Path(os.environ.get("BLOODVIZ_RUNS", REPO_ROOT / "runs"))


def cache_root() -> Path:
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "bloodviz"
    return Path(os.environ.get("BLOODVIZ_CACHE", default))


def blood_cells_root(data_root: str | os.PathLike | None = None) -> Path:
    """The blood-cells folder under the data root (or the root itself), so the Kaggle and BCCD
    folders are searched there and not through every other dataset."""
    root = resolve_data_root(data_root)
    return root / "blood-cells" if (root / "blood-cells").is_dir() else root
