"""Bring your own model: an ONNX file or predictions made elsewhere, as a bloodviz checkpoint.

Both end in the same checkpoint folder as a trained model (predictions per split, metrics,
preprocessing, a run card saying where it came from), so every comparison page shows them
beside the zoo. Neither carries PyTorch weights: Grad-CAM, which needs gradients, says so.

- :func:`import_predictions`: a CSV in the layout bloodviz writes (``sample_id``, optional
  ``label``, one ``p_<class>`` column a class), validated strictly: every id of each split it
  covers exactly once, known classes, finite probabilities summing to 1.
- :func:`import_onnx`: an ONNX classifier; its input and output shapes and class count are
  checked against the dataset, it is run with ONNX Runtime on every val and evaluation cell of
  the raw dataset, and the file is kept in the checkpoint (or, over the per-file limit, under
  ``runs/`` and referenced by its SHA-256). Upload-and-classify runs it.

Neither imports torch, so the app's upload form can call them.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import sys
import threading
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from bloodviz.checkpoints import (
    MAX_SHIPPED_MB,
    Predictions,
    checkpoint_dir,
    write_checkpoint,
)
from bloodviz.metrics import summarise
from bloodviz.paths import runs_root
from bloodviz.preprocess import Preprocessing
from bloodviz.runcard import FORMAT, RunCard

ONNX_FILE = "model.onnx"
IMPORTED_FAMILY = "imported"
NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,47}$")
SUM_TOLERANCE = 1e-3
# bloodviz's own metadata key in an ONNX file: a Preprocessing as JSON
ONNX_METADATA_KEY = "bloodviz.preprocessing"
# imports from the app's sessions (threads of one process) write one at a time: the checkpoint
# writer's temporary folder is named by process id
_WRITE_LOCK = threading.Lock()


class ImportRefused(ValueError):
    """An imported file does not fit the dataset (named precisely; nothing is written)."""


def sha256_of(path: Path) -> str:
    from bloodviz.download import file_digest

    return file_digest(path, "sha256")


def zoo_names(root: Path | None = None) -> set[str]:
    """Names an import may not take: the studies' models, every model trained in the store,
    and (where torch is loaded already) the whole registry. Torch-free, so the app's import
    form does not load 600 MB to check a name."""
    from bloodviz.checkpoints import list_checkpoints
    from bloodviz.literature import STUDIES

    names = {m for study in STUDIES.values() for m in study.models}
    names |= {c.model for c in list_checkpoints(root) if not c.run.imported}
    if "torch" in sys.modules:
        from bloodviz.models import list_models

        names |= set(list_models())
    return names


def check_name(name: str, dataset_key: str, root: Path | None, overwrite: bool) -> Path:
    """The checkpoint folder for an imported model ``name``: a new one, or an existing one only
    with ``overwrite``. Registered zoo names are refused, so a zoo model is never replaced."""
    if not NAME_PATTERN.match(name):
        raise ImportRefused(
            f"name {name!r}: use 1-48 lower-case letters, digits, '_', '-' or '.', starting "
            "with a letter or digit"
        )
    if name in zoo_names(root):
        raise ImportRefused(f"{name!r} is a model of the zoo; choose another name")
    out = checkpoint_dir(dataset_key, name, root)
    if out.exists() and not overwrite:
        raise ImportRefused(
            f"a checkpoint {dataset_key}/{name} exists already; choose another name or pass "
            "--overwrite to replace it"
        )
    if out.exists():
        from bloodviz.checkpoints import CheckpointError, open_checkpoint

        try:
            imported = bool(open_checkpoint(out).run.imported)
        except CheckpointError:
            imported = False
        if not imported:
            raise ImportRefused(
                f"{dataset_key}/{name} was not imported (or is damaged): only an imported "
                "checkpoint is replaced; choose another name"
            )
    return out


def prediction_template(dataset: str, size: int, split: str = "test", data_root=None) -> str:
    """A CSV to fill in: the split's ids and labels, one empty ``p_<class>`` column a class."""
    references, class_names = reference_splits(dataset, size, data_root)
    ids, labels = references[split]
    frame = pd.DataFrame({"sample_id": ids, "label": [class_names[k] for k in labels]})
    for name in class_names:
        frame[f"p_{name}"] = ""
    return frame.to_csv(index=False)


