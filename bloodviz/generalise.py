"""Cross-dataset generalisation (#16, part 3): a white-cell model on the other lab's cells.

PBC (Barcelona, CellaVision) and Kaggle's blood-cells (BCCD smears) share four classes:
eosinophil, lymphocyte, monocyte, neutrophil. Each checkpoint of one is scored on the other's
cells of those classes:

- ``as-is``: the model's own call, whatever class it is (a PBC model may say "platelet");
- ``restricted``: the call among the four shared classes only.

Balanced accuracy (the mean of the per-class recalls) is the headline, since Kaggle's
TEST_SIMPLE is two-thirds neutrophils; plain accuracy is beside it, and the checkpoint's own
test split (same classes, same way) for comparison. Intervals: percentile bootstrap over cells
(for Kaggle TEST, whose images are augmentations of few source cells, they are too narrow; the
Data page shows by how much). Stored in the checkpoint folder as ``generalisation.json`` with
the command, hardware and versions that produced it.
"""

from __future__ import annotations

import json
import os
import time

import numpy as np

SHARED_CLASSES = ("eosinophil", "lymphocyte", "monocyte", "neutrophil")
OTHER_DATASET = {"pbc": "blood-cells", "blood-cells": "pbc"}
EVALUATED_SPLITS = {"blood-cells": ("test", "test_simple"), "pbc": ("test",)}
RESULT_FILE = "generalisation.json"
NO_CELL = "(no cell found)"
LOCALISED = "(localised)"
FIELDS_SET = f"BCCD fields {LOCALISED}"
RECALIBRATED = "(localised, recalibrated)"
# unlabelled cells of the other lab that a network's batch norm is re-estimated on: about what
# a user uploads from their own microscope (16 already gave most of the gain, 64 the most, for
# pbc-64 resnet50 on Kaggle's TEST_SIMPLE: README)
RECALIBRATION_CELLS = 64


