"""Ensembles of shipped checkpoints: averaged probabilities, members chosen on validation.

An ensemble is a virtual model: its predictions are the (optionally validation-accuracy
weighted) mean of its members' probabilities on the samples every member saw, its cost the
members' costs added up (they all run on each image). Members are chosen greedily on the
*validation* predictions (forward selection, Caruana et al. 2004, without replacement) and only
then reported on test: choosing on test would flatter it.

No torch: everything here works on the cached predictions.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from bloodviz.checkpoints import Checkpoint, Predictions
from bloodviz.compare import align_all, leaderboard, quality_fields

ENSEMBLE_NAME = "ensemble"
SUMMED_COSTS = ("latency_ms", "parameters", "mflops", "file_mb", "memory_mb")


def average(preds: Sequence[Predictions], weights: Sequence[float] | None = None) -> Predictions:
    """The ensemble's predictions: the weighted mean of the members' probabilities."""
    aligned = align_all(list(preds))
    w = np.ones(len(aligned)) if weights is None else np.asarray(weights, dtype=np.float64)
    if w.shape != (len(aligned),) or (w < 0).any() or w.sum() <= 0:
        raise ValueError("weights must be one non-negative number per member, not all zero")
    probs = np.tensordot(w / w.sum(), np.stack([p.probs for p in aligned]), axes=1)
    first = aligned[0]
    return Predictions(first.ids, first.labels, probs, first.class_names)


def validation_weights(members: Sequence[Checkpoint], split: str = "val") -> list[float]:
    """Each member's accuracy on ``split`` (the weights of a weighted ensemble)."""
    return [float(m.metrics()[split]["accuracy"]) for m in members]


def choose_members(
    candidates: Sequence[Checkpoint],
    *,
    split: str = "val",
    max_members: int = 5,
    within: float = 0.05,
    min_gain: int = 2,
) -> list[Checkpoint]:
    """Greedy forward selection on ``split``: start from the most accurate model, add the one
    that raises the ensemble's accuracy most, stop at ``max_members`` or when no candidate
    corrects at least ``min_gain`` more images.

    Only models within ``within`` of the best one's accuracy are candidates: averaging in a
    failed, near-uniform model shifts ties and can win a validation image or two by chance,
    which is noise, not a member anyone would deploy."""
    pool = [c for c in candidates if split in c.splits]
    if not pool:
        raise ValueError(f"no candidate has {split} predictions to choose members on")
    preds = {c.name: c.predictions(split) for c in pool}

    def correct(names: list[str]) -> int:
        mean = average([preds[n] for n in names])
        return int((mean.predicted == mean.labels).sum())

    alone = {n: correct([n]) for n in preds}
    top = max(alone.values())
    n_images = len(next(iter(preds.values())).ids)
    eligible = [n for n in preds if alone[n] >= top - within * n_images]
    chosen = [max(eligible, key=alone.get)]
    best = alone[chosen[0]]
    while len(chosen) < max_members:
        trials = {n: correct([*chosen, n]) for n in eligible if n not in chosen}
        if not trials:
            break
        name, value = max(trials.items(), key=lambda item: item[1])
        if value < best + min_gain:
            break
        chosen.append(name)
        best = value
    by_name = {c.name: c for c in pool}
    return [by_name[n] for n in chosen]


def summed_cost(rows) -> dict:
    """The ensemble's cost: its members' figures added up (None where any member lacks one)."""
    total = {}
    for column in SUMMED_COSTS:
        values = [row.get(column) for row in rows]
        known = [v for v in values if v is not None and not np.isnan(v)]
        total[column] = float(sum(known)) if len(known) == len(values) else None
    return total


def ensemble_label(members: Sequence[Checkpoint], weighted: bool = False) -> str:
    kind = "accuracy-weighted ensemble" if weighted else "ensemble"
    return f"{kind} of {', '.join(m.name for m in members)}"


def ensemble_predictions(
    members: Sequence[Checkpoint], split: str, *, weighted: bool = False
) -> Predictions:
    """The ensemble's predictions on ``split`` (weights: each member's validation accuracy)."""
    weights = validation_weights(members) if weighted else None
    return average([m.predictions(split) for m in members], weights)


def leaderboard_row(members: Sequence[Checkpoint], split: str, *, weighted: bool = False) -> dict:
    """The ensemble as one more leaderboard row: quality from its averaged predictions, cost
    the members' added up."""
    from bloodviz.metrics import classification_summary

    preds = ensemble_predictions(members, split, weighted=weighted)
    metrics = classification_summary(preds.labels, preds.probs, preds.class_names)
    member_rows = leaderboard(list(members), split).to_dict("records")
    costs = summed_cost(member_rows)
    return {
        "model": ENSEMBLE_NAME,
        "name": ensemble_label(members, weighted),
        "family": "ensemble",
        "study": "-",
        **quality_fields(metrics),
        "throughput_ips": None,
        **costs,
        "n": metrics["n"],
        "pretrained": "as its members",
        "epochs": None,
        "train_images": None,
        "weights": "its members'",
        "trained_on": "-",
        "whole_split": all(r.get("whole_split", True) for r in member_rows),
        "benchmarked": costs["latency_ms"] is not None,
        "path": "",
    }