def reference_splits(dataset: str, size: int, data_root=None) -> tuple[dict, tuple[str, ...]]:
    """Ids and labels of the splits an import may cover (val and the evaluation splits): from
    the raw dataset, else from the shipped cell bank (its evaluation splits)."""
    from bloodviz.cellbank import open_cells

    cells = open_cells(dataset, size, data_root)
    splits = [s for s in cells.gallery_splits if s != "train"]
    return {s: (list(cells.sample_ids(s)), cells.labels(s)) for s in splits}, cells.class_names


def read_prediction_table(
    table: pd.DataFrame, class_names: tuple[str, ...], references: dict, source: str
) -> dict[str, Predictions]:
    """Validate a predictions table against the dataset's splits; one Predictions a split."""
    if "sample_id" not in table.columns:
        raise ImportRefused(f"{source}: no sample_id column (columns: {list(table.columns)[:8]})")
    prob_columns = [c for c in table.columns if c.startswith("p_")]
    expected = [f"p_{c}" for c in class_names]
    unknown = sorted(set(prob_columns) - set(expected))
    missing = [c for c in expected if c not in prob_columns]
    if unknown or missing:
        raise ImportRefused(
            f"{source}: the probability columns must be {expected}"
            + (f"; unknown: {unknown}" if unknown else "")
            + (f"; missing: {missing}" if missing else "")
        )
    ids = table["sample_id"].astype(str)
    duplicated = ids[ids.duplicated()].unique()
    if len(duplicated):
        raise ImportRefused(
            f"{source}: {len(duplicated)} sample id(s) appear more than once, e.g. "
            f"{list(duplicated[:3])}"
        )
    try:
        probs = table[expected].to_numpy(dtype=np.float64)
    except ValueError as exc:
        raise ImportRefused(f"{source}: a probability is not a number ({exc})") from exc
    bad = ~np.isfinite(probs).all(axis=1)
    if bad.any():
        raise ImportRefused(
            f"{source}: {int(bad.sum())} row(s) hold a missing or infinite probability, e.g. "
            f"{ids[bad].iloc[0]!r}"
        )
    if (probs < 0).any() or (probs > 1 + SUM_TOLERANCE).any():
        raise ImportRefused(
            f"{source}: probabilities must lie between 0 and 1 (logits? apply a softmax first)"
        )
    sums = probs.sum(axis=1)
    off = np.abs(sums - 1) > SUM_TOLERANCE
    if off.any():
        raise ImportRefused(
            f"{source}: {int(off.sum())} row(s) do not sum to 1 (within {SUM_TOLERANCE}), e.g. "
            f"{ids[off].iloc[0]!r} sums to {sums[off][0]:.4f}; give probabilities, not logits"
        )
    position = {sid: i for i, sid in enumerate(ids)}
    split_of = {sid: split for split, (sids, _) in references.items() for sid in sids}
    strangers = [sid for sid in ids if sid not in split_of]
    if strangers:
        raise ImportRefused(
            f"{source}: {len(strangers)} sample id(s) are not in the val or evaluation splits "
            f"({', '.join(references)}), e.g. {strangers[:3]}"
        )
    covered = {split_of[sid] for sid in ids}
    out = {}
    for split in covered:
        sids, labels = references[split]
        absent = [sid for sid in sids if sid not in position]
        if absent:
            raise ImportRefused(
                f"{source}: split {split} has {len(sids)} samples and {len(absent)} of them "
                f"have no row, e.g. {absent[:3]}; give every id of a split once"
            )
        order = np.asarray([position[sid] for sid in sids])
        if "label" in table.columns:
            given = table["label"].astype(str).to_numpy()[order]
            truth = np.asarray([class_names[k] for k in labels])
            wrong = given != truth
            if wrong.any():
                first = int(np.flatnonzero(wrong)[0])
                raise ImportRefused(
                    f"{source}: {int(wrong.sum())} row(s) carry a label that is not the "
                    f"dataset's, e.g. {sids[first]!r} labelled {given[first]!r}, truly "
                    f"{truth[first]!r}; are the ids from another dataset or split?"
                )
        out[split] = Predictions(
            ids=np.asarray(sids),
            labels=np.asarray(labels, dtype=np.int64),
            probs=probs[order] / sums[order, None],  # exact sums, within the tolerance
            class_names=tuple(class_names),
        )
    if not any(s != "val" for s in out):
        raise ImportRefused(f"{source}: only validation rows; give an evaluation split (test)")
    return out


