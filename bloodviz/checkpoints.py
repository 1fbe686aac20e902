"""The checkpoint store: ``checkpoints/<dataset>-<size>/<model>/``.

A checkpoint folder holds
- ``model.safetensors``: weights (fp16 where that does not change predictions), with metadata
  naming the model and format so foreign or damaged files are refused clearly. Weights over
  :data:`MAX_SHIPPED_MB` are split as Hugging Face lays out sharded safetensors:
  ``model-00001-of-00002.safetensors`` ... plus ``model.safetensors.index.json`` naming each
  tensor's shard; every shard carries the same metadata, and they are read as one. A CPU-budget
  run's weights are not shipped: they stay under ``runs/`` on the machine that trained them,
  and the run card's ``weights_not_shipped`` says why (a *predictions-only* checkpoint);
- ``preprocessing.json``: what inference must do to an image (:class:`Preprocessing`);
- ``predictions-<split>.csv``: probabilities for every val / evaluation sample, by sample id;
- ``metrics.json``: the evaluation summary per split, computed from those predictions;
- ``history.csv``: per-epoch training history;
- ``run.json``: the run card (settings, hardware, versions, wall time, command line).

Folders are written beside the target under a dot-name and renamed into place, so a reader
never sees a half-written checkpoint; ``run.json`` is required for a folder to count.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import threading
from collections.abc import Callable
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from bloodviz.paths import checkpoints_root, runs_root
from bloodviz.preprocess import Preprocessing
from bloodviz.runcard import FORMAT, RunCard

WEIGHTS = "model.safetensors"
WEIGHTS_INDEX = "model.safetensors.index.json"  # sharded weights (Hugging Face's layout)
REQUIRED = ("preprocessing.json", "run.json")
MAX_SHIPPED_MB = 50  # the repository's per-file limit for committed files, decimal MB


class CheckpointError(ValueError):
    """A checkpoint folder or weights file is missing, damaged or not ours."""


PRETRAINED_SUFFIX = "@imagenet"


SEED_SUFFIX = "-seed"


def checkpoint_name(
    model: str, pretrained: bool = False, variant: str | None = None, seed: int = 0
) -> str:
    """Folder name of a checkpoint: a pretrained run sits beside the from-scratch one, and so
    does a variant (``cnn002_bn-robust``: trained for stain and scale robustness) and a run
    with another seed (``cnn_baseline-seed1``; seed 0 has no suffix); a timm architecture
    brought by name (``timm:convnext_atto``) is ``timm-convnext_atto`` (no colon in paths or
    addresses)."""
    name = model.replace(":", "-") + (PRETRAINED_SUFFIX if pretrained else "")
    name = f"{name}-{variant}" if variant else name
    return f"{name}{SEED_SUFFIX}{seed}" if seed else name


def checkpoint_dir(dataset_key: str, model: str, root: Path | None = None) -> Path:
    return Path(root or checkpoints_root()) / dataset_key / model.replace(":", "-")


def find_checkpoint(
    dataset: str, model: str, size: int | None = None, root: Path | None = None
) -> Checkpoint:
    """Open the checkpoint of ``model`` on ``dataset`` (at its default size unless given)."""
    from bloodviz.data import DEFAULT_SIZES

    size = size or DEFAULT_SIZES.get(dataset, 64)
    return open_checkpoint(checkpoint_dir(f"{dataset}-{size}", model, root))


def write_atomic(final_dir: Path, fill: Callable[[Path], None]) -> Path:
    """Create ``final_dir`` by letting ``fill`` write a temporary sibling, then renaming it.

    If ``fill`` raises, the temporary folder is removed and any existing ``final_dir`` is
    untouched. The old folder is moved aside before the new one is renamed in, and removed after.
    """
    final_dir = Path(final_dir)
    final_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = final_dir.parent / f".{final_dir.name}.tmp-{os.getpid()}"
    old = final_dir.parent / f".{final_dir.name}.old-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        fill(tmp)
        for name in REQUIRED:
            if not (tmp / name).exists():
                raise CheckpointError(f"checkpoint writer did not produce {name}")
        _fsync_dir(tmp)
        if final_dir.exists():
            os.replace(final_dir, old)
        os.replace(tmp, final_dir)
        _fsync_dir(final_dir.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old.exists() and not final_dir.exists():
            os.replace(old, final_dir)
        raise
    shutil.rmtree(old, ignore_errors=True)
    return final_dir


def _fsync_dir(path: Path) -> None:
    for child in path.iterdir():
        if child.is_file():
            with open(child, "rb") as handle:
                os.fsync(handle.fileno())


def write_json(path: Path, data: dict) -> None:
    Path(path).write_text(json.dumps(data, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value)}")


# -- weights ----------------------------------------------------------------------------------
def save_weights(
    state_dict: dict,
    path: Path,
    model_name: str,
    fp16: bool,
    *,
    max_file_mb: float | None = None,
    metadata: dict[str, str] | None = None,
) -> Path:
    """Write ``state_dict`` as ``path`` (``model.safetensors``), or, when ``max_file_mb`` is
    given and the weights are over it, as numbered shards of at most that size beside an index
    named ``path`` + ``.index.json``. Returns the file to read them by: weights or index.
    ``metadata`` adds to what every file carries (format, model, dtype)."""
    import torch
    from safetensors.torch import save_file

    tensors = {}
    for key, tensor in state_dict.items():
        tensor = tensor.detach().cpu()
        if fp16 and tensor.is_floating_point():
            tensor = tensor.half()
        tensors[key] = tensor.contiguous()
    metadata = {
        **(metadata or {}),
        "format": FORMAT,
        "model": model_name,
        "dtype": "fp16" if fp16 else "fp32",
    }
    path = Path(path)
    # decimal megabytes, as hosts count a file limit, less one for each shard's header
    limit = int(max_file_mb * 1e6) - 10**6 if max_file_mb else None
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    if limit is None or total <= limit:
        save_file(tensors, str(path), metadata=metadata)
        return path
    groups: list[dict] = [{}]
    held = 0
    for key, tensor in tensors.items():
        size = tensor.numel() * tensor.element_size()
        if groups[-1] and held + size > limit:
            groups.append({})
            held = 0
        groups[-1][key] = tensor
        held += size
    stem = path.name.removesuffix(".safetensors")
    weight_map = {}
    for number, group in enumerate(groups, start=1):
        shard = f"{stem}-{number:05d}-of-{len(groups):05d}.safetensors"
        save_file(group, str(path.parent / shard), metadata=metadata)
        weight_map.update(dict.fromkeys(group, shard))
    index = path.parent / f"{path.name}.index.json"
    write_json(index, {"metadata": {**metadata, "total_size": total}, "weight_map": weight_map})
    del torch
    return index


def weights_entry(folder: Path, stem: str = WEIGHTS) -> Path | None:
    """The file weights in ``folder`` are read by: ``model.safetensors``, or the index of
    sharded weights; None when there are none."""
    for candidate in (folder / stem, folder / f"{stem}.index.json"):
        if candidate.exists():
            return candidate
    return None


def weights_files(entry: Path) -> list[Path]:
    """Every file of the weights ``entry`` names: itself, and for an index its shards."""
    entry = Path(entry)
    if not entry.name.endswith(".index.json"):
        return [entry]
    return [entry, *(entry.parent / name for name in sorted(set(_read_index(entry).values())))]


def _read_index(index: Path) -> dict[str, str]:
    """An index file's tensor -> shard map, refused unless every shard is a plain file name
    beside it (an index can never make bloodviz read elsewhere)."""
    try:
        data = json.loads(Path(index).read_text())
        weight_map = data["weight_map"]
        if not isinstance(weight_map, dict) or not weight_map:
            raise TypeError("an empty weight_map")
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{index} is damaged or not a weights index ({exc})") from exc
    for shard in set(weight_map.values()):
        if (
            not isinstance(shard, str)
            or Path(shard).name != shard
            or not shard.endswith(".safetensors")
        ):
            raise CheckpointError(f"{index} names {shard!r}, not a shard file beside it")
    return weight_map


def why_not_shipped(size_mb: float, dtype: str, cpu_budget_run: bool) -> str:
    """Why a weights file stays out of the committed store ('' when it ships).

    Size is no reason (weights over the per-file limit ship as shards). A CPU-budget run (a
    training subset, a couple of epochs) is a placeholder until a full run replaces it; git
    would keep every copy of its weights forever, so only its predictions, metrics and run
    card are committed.
    """
    if cpu_budget_run:
        return (
            f"a CPU-budget run on a training subset: its {size_mb:.0f} MB of {dtype} weights are "
            "a placeholder until a full run, so they are not committed (git keeps every copy)"
        )
    return ""


def keep_weights_local(folder: Path, local: Path, reason: str) -> str:
    """Move a checkpoint's weights (every shard) out of the store into ``local``'s folder;
    return the run-card text."""
    local.parent.mkdir(parents=True, exist_ok=True)
    remove_weights(local.parent, local.name)
    for file in weights_files(weights_entry(folder)):
        shutil.move(file, local.parent / file.name)
    return f"{reason}; they were kept at {local.parent} on the machine that trained it"


def remove_weights(folder: Path, stem: str = WEIGHTS) -> None:
    """Delete the weights in ``folder`` (a single file, or an index and its shards)."""
    entry = weights_entry(folder, stem)
    if entry is None:
        return
    try:
        files = weights_files(entry)
    except CheckpointError:
        files = [entry]
    for file in files:
        file.unlink(missing_ok=True)
    stem_name = stem.removesuffix(".safetensors")
    for stray in folder.glob(f"{stem_name}-*-of-*.safetensors"):
        stray.unlink()


class _ShardedWeights:
    """Shards named by an index, read as one ``safe_open`` handle: each shard is checked to be
    ours, and to hold exactly the tensors the index gives it."""

    def __init__(self, index: Path, stack) -> None:
        from safetensors import safe_open

        self.weight_map = _read_index(index)
        self._handles = {}
        self._metadata = None
        for shard in sorted(set(self.weight_map.values())):
            path = index.parent / shard
            if not path.exists():
                raise CheckpointError(f"shard {path} named by {index.name} is missing")
            handle = stack.enter_context(safe_open(str(path), framework="pt"))
            metadata = handle.metadata() or {}
            if self._metadata is None:
                self._metadata = metadata
            elif metadata != self._metadata:
                raise CheckpointError(f"shard {path} is from other weights ({metadata})")
            expected = {k for k, v in self.weight_map.items() if v == shard}
            if set(handle.keys()) != expected:
                raise CheckpointError(f"shard {path} does not hold what {index.name} says")
            self._handles[shard] = handle

    def metadata(self) -> dict:
        return self._metadata or {}

    def keys(self) -> list[str]:
        return list(self.weight_map)

    def get_tensor(self, key: str):
        return self._handles[self.weight_map[key]].get_tensor(key)


@contextmanager
def _checked_weights(path: Path, expected_model: str | None):
    """The open safetensors file at ``path``, refused unless it is ours (and ``expected_model``'s);
    damage found while reading it is a :class:`CheckpointError` too."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"weights file {path} is missing")
    try:
        with ExitStack() as stack:
            if path.name.endswith(".index.json"):
                handle = _ShardedWeights(path, stack)
            else:
                handle = stack.enter_context(safe_open(str(path), framework="pt"))
            metadata = handle.metadata() or {}
            if metadata.get("format") != FORMAT:
                raise CheckpointError(
                    f"{path} is not a bloodviz checkpoint (metadata {metadata or 'absent'})"
                )
            if expected_model and metadata.get("model") != expected_model:
                raise CheckpointError(
                    f"{path} holds weights for {metadata.get('model')!r}, not {expected_model!r}"
                )
            yield handle
    except SafetensorError as exc:
        raise CheckpointError(f"{path} is damaged or not a safetensors file ({exc})") from exc
    except OSError as exc:
        raise CheckpointError(f"cannot read {path} ({exc})") from exc


def load_weights(path: Path, expected_model: str | None = None) -> dict:
    """Load a safetensors state dict as float32, refusing files that are not ours."""
    with _checked_weights(path, expected_model) as handle:
        state = {key: handle.get_tensor(key) for key in handle.keys()}
    return {k: (v.float() if v.is_floating_point() else v) for k, v in state.items()}


def load_weights_into(
    model,
    path: Path,
    expected_model: str | None = None,
    *,
    part: Callable[[str], bool] | None = None,
) -> None:
    """Copy the weights at ``path`` into ``model`` one tensor at a time, refusing files that are
    not ours or do not fit it. Unlike ``model.load_state_dict(load_weights(path))``, a float32
    copy of the whole state never sits beside the model: loading resnet50 peaked 230 MB above
    where it started that way, for a model that keeps 107 MB.

    ``part`` selects the tensors (by name) this file provides, of the model's and of the
    file's alike: a head stored apart from the network it sits on. A module whose tensors'
    shapes depend on its fit (``size_from_weights``, the SVM head) is shaped from the file."""
    import torch

    def wanted(key: str) -> bool:
        return part is None or part(key)

    with _checked_weights(path, expected_model) as handle:
        stored = {key for key in handle.keys() if wanted(key)}
        for prefix, module in model.named_modules():
            if hasattr(module, "size_from_weights"):
                start = f"{prefix}." if prefix else ""
                module.size_from_weights(
                    {
                        key.removeprefix(start): handle.get_tensor(key)
                        for key in stored
                        if key.startswith(start)
                    }
                )
        targets = {k: v for k, v in model.state_dict(keep_vars=True).items() if wanted(k)}
        missing, unexpected = sorted(set(targets) - stored), sorted(stored - set(targets))
        if missing or unexpected:
            raise CheckpointError(
                f"{path} does not fit {expected_model or 'this model'}: missing "
                f"{missing[:3]}, unexpected {unexpected[:3]}"
            )
        with torch.no_grad():
            for key, target in targets.items():
                tensor = handle.get_tensor(key)
                if tensor.shape != target.shape:
                    raise CheckpointError(
                        f"{path} does not fit {expected_model or 'this model'}: {key} is "
                        f"{tuple(tensor.shape)}, the model wants {tuple(target.shape)}"
                    )
                target.copy_(tensor)  # fp16 on disk: converted as it is copied


def model_shell(build: Callable):
    """``build()``'s architecture with uninitialised tensors, for weights that overwrite them all.

    Built on the meta device, so no throwaway random initialisation is allocated: timm's
    VGG-16 builds a 411 MB classifier that bloodviz's vgg16 then drops, which took loading a
    56 MB vgg16 checkpoint 514 MB above where it started (89 MB this way). A model holding a
    buffer that weights files leave out (a non-persistent one), or that cannot be built on
    meta, is built the ordinary way."""
    import torch

    try:
        with torch.device("meta"):
            shell = build()
    except Exception:  # e.g. an init that reads a tensor's values (.tolist())
        return build()
    held = set(shell.state_dict())
    if any(name not in held for name, _ in shell.named_buffers()):
        return build()
    return shell.to_empty(device="cpu")


def _header(file: Path) -> dict:
    """A safetensors file's JSON header, read by hand: no torch import (the upload page
    budgets its networks without torch)."""
    import struct

    try:
        with open(file, "rb") as handle:
            (length,) = struct.unpack("<Q", handle.read(8))
            return json.loads(handle.read(length))
    except (OSError, struct.error, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{file} is damaged or not a safetensors file ({exc})") from exc


def weights_metadata(entry: Path) -> dict[str, str]:
    """The metadata weights carry (format, model, dtype, and for a head stored apart from its
    network ``features_from`` / ``features_sha256``), read without torch."""
    entry = Path(entry)
    if entry.name.endswith(".index.json"):
        return _header(weights_files(entry)[1]).get("__metadata__", {})
    return _header(entry).get("__metadata__", {})


def weights_digest(entry: Path) -> str:
    """SHA-256 over every file of a network's weights (each shard in order).

    Remembered per file set, size and write time: a head checked against its feature network
    on every load, and the ONNX cache keyed on it, would otherwise read 47-109 MB each time."""
    files = weights_files(entry)
    stamp = tuple((str(f), *_size_and_mtime(f)) for f in files)
    with _DIGESTS_LOCK:
        known = _DIGESTS.get(stamp)
    if known is not None:
        return known
    import hashlib

    digest = hashlib.sha256()
    for file in files:
        with open(file, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    with _DIGESTS_LOCK:
        _DIGESTS[stamp] = digest.hexdigest()
    return digest.hexdigest()


def _size_and_mtime(file: Path) -> tuple[int, int]:
    stat = file.stat()
    return stat.st_size, stat.st_mtime_ns


_DIGESTS: dict[tuple, str] = {}  # one short string per weights file set: stays small
_DIGESTS_LOCK = threading.Lock()  # the app's sessions load networks on their own threads


def weights_memory_bytes(path: Path) -> int:
    """What a weights file takes once loaded as float32 (fp16 files double), read from its
    safetensors header alone: the app budgets its loaded networks by this before loading any."""
    path = Path(path)
    files = weights_files(path)[1:] if path.name.endswith(".index.json") else [path]
    total = 0
    for file in files:
        for key, entry in _header(file).items():
            if key == "__metadata__":
                continue
            numel = int(np.prod(entry["shape"], dtype=np.int64))
            # half precision is loaded as float32; float64 (the SVM head) stays float64
            floating = entry["dtype"] in ("F16", "BF16", "F32")
            start, end = entry["data_offsets"]
            total += numel * 4 if floating else end - start
    return total


# -- predictions ------------------------------------------------------------------------------
@dataclass
class Predictions:
    ids: np.ndarray
    labels: np.ndarray
    probs: np.ndarray
    class_names: tuple[str, ...]

    @property
    def predicted(self) -> np.ndarray:
        return self.probs.argmax(axis=1)


def save_predictions(path: Path, preds: Predictions) -> None:
    frame = pd.DataFrame(
        preds.probs.astype(np.float64), columns=[f"p_{c}" for c in preds.class_names]
    )
    frame.insert(0, "label", [preds.class_names[i] for i in preds.labels])
    frame.insert(0, "sample_id", preds.ids)
    frame.to_csv(path, index=False, float_format="%.6f")


def load_predictions(path: Path, class_names: tuple[str, ...]) -> Predictions:
    frame = pd.read_csv(path, dtype={"sample_id": str, "label": str})
    columns = [f"p_{c}" for c in class_names]
    missing = [c for c in ["sample_id", "label", *columns] if c not in frame.columns]
    if missing:
        raise CheckpointError(f"{path} lacks columns {missing}")
    index = {c: i for i, c in enumerate(class_names)}
    return Predictions(
        ids=frame["sample_id"].to_numpy(),
        labels=frame["label"].map(index).to_numpy(dtype=np.int64),
        probs=frame[columns].to_numpy(dtype=np.float64),
        class_names=tuple(class_names),
    )


# -- reading checkpoints ----------------------------------------------------------------------
def evaluation_splits(splits) -> list[str]:
    """The splits a comparison offers, test first: every split but validation, which is
    offered only where a checkpoint has nothing else (the one rule every page uses)."""
    found = sorted(set(splits) - {"val"}, key=lambda s: (s != "test", s))
    return found or sorted(set(splits))


@dataclass
class Checkpoint:
    path: Path
    dataset: str
    size: int
    model: str
    preprocessing: Preprocessing
    run: RunCard

    @property
    def name(self) -> str:
        """The model name, with ``@imagenet`` for an ImageNet-pretrained run."""
        return checkpoint_name(
            self.model, self.run.pretrained, self.run.config.get("variant"), self.seed
        )

    @property
    def seed(self) -> int:
        return int(self.run.config.get("seed") or 0)

    @property
    def replicate_of(self) -> str:
        """The name its seed-0 run has: the runs that differ only in their seed share it."""
        return checkpoint_name(self.model, self.run.pretrained, self.run.config.get("variant"))

    @property
    def dataset_key(self) -> str:
        return f"{self.dataset}-{self.size}"

    @property
    def splits(self) -> list[str]:
        return sorted(
            p.stem.removeprefix("predictions-") for p in self.path.glob("predictions-*.csv")
        )

    @property
    def evaluation_splits(self) -> list[str]:
        return evaluation_splits(self.splits)

    @property
    def default_split(self) -> str | None:
        """The split a page shows first: test where there is one."""
        return next(iter(self.evaluation_splits), None)

    def predictions(self, split: str) -> Predictions:
        path = self.path / f"predictions-{split}.csv"
        if not path.exists():
            raise CheckpointError(
                f"{self.path} has no predictions for split {split!r} (has {self.splits})"
            )
        return load_predictions(path, self.preprocessing.class_names)

    def metrics(self) -> dict:
        path = self.path / "metrics.json"
        return json.loads(path.read_text()) if path.exists() else {}

    def eval_metrics(self) -> dict:
        """Metrics of the evaluation splits (everything but the validation split)."""
        return {split: m for split, m in self.metrics().items() if split != "val"}

    def bench(self, device: str = "cpu") -> dict | None:
        """The stored cost benchmark (``bench-<device>.json``), or None if there is none or it
        is damaged (rerun ``python -m bloodviz bench``)."""
        path = self.path / f"bench-{device}.json"
        try:
            return json.loads(path.read_text()) if path.exists() else None
        except (json.JSONDecodeError, OSError):
            return None

    def history(self) -> pd.DataFrame:
        path = self.path / "history.csv"
        return pd.read_csv(path) if path.exists() else pd.DataFrame()

    def build_model(self):
        """The architecture this checkpoint was trained with, untrained, no download."""
        from bloodviz.models import create_model
        from bloodviz.models.registry import LAYOUT_ONLY

        return create_model(
            self.model,
            num_classes=self.preprocessing.num_classes,
            in_size=self.size,
            pretrained=LAYOUT_ONLY if self.run.pretrained else False,
        )

    @property
    def weights_path(self) -> Path | None:
        """The shipped weights, else a local copy kept under ``runs/`` (too big to ship)."""
        shipped = weights_entry(self.path)
        if shipped is not None:
            return shipped
        return weights_entry(runs_root() / self.dataset_key / self.name)

    @property
    def weights_bytes(self) -> int | None:
        """The weights' size on disk (every shard, and the feature network a head sits on),
        None for a predictions-only checkpoint."""
        entry = self.weights_path
        if entry is None:
            return None
        features = self.features_checkpoint
        own = sum(f.stat().st_size for f in weights_files(entry))
        return own + (features.weights_bytes or 0 if features is not None else 0)

    @functools.cached_property
    def features_checkpoint(self) -> Checkpoint | None:
        """The checkpoint whose network this one's weights sit on (resnet50_svm's SVM head
        on the same store's resnet50), None for a whole network."""
        entry = self.weights_path
        name = weights_metadata(entry).get("features_from") if entry else None
        return open_checkpoint(self.path.parent.parent / name) if name else None

    @property
    def has_weights(self) -> bool:
        return self.weights_path is not None

    @functools.cached_property  # pages ask on every rerun; the app caches Checkpoint objects
    def memory_bytes(self) -> int:
        """Roughly what this network takes loaded (float32 weights; an imported ONNX model's
        file size); 0 for a predictions-only checkpoint."""
        if self.weights_path is not None:
            features = self.features_checkpoint
            below = features.memory_bytes if features is not None else 0
            return below + weights_memory_bytes(self.weights_path)
        from bloodviz.imports import imported_onnx_file

        imported = imported_onnx_file(self)
        return imported.stat().st_size if imported is not None else 0

    @property
    def predictions_only_reason(self) -> str:
        """Why this checkpoint ships no weights ('' when it does)."""
        if weights_entry(self.path) is not None:
            return ""
        return self.run.weights_not_shipped or "its folder holds no weights file"

    def load_model(self):
        """The trained network in eval mode, on CPU, weights checked against the registry."""
        path = self.weights_path
        if path is None:
            raise CheckpointError(
                f"{self.name} on {self.dataset_key} is a predictions-only checkpoint: "
                f"{self.predictions_only_reason}"
            )
        model = model_shell(self.build_model)
        metadata = weights_metadata(path)
        head = metadata.get("head")
        if head is None:
            load_weights_into(model, path, expected_model=self.model)
            return model.eval()
        # a head stored apart from its network: the feature checkpoint's weights first, all
        # but its own head, checked to be the very weights the head was fitted on
        features = self.features_checkpoint
        if features is None or features.weights_path is None:
            raise CheckpointError(f"{self.path}: its feature network {metadata!r} is missing")
        if weights_digest(features.weights_path) != metadata.get("features_sha256"):
            raise CheckpointError(
                f"{self.name} on {self.dataset_key} was fitted on other weights of "
                f"{features.path} than those there now; refit it: "
                f"{metadata.get('refit', 'python -m bloodviz train --model ' + self.model)}"
            )

        def in_head(key: str) -> bool:
            return key.startswith(f"{head}.")

        load_weights_into(
            model, features.weights_path, features.model, part=lambda k: not in_head(k)
        )
        load_weights_into(model, path, expected_model=self.model, part=in_head)
        return model.eval()

    def cost_model(self):
        """The network whose speed and memory are measured: the trained one, or for a
        predictions-only checkpoint the same architecture untrained (latency, FLOPs and
        memory do not depend on the weight values)."""
        return self.load_model() if self.has_weights else self.build_model().eval()


def open_checkpoint(path: Path) -> Checkpoint:
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"no checkpoint folder at {path}")
    missing = [name for name in REQUIRED if not (path / name).exists()]
    if missing:
        raise CheckpointError(f"{path} is incomplete: missing {', '.join(missing)}")
    try:
        card = json.loads((path / "run.json").read_text())
        prep = Preprocessing.load(path / "preprocessing.json")
        if not isinstance(card, dict) or card.get("format") != FORMAT:
            raise CheckpointError(f"{path}/run.json is not a bloodviz run card")
        run = RunCard.from_dict(card)
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, CheckpointError):
            raise
        raise CheckpointError(f"{path}: damaged run.json or preprocessing.json ({exc})") from exc
    return Checkpoint(
        path=path,
        dataset=run.dataset,
        size=int(run.size),
        model=run.model,
        preprocessing=prep,
        run=run,
    )


def write_checkpoint(
    out_dir: Path,
    *,
    run: RunCard,
    preprocessing: Preprocessing,
    predictions: dict[str, Predictions],
    metrics: dict,
    history: pd.DataFrame | None = None,
    weights: dict | None = None,
    fp16: bool = False,
    local_weights: Path | None = None,
    extra_files: Callable[[Path], None] | None = None,
    weights_extra: dict[str, str] | None = None,
) -> Path:
    """Write a whole checkpoint atomically; every trainer goes through here.

    ``weights`` (a state dict) are saved unless :func:`why_not_shipped` says otherwise: then
    they move to ``local_weights`` (under ``runs/``) and the run card records why, making a
    predictions-only checkpoint. Without ``weights`` the run card must already say why.
    ``extra_files`` writes anything else into the folder (an imported model's ONNX file).
    Derived splits (blood-cells' ``test_dedup``) are added here from their parent's rows, so
    every trainer and importer gets them.
    """
    predictions, metrics = add_derived_splits(run.dataset, predictions, metrics, seed=run.seed)

    def fill(folder: Path) -> None:
        card = run
        if weights is not None:
            entry = save_weights(
                weights,
                folder / WEIGHTS,
                run.model,
                fp16=fp16,
                max_file_mb=MAX_SHIPPED_MB,
                metadata=weights_extra,
            )
            size_mb = sum(f.stat().st_size for f in weights_files(entry)) / 2**20
            dtype = "fp16" if fp16 else "fp32"
            reason = why_not_shipped(size_mb, dtype, run.is_cpu_budget)
            if reason:
                if local_weights is None:
                    raise ValueError(f"the weights cannot ship ({reason}) and have nowhere to go")
                card = run.replace(
                    weights_not_shipped=keep_weights_local(folder, local_weights, reason)
                )
            elif local_weights is not None:
                remove_weights(local_weights.parent, local_weights.name)
        elif not run.weights_not_shipped:
            raise ValueError("a checkpoint without weights must say why in its run card")
        preprocessing.save(folder / "preprocessing.json")
        for split, preds in predictions.items():
            save_predictions(folder / f"predictions-{split}.csv", preds)
        if history is not None:
            history.to_csv(folder / "history.csv", index=False)
        write_json(folder / "metrics.json", metrics)
        if extra_files is not None:
            extra_files(folder)
        write_json(folder / "run.json", card.to_dict())

    return write_atomic(out_dir, fill)


def add_derived_splits(
    dataset: str, predictions: dict[str, Predictions], metrics: dict, *, seed: int = 0
) -> tuple[dict[str, Predictions], dict]:
    """``predictions`` and ``metrics`` with every derived split of ``dataset`` added (rows of
    the parent split; metrics computed like every other split's)."""
    from bloodviz.data import with_derived_splits
    from bloodviz.metrics import classification_summary

    predictions = with_derived_splits(dataset, predictions)
    added = {
        split: classification_summary(p.labels, p.probs, p.class_names, seed=seed)
        for split, p in predictions.items()
        if split not in metrics
    }
    return predictions, {**metrics, **added}


def derive_split_files(ckpt: Checkpoint) -> list[str]:
    """(Re)write the derived splits' predictions, OOD scores and metrics of an existing
    checkpoint folder, one written before the split existed or before its ids changed.
    Returns the derived splits written."""
    from bloodviz.data import derived_splits

    parents = derived_splits(ckpt.dataset)
    have = {s: ckpt.predictions(s) for s in ckpt.splits if s not in parents}
    kept_metrics = {s: m for s, m in ckpt.metrics().items() if s not in parents}
    predictions, metrics = add_derived_splits(ckpt.dataset, have, kept_metrics, seed=ckpt.run.seed)
    added = [s for s in predictions if s not in have]
    if not added:
        return []
    for split in added:
        _replace_file(
            ckpt.path / f"predictions-{split}.csv",
            lambda tmp, s=split: save_predictions(tmp, predictions[s]),
        )
        parent, ids = parents[split]
        parent_scores = ckpt.path / f"ood-scores-{parent}.csv"
        if parent_scores.exists():
            frame = pd.read_csv(parent_scores, dtype={"sample_id": str})
            kept = frame[frame["sample_id"].isin(ids)]
            _replace_file(
                ckpt.path / f"ood-scores-{split}.csv",
                lambda tmp, f=kept: f.to_csv(tmp, index=False),
            )
    _replace_file(ckpt.path / "metrics.json", lambda tmp: write_json(tmp, metrics))
    return added


def _replace_file(path: Path, write: Callable[[Path], None]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp)
    os.replace(tmp, path)


def seed_representatives(ckpts: list[Checkpoint]) -> list[Checkpoint]:
    """One checkpoint per set of runs that differ only in their seed (the lowest seed), in the
    given order: what model lists offer; the leaderboard shows the others' spread."""
    lowest: dict[tuple[str, str], Checkpoint] = {}
    for ckpt in ckpts:
        key = (ckpt.dataset_key, ckpt.replicate_of)
        if key not in lowest or ckpt.seed < lowest[key].seed:
            lowest[key] = ckpt
    kept = {id(c) for c in lowest.values()}
    return [c for c in ckpts if id(c) in kept]


def list_checkpoints(
    root: Path | None = None, dataset_key: str | None = None, *, every_seed: bool = True
) -> list[Checkpoint]:
    """Every complete checkpoint under ``root`` (folders starting with '.' are in-flight);
    with ``every_seed=False``, each model's lowest seed only (:func:`seed_representatives`)."""
    root = Path(root or checkpoints_root())
    found = []
    if not root.is_dir():
        return found
    for ds_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if dataset_key and ds_dir.name != dataset_key:
            continue
        for model_dir in sorted(ds_dir.iterdir()):
            if model_dir.name.startswith(".") or not model_dir.is_dir():
                continue
            try:
                found.append(open_checkpoint(model_dir))
            except CheckpointError:
                continue
    return found if every_seed else seed_representatives(found)


def store_fingerprint(root: Path | None = None) -> tuple:
    """Cheap summary of the store (paths and run-card times) to key the app's caches on."""
    root = Path(root or checkpoints_root())
    if not root.is_dir():
        return (str(root),)
    cards = sorted(root.glob("*/*/run.json"))
    return (str(root), *((str(p), p.stat().st_mtime_ns) for p in cards))