def balanced_accuracy(y_true: np.ndarray, y_pred: np.ndarray, *, classes) -> float:
    """Mean recall over the ``classes`` present in ``y_true`` (labels as class names)."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    recalls = [np.mean(y_pred[y_true == c] == c) for c in classes if np.any(y_true == c)]
    return float(np.mean(recalls)) if recalls else float("nan")


def bootstrap_balanced(
    y_true: np.ndarray, y_pred: np.ndarray, *, classes, n_boot: int = 500, seed: int = 0
) -> tuple[float, float]:
    """95% percentile interval of :func:`balanced_accuracy`, resampling cells."""
    rng = np.random.default_rng(seed)
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    picks = rng.integers(0, len(y_true), (n_boot, len(y_true)))
    values = [balanced_accuracy(y_true[p], y_pred[p], classes=classes) for p in picks]
    return float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))


def _scores(truth, probs, class_names) -> dict:
    """As-is and restricted calls of ``probs`` against ``truth`` (class names)."""
    names = np.asarray(class_names)
    shared = np.array([c in SHARED_CLASSES for c in class_names])
    missed = np.isnan(probs).any(axis=1)  # a field where the localiser found no white cell
    probs = np.nan_to_num(probs, nan=0.0)
    as_is = np.where(missed, NO_CELL, names[probs.argmax(axis=1)])
    restricted = np.where(missed, NO_CELL, names[np.where(shared, probs, -np.inf).argmax(axis=1)])
    row = {"n": int(len(truth))}
    for label, calls in (("as_is", as_is), ("restricted", restricted)):
        row[f"balanced_{label}"] = balanced_accuracy(truth, calls, classes=SHARED_CLASSES)
        row[f"balanced_{label}_ci"] = bootstrap_balanced(truth, calls, classes=SHARED_CLASSES)
        row[f"accuracy_{label}"] = float(np.mean(calls == truth))
    return row


def _shared_part(names: tuple[str, ...], labels: np.ndarray) -> np.ndarray:
    return np.isin(np.asarray(names)[labels], SHARED_CLASSES)


def cross_dataset(
    ckpt, data_root=None, *, progress: bool = True, command: str = "", localised=None
) -> dict:
    """Score a white-cell checkpoint on the other dataset's shared-class cells (as the dataset
    frames them, and as whole images through the localiser), on the labelled BCCD smear fields,
    and on its own test split the same way; stored as ``generalisation.json`` and returned.
    ``localised``: :func:`localised_sets` already made for several checkpoints at once (else
    made here for this one)."""
    from tqdm.auto import tqdm

    from bloodviz.data import get_dataset
    from bloodviz.inference import hardware_info, versions
    from bloodviz.predict import Runner

    other = _other_dataset(ckpt)
    if not ckpt.has_weights:
        raise ValueError(f"{ckpt.name} ships predictions only: no network to run on new cells")
    tick = time.perf_counter()
    runner = Runner(ckpt)
    class_names = ckpt.preprocessing.class_names

    def probabilities(images: np.ndarray) -> np.ndarray:
        batches = range(0, len(images), 256)
        chunks = [
            runner.probs(images[i : i + 256])
            for i in tqdm(batches, desc=ckpt.name, disable=not progress, leave=False)
        ]
        return np.concatenate(chunks)

    result = {"model": ckpt.name, "dataset": ckpt.dataset_key, "other": other, "sets": {}}
    own = get_dataset(ckpt.dataset, ckpt.size, data_root)
    own_names = own.class_names
    split = ckpt.default_split or "test"
    preds = ckpt.predictions(split)
    keep = _shared_part(own_names, preds.labels)
    truth = np.asarray(own_names)[preds.labels[keep]]
    result["sets"][f"{ckpt.dataset} {split} (own)"] = _scores(truth, preds.probs[keep], class_names)
    data = get_dataset(other, ckpt.size, data_root)
    for other_split in EVALUATED_SPLITS[other]:
        arrays = data.load_split(other_split, progress=progress)
        keep = _shared_part(data.class_names, arrays.labels)
        truth = np.asarray(data.class_names)[arrays.labels[keep]]
        probs = probabilities(arrays.images[keep])
        result["sets"][f"{other} {other_split}"] = _scores(truth, probs, class_names)
    if localised is None or any(
        ckpt.name not in p for name, (_, p) in localised.items() if RECALIBRATED not in name
    ):
        localised = localised_sets([ckpt], data_root, progress=progress)
    for name, (truth, probs) in localised.items():
        if ckpt.name in probs:  # a recalibrated set has the networks with batch norm only
            result["sets"][name] = _scores(truth, probs[ckpt.name], class_names)
    result.update(
        {
            "classes": list(SHARED_CLASSES),
            "recalibration": {  # how the "(localised, recalibrated)" sets were made
                "cells": RECALIBRATION_CELLS,
                "from": f"{other} train, seeded sample, labels unused",
            },
            # which training run these weights came from: a result never outlives them
            "run_finished_at": ckpt.run.finished_at,
            "backend": runner.backend,
            "command": command,
            "seconds": round(time.perf_counter() - tick, 1),
            "hardware": hardware_info(),
            "versions": versions(),
        }
    )
    path = ckpt.path / RESULT_FILE
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(result, indent=1) + "\n")
    os.replace(tmp, path)
    return result


def _other_dataset(ckpt) -> str:
    other = OTHER_DATASET.get(ckpt.dataset)
    if other is None:
        raise ValueError(
            f"{ckpt.dataset_key}: cross-dataset scores are for the white-cell sets "
            f"({', '.join(OTHER_DATASET)})"
        )
    return other


def localised_sets(ckpts, data_root=None, *, progress: bool = True) -> dict:
    """Set name -> (truth, {checkpoint name: probabilities}) for ``ckpts`` (all of one
    dataset): whole images, each one's white cell found and framed by the localiser as an
    upload would be (a row of NaN where none was found: a miss):

    - the other lab's test images of the shared classes, as their raw files, so the cell is cut
      at the share of the crop it takes in the checkpoint's own training cells;
    - the labelled BCCD smear fields of those classes. A blood-cells model saw crops of many of
      these fields in training, so it gets the unseen ones only;
    - the other lab's test images again, classified by each network with
      batch norm after re-estimating it (:mod:`bloodviz.recalibrate`) on
      :data:`RECALIBRATION_CELLS` cells found in a seeded sample of the other lab's training
      images, labels unused. (Kaggle's TRAIN and TEST are augmentations of a few hundred
      source cells, so those cells may be copies of test cells: only their mean and variance
      per channel is taken.)

    Sets whose images are not on this machine are left out."""
    from bloodviz.data import get_dataset
    from bloodviz.localise import field_calls, localised_probs
    from bloodviz.paths import DataNotFoundError, blood_cells_root

    other = _other_dataset(ckpts[0])
    sets = {}
    recalibrated = None
    try:
        data = get_dataset(other, ckpts[0].size, data_root)
        for split in EVALUATED_SPLITS[other]:
            entries = [
                (label, path)
                for _, label, path in data.entries(split)
                if path is not None and data.class_names[label] in SHARED_CLASSES
            ]
            truth = np.array([data.class_names[label] for label, _ in entries])
            paths = [path for _, path in entries]
            probs = localised_probs(ckpts, paths, progress=progress, desc=f"{other} {split}")
            sets[f"{other} {split} {LOCALISED}"] = (truth, probs)
            if recalibrated is None:
                recalibrated = _recalibrated_runners(ckpts, data)
            if recalibrated:
                probs = localised_probs(
                    [c for c in ckpts if c.name in recalibrated],
                    paths,
                    progress=progress,
                    desc=f"{other} {split}, recalibrated",
                    runners=recalibrated,
                )
                sets[f"{other} {split} {RECALIBRATED}"] = (truth, probs)
    except DataNotFoundError:
        pass
    try:
        fields = field_calls(ckpts, blood_cells_root(data_root), progress=progress)
    except DataNotFoundError:
        return sets
    keep = np.isin(fields.truth, SHARED_CLASSES)
    name = FIELDS_SET
    if ckpts[0].dataset == "blood-cells":  # it saw crops of many of these fields in training
        keep &= ~fields.seen
        name = f"{FIELDS_SET}, unseen"
    sets[name] = (fields.truth[keep], {n: p[keep] for n, p in fields.probs.items()})
    return sets


def _recalibrated_runners(ckpts, data) -> dict:
    """Checkpoint name -> runner recalibrated on the other lab's unlabelled training cells,
    for the checkpoints whose network has batch norm."""
    import random

    from bloodviz.predict import Runner, framed_cells
    from bloodviz.recalibrate import RecalibrationError

    paths = [
        path
        for _, label, path in data.entries("train")
        if path is not None and data.class_names[label] in SHARED_CLASSES
    ]
    random.Random(0).shuffle(paths)
    # a few more images than cells wanted: now and then one has no white cell found
    files = [(path.name, path.read_bytes()) for path in paths[: RECALIBRATION_CELLS * 5 // 4]]
    cells = framed_cells(files, ckpts, "field")
    runners = {}
    for ckpt in ckpts:
        try:
            runner = Runner(ckpt, backend="pytorch")
            runners[ckpt.name] = runner.recalibrate(cells[ckpt.name][:RECALIBRATION_CELLS])
        except RecalibrationError:
            continue  # no batch norm
    return runners


def stored(ckpt) -> dict | None:
    """A checkpoint's ``generalisation.json``, or None (also where it was measured on other
    weights than the checkpoint's own)."""
    path = ckpt.path / RESULT_FILE
    try:
        found = json.loads(path.read_text()) if path.exists() else None
    except (OSError, ValueError):
        return None
    if found and found.get("run_finished_at", ckpt.run.finished_at) != ckpt.run.finished_at:
        return None
    return found