def light_versions() -> dict:
    """Versions of what an import used (no torch: the app's upload form calls this)."""
    import bloodviz

    found = {"python": platform.python_version(), "numpy": np.__version__, "pandas": pd.__version__}
    found["bloodviz"] = bloodviz.__version__
    if "onnxruntime" in sys.modules:
        found["onnxruntime"] = sys.modules["onnxruntime"].__version__
    return found


def machine() -> dict:
    return {
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
    }


def _card(
    *,
    dataset: str,
    size: int,
    name: str,
    description: str,
    predictions: dict[str, Predictions],
    command: str,
    imported: dict,
    weights_not_shipped: str,
) -> RunCard:
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    return RunCard.from_dict(
        {
            "format": FORMAT,
            "dataset": dataset,
            "size": size,
            "model": name,
            "display_name": name,
            "family": IMPORTED_FAMILY,
            "dataset_description": description,
            "device": "cpu",
            "hardware": machine(),
            "versions": light_versions(),
            "started_at": now,
            "finished_at": now,
            "n_samples": {s: len(p.ids) for s, p in predictions.items()},
            "weights_not_shipped": weights_not_shipped,
            "command": command,
            "imported": imported,
        }
    )


def import_predictions(
    csv_file: Path | str,
    *,
    dataset: str,
    name: str,
    size: int | None = None,
    data_root=None,
    checkpoints: Path | None = None,
    overwrite: bool = False,
    command: str = "",
    source_name: str | None = None,
) -> Path:
    """Write a predictions-only checkpoint from a CSV of per-class probabilities."""
    from bloodviz.data import DEFAULT_SIZES

    size = size or DEFAULT_SIZES.get(dataset, 64)
    csv_file = Path(csv_file)
    source = source_name or csv_file.name
    check_name(name, f"{dataset}-{size}", checkpoints, overwrite)  # refuse before any work
    references, class_names = reference_splits(dataset, size, data_root)
    try:
        table = pd.read_csv(csv_file, dtype={"sample_id": str, "label": str})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise ImportRefused(f"{source} is not a readable CSV file ({exc})") from exc
    predictions = read_prediction_table(table, tuple(class_names), references, source)
    digest = sha256_of(csv_file)
    card = _card(
        dataset=dataset,
        size=size,
        name=name,
        description=f"Predictions made elsewhere, imported from {source}.",
        predictions=predictions,
        command=command
        or f"python -m bloodviz import-predictions {source} --dataset {dataset} --name {name}",
        imported={"kind": "predictions", "file": source, "sha256": digest},
        weights_not_shipped=f"predictions made elsewhere, imported from {source} "
        f"(sha256 {digest[:12]}); no model to run",
    )
    prep = Preprocessing(
        size=size,
        class_names=tuple(class_names),
        description="unknown: predictions were made elsewhere",
    )
    return _write_locked(
        name,
        dataset,
        size,
        checkpoints,
        overwrite,
        run=card,
        preprocessing=prep,
        predictions=predictions,
    )


def _write_locked(name, dataset, size, checkpoints, overwrite, *, predictions, **parts) -> Path:
    """Write an imported checkpoint, one at a time in this process (the app's sessions are
    threads, and the checkpoint writer's temporary folder is named by process id); the name is
    checked again inside the lock, since another session may have taken it meanwhile."""
    with _WRITE_LOCK:
        out = check_name(name, f"{dataset}-{size}", checkpoints, overwrite)
        return write_checkpoint(
            out, predictions=predictions, metrics=summarise(predictions), **parts
        )


# -- ONNX -------------------------------------------------------------------------------------
def _session(path: Path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # ORT raises its own Fail / InvalidGraph / NoSuchFile types
        raise ImportRefused(
            f"{path.name} is not an ONNX model ONNX Runtime can load ({exc})"
        ) from exc


def onnx_preprocessing(
    session, size: int, class_names: tuple[str, ...], dataset_prep: Preprocessing, options: dict
) -> Preprocessing:
    """The preprocessing to feed the model: the dataset's geometry, with mean / std from the
    model's own metadata (``bloodviz.preprocessing``) where present, then from ``options``."""
    fields = dataset_prep.to_dict()
    meta = session.get_modelmeta().custom_metadata_map or {}
    if ONNX_METADATA_KEY in meta:
        try:
            stored = json.loads(meta[ONNX_METADATA_KEY])
        except json.JSONDecodeError as exc:
            raise ImportRefused(f"the model's {ONNX_METADATA_KEY} metadata is not JSON") from exc
        fields.update({k: stored[k] for k in ("mean", "std", "resample", "square") if k in stored})
    fields.update({k: v for k, v in options.items() if v is not None})
    fields["size"], fields["class_names"] = size, list(class_names)
    fields["description"] = (
        f"{dataset_prep.description} Imported ONNX model: mean {tuple(fields['mean'])}, std "
        f"{tuple(fields['std'])}."
    )
    return Preprocessing.from_dict(fields)


def check_onnx_shapes(session, size: int, num_classes: int, source: str) -> None:
    inputs, outputs = session.get_inputs(), session.get_outputs()
    if len(inputs) != 1:
        raise ImportRefused(f"{source} takes {len(inputs)} inputs; a classifier takes one image")
    shape = inputs[0].shape
    if len(shape) != 4:
        raise ImportRefused(f"{source}'s input has shape {shape}; expected N x 3 x H x W")
    channels, height, width = shape[1:]
    if width == 3 and channels != 3:
        raise ImportRefused(
            f"{source} takes channels last ({shape}); bloodviz feeds N x 3 x H x W: export it "
            "channels first"
        )
    if isinstance(channels, int) and channels != 3:
        raise ImportRefused(f"{source}'s input has {channels} channels; bloodviz feeds RGB (3)")
    for side, value in (("height", height), ("width", width)):
        if isinstance(value, int) and value != size:
            raise ImportRefused(
                f"{source} takes images of {side} {value}; this dataset's key is {size} px "
                f"(pass --size {value} to compare it at that size)"
            )
    out = outputs[0].shape
    if len(out) != 2:
        raise ImportRefused(f"{source}'s first output has shape {out}; expected N x classes")
    if isinstance(out[1], int) and out[1] != num_classes:
        raise ImportRefused(f"{source} outputs {out[1]} classes; the dataset has {num_classes}")


def as_probabilities(outputs: np.ndarray, kind: str) -> np.ndarray:
    """Model outputs to probabilities: ``logits`` (softmax), ``probs``, or ``auto`` (rows of
    non-negative values that sum to 1 are probabilities already)."""
    from bloodviz.inference import softmax

    outputs = np.asarray(outputs, dtype=np.float64)
    if kind == "auto":
        sums = outputs.sum(axis=1)
        kind = "probs" if (outputs >= 0).all() and np.allclose(sums, 1, atol=1e-3) else "logits"
    return outputs / outputs.sum(axis=1, keepdims=True) if kind == "probs" else softmax(outputs)


def import_onnx(
    onnx_file: Path | str,
    *,
    dataset: str,
    name: str,
    size: int | None = None,
    mean: tuple[float, float, float] | None = None,
    std: tuple[float, float, float] | None = None,
    outputs: str = "auto",
    data_root=None,
    checkpoints: Path | None = None,
    overwrite: bool = False,
    batch_size: int = 64,
    progress: bool = True,
    command: str = "",
) -> Path:
    """Run an ONNX classifier on every val and evaluation cell and write its checkpoint."""
    from tqdm.auto import tqdm

    from bloodviz.data import DEFAULT_SIZES, get_dataset

    onnx_file = Path(onnx_file)
    if not onnx_file.is_file():
        raise ImportRefused(f"{onnx_file} is not a file")
    size = size or DEFAULT_SIZES.get(dataset, 64)
    check_name(name, f"{dataset}-{size}", checkpoints, overwrite)  # refuse before any work
    data = get_dataset(dataset, size, data_root)  # metrics need the raw images, not the bank
    classes = tuple(data.class_names)
    session = _session(onnx_file)
    check_onnx_shapes(session, size, len(classes), onnx_file.name)
    options = {"mean": list(mean) if mean else None, "std": list(std) if std else None}
    prep = onnx_preprocessing(session, size, classes, data.preprocessing(), options)
    input_name = session.get_inputs()[0].name
    predictions = {}
    for split in ["val", *data.eval_splits]:
        arrays = data.load_split(split, progress=progress)
        probs = []
        starts = range(0, len(arrays), batch_size)
        for start in tqdm(starts, desc=f"{name} on {split}", disable=not progress):
            batch = prep.to_array(arrays.images[start : start + batch_size])
            try:
                raw = session.run(None, {input_name: batch})[0]
            except Exception as exc:  # ORT raises its own types for shape and type errors
                raise ImportRefused(
                    f"{onnx_file.name} failed on a batch of {split} ({exc})"
                ) from exc
            if raw.ndim != 2 or raw.shape[1] != len(classes):
                raise ImportRefused(
                    f"{onnx_file.name} returned shape {raw.shape}; expected (batch, {len(classes)})"
                )
            batch_probs = as_probabilities(raw, outputs)
            if not np.isfinite(batch_probs).all():
                raise ImportRefused(
                    f"{onnx_file.name} returned NaN or infinite outputs on {split} cells "
                    f"{start}-{start + len(batch) - 1}; nothing was written"
                )
            probs.append(batch_probs)
        predictions[split] = Predictions(
            ids=arrays.ids, labels=arrays.labels, probs=np.concatenate(probs), class_names=classes
        )
    digest = sha256_of(onnx_file)
    size_mb = onnx_file.stat().st_size / 2**20
    kept = ""
    if size_mb > MAX_SHIPPED_MB:
        local = runs_root() / f"{dataset}-{size}" / name / ONNX_FILE
        local.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(onnx_file, local)
        kept = str(local)
    card = _card(
        dataset=dataset,
        size=size,
        name=name,
        description=data.description,
        predictions=predictions,
        command=command
        or f"python -m bloodviz import-onnx {onnx_file.name} --dataset "
        f"{dataset} --size {size} --name {name}",
        imported={
            "kind": "onnx",
            "file": onnx_file.name,
            "sha256": digest,
            "bytes": onnx_file.stat().st_size,
            "outputs": outputs,
            "kept_at": kept,
        },
        weights_not_shipped="an imported ONNX model: no PyTorch weights, so no gradients "
        "(Grad-CAM); ONNX Runtime runs it for uploads"
        + (
            f"; its {size_mb:.0f} MB file is over the {MAX_SHIPPED_MB} MB limit, kept at {kept}"
            if kept
            else ""
        ),
    )

    def keep_file(folder: Path) -> None:
        if not kept:
            shutil.copyfile(onnx_file, folder / ONNX_FILE)

    return _write_locked(
        name,
        dataset,
        size,
        checkpoints,
        overwrite,
        run=card,
        preprocessing=prep,
        predictions=predictions,
        extra_files=keep_file,
    )


def imported_onnx_file(ckpt) -> Path | None:
    """An imported ONNX checkpoint's model file (in the folder, or kept under ``runs/``)."""
    imported = ckpt.run.imported
    if imported.get("kind") != "onnx":
        return None
    kept = imported.get("kept_at")  # set where the file was over the per-file limit
    candidates = [ckpt.path / ONNX_FILE] + ([Path(kept)] if kept else [])
    return next((path for path in candidates if path.is_file()), None)