def table_rows(results: list[dict]) -> list[dict]:
    """One flat row per checkpoint and evaluated set (for the page and the printout)."""
    rows = []
    for r in results:
        for name, s in r["sets"].items():
            rows.append(
                {
                    "dataset": r["dataset"],
                    "model": r["model"],
                    "evaluated on": name,
                    "n": s["n"],
                    "balanced (as-is)": s["balanced_as_is"],
                    "as-is 95% CI": "{:.3f}-{:.3f}".format(*s["balanced_as_is_ci"]),
                    "balanced (restricted)": s["balanced_restricted"],
                    "restricted 95% CI": "{:.3f}-{:.3f}".format(*s["balanced_restricted_ci"]),
                    "accuracy (as-is)": s["accuracy_as_is"],
                }
            )
    return rows


def format_table(results: list[dict]) -> str:
    lines = [
        f"{'dataset':15s} {'model':16s} {'evaluated on':26s} {'n':>5s} "
        f"{'balanced as-is [95% CI]':>27s} {'restricted [95% CI]':>27s} {'acc as-is':>9s}"
    ]
    for row in table_rows(results):
        lines.append(
            f"{row['dataset']:15s} {row['model']:16s} {row['evaluated on']:26s} {row['n']:5d} "
            f"{row['balanced (as-is)']:14.2%} [{row['as-is 95% CI']}] "
            f"{row['balanced (restricted)']:14.2%} [{row['restricted 95% CI']}] "
            f"{row['accuracy (as-is)']:9.2%}"
        )
    return "\n".join(lines)
