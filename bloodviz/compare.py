"""Comparisons the dashboard shows, as pure functions of checkpoints and their predictions.

Nothing here trains or evaluates a split: every figure comes from a checkpoint's cached
predictions, metrics and benchmark results.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from bloodviz.checkpoints import Checkpoint, Predictions
from bloodviz.literature import REPORTED, reported_for, study_of
from bloodviz.runcard import pretrained_label

# name in the leaderboard -> (label, higher is better, fits a log axis)
COST_COLUMNS = {
    "latency_ms": ("latency, batch 1 (ms)", False, True),
    "throughput_ips": ("throughput, batch 64 (img/s)", True, True),
    "parameters": ("parameters", False, True),
    "mflops": ("MFLOPs per image", False, True),
    "file_mb": ("checkpoint file (MB)", False, True),
    "memory_mb": ("inference memory over baseline (MB)", False, True),
}
QUALITY_COLUMNS = {
    "accuracy": "accuracy",
    "macro_f1": "macro F1",
    "auc": "ROC-AUC (OvR)",
    "ece": "ECE (lower is better)",
}


def quality_fields(metrics: dict) -> dict:
    """A leaderboard row's quality columns from one split's ``metrics.json`` entry.

    A two-class dataset (a screen) adds sensitivity and specificity at argmax (threshold 0.5),
    its first class being the positive one (malaria's ``parasitized``)."""
    screen = {}
    if len(per_class := metrics.get("per_class", {})) == 2:
        positive, negative = per_class.values()
        screen = {"sensitivity": positive["recall"], "specificity": negative["recall"]}
    return {
        "accuracy": metrics["accuracy"],
        "accuracy_lo": metrics["accuracy_ci95"][0],
        "accuracy_hi": metrics["accuracy_ci95"][1],
        "macro_f1": metrics["macro_f1"],
        "macro_f1_lo": metrics["macro_f1_ci95"][0],
        "macro_f1_hi": metrics["macro_f1_ci95"][1],
        "auc": metrics["auc_ovr"],
        "ece": metrics["ece"],
        **screen,
    }


def leaderboard(ckpts: list[Checkpoint], split: str = "test") -> pd.DataFrame:
    """One row per checkpoint: quality on ``split`` with 95% intervals, then cost figures."""
    rows = []
    for ckpt in ckpts:
        metrics = ckpt.metrics().get(split)
        if metrics is None:
            continue
        bench = ckpt.bench() or {}
        run = ckpt.run
        weights = ckpt.path / "model.safetensors"
        rows.append(
            {
                "model": ckpt.name,
                "seed": ckpt.seed,
                "replicate_of": ckpt.replicate_of,
                "name": (run.display_name or ckpt.model)
                + (f" (seed {ckpt.seed})" if ckpt.seed else ""),
                "family": run.family or "other",
                "study": study.id if (study := study_of(ckpt.model)) else "-",
                **quality_fields(metrics),
                "latency_ms": _get(bench, "latency_b1_ms", "median_ms"),
                "throughput_ips": _get(bench, "throughput_b64_ips", "median"),
                "parameters": run.parameters or bench.get("parameters"),
                "mflops": bench["flops"] / 1e6 if bench.get("flops") else None,
                "file_mb": (
                    weights.stat().st_size / 2**20
                    if weights.exists()
                    else (bench.get("checkpoint_file_bytes") or 0) / 2**20 or None
                ),
                "memory_mb": _get(bench, "memory_mb", "infer_over_baseline"),
                "n": metrics["n"],
                "pretrained": run.pretrained_label,
                "epochs": run.epochs_run,
                "train_images": run.train_images,
                "weights": _weights_label(ckpt),
                "trained_on": run.trained_on,
                "whole_split": not run.is_cpu_budget,
                "benchmarked": bool(bench),
                "path": str(ckpt.path),
            }
        )
    frame = pd.DataFrame(rows)
    if not frame.empty:
        frame = with_seed_spread(frame).sort_values("accuracy", ascending=False, ignore_index=True)
    return frame


def with_seed_spread(board: pd.DataFrame) -> pd.DataFrame:
    """``board`` with, on each row, the spread of the runs that differ from it only in their
    seed (rows sharing ``replicate_of``): ``seeds`` (how many), the mean and the sample
    standard deviation of their accuracy and macro-F1 (NaN for a single run), and ``replica``,
    True on every row but the lowest seed's."""
    groups = board.groupby("replicate_of")
    spread = {"seeds": groups["accuracy"].transform("size")}
    for column in ("accuracy", "macro_f1"):
        spread[f"{column}_seed_mean"] = groups[column].transform("mean")
        spread[f"{column}_seed_sd"] = groups[column].transform("std")  # ddof 1: NaN for one
    spread["replica"] = board["seed"] != groups["seed"].transform("min")
    return board.assign(**spread)


def seed_summary(row) -> str:
    """A leaderboard row's accuracy over its seeds, as the table shows it."""
    if pd.isna(row.seeds):  # a row not from one checkpoint: the ensemble
        return ""
    if row.seeds < 2:
        return "one seed"
    return f"{row.accuracy_seed_mean:.4f} ± {row.accuracy_seed_sd:.4f} ({row.seeds} seeds)"


def _weights_label(ckpt: Checkpoint) -> str:
    kind = ckpt.run.imported.get("kind")
    if kind:
        return {"onnx": "imported ONNX", "predictions": "imported predictions"}.get(kind, kind)
    return "predictions only" if ckpt.predictions_only_reason else "shipped"


def filter_board(
    board: pd.DataFrame,
    *,
    studies: list[str] | None = None,
    families: list[str] | None = None,
    whole_split_only: bool = False,
    min_accuracy: float = 0.0,
    every_seed: bool = False,
) -> pd.DataFrame:
    """The leaderboard's rows that pass every given filter (``None`` lets everything pass);
    one row per set of seeds (its lowest seed, carrying their spread) unless ``every_seed``."""
    keep = board["accuracy"] >= min_accuracy
    if not every_seed and "replica" in board:
        keep &= ~board["replica"].astype(bool)
    if studies is not None:
        keep &= board["study"].isin(studies)
    if families is not None:
        keep &= board["family"].isin(families)
    if whole_split_only:
        keep &= board["whole_split"].astype(bool)
    return board[keep].reset_index(drop=True)


def quality_band(
    values, *, whisker: float = 1.0, pad: float = 0.01, ceiling: float = 1.0
) -> tuple[float, float]:
    """The range of a quality axis where models differ.

    From the lower quartile minus ``whisker`` interquartile ranges (never below the worst
    model) up to the best model, padded by ``pad``: a few failed runs far below then stop
    squeezing the informative band into one line. ``ceiling`` caps the top (accuracy, F1)."""
    values = np.asarray(values, dtype=float)
    values = values[~np.isnan(values)]
    if len(values) == 0:
        return 0.0, ceiling
    q1, q3 = np.quantile(values, [0.25, 0.75])
    low = max(values.min(), q1 - whisker * (q3 - q1)) - pad
    high = min(ceiling + pad, values.max() + pad)
    return float(max(low, 0.0)), float(high)


def _get(data: dict, *keys):
    for key in keys:
        if not isinstance(data, dict) or key not in data:
            return None
        data = data[key]
    return data


def pareto_front(
    cost: np.ndarray, quality: np.ndarray, lower_cost_better: bool = True
) -> np.ndarray:
    """Mask of points no other point beats on both axes (quality always higher-is-better)."""
    cost = np.asarray(cost, dtype=float)
    quality = np.asarray(quality, dtype=float)
    if not lower_cost_better:
        cost = -cost
    valid = ~(np.isnan(cost) | np.isnan(quality))
    front = np.zeros(len(cost), dtype=bool)
    for i in np.flatnonzero(valid):
        others = valid.copy()
        others[i] = False
        dominated = (
            (cost[others] <= cost[i])
            & (quality[others] >= quality[i])
            & ((cost[others] < cost[i]) | (quality[others] > quality[i]))
        )
        front[i] = not dominated.any()
    return front


def classification_report_table(metrics: dict) -> pd.DataFrame:
    """scikit-learn's classification report as a frame, plus per-class AUC."""
    rows = [
        {"class": name, **{k: v for k, v in m.items()}} for name, m in metrics["per_class"].items()
    ]
    frame = pd.DataFrame(rows)[["class", "precision", "recall", "f1", "support", "auc"]]
    total = int(frame["support"].sum())
    macro = frame[["precision", "recall", "f1", "auc"]].mean()
    weights = frame["support"] / total
    weighted = frame[["precision", "recall", "f1", "auc"]].mul(weights, axis=0).sum()
    summary = pd.DataFrame(
        [
            {"class": "macro avg", **macro.to_dict(), "support": total},
            {"class": "weighted avg", **weighted.to_dict(), "support": total},
        ]
    )
    return pd.concat([frame, summary], ignore_index=True)


def normalise_rows(cm: np.ndarray) -> np.ndarray:
    """Each true-class row divided by its count (recall on the diagonal)."""
    cm = np.asarray(cm, dtype=float)
    totals = cm.sum(axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(totals > 0, cm / totals, 0.0)


def most_confused(cm: np.ndarray) -> tuple[int, int]:
    """(true, predicted) of the largest off-diagonal cell; (0, 0) when there is none."""
    off = np.asarray(cm, dtype=float).copy()
    np.fill_diagonal(off, -1)
    if off.max() <= 0:
        return 0, 0
    true, pred = np.unravel_index(int(off.argmax()), off.shape)
    return int(true), int(pred)


def cell_samples(preds: Predictions, true: int, predicted: int) -> pd.DataFrame:
    """The samples behind one confusion-matrix cell, least confident first."""
    mask = (preds.labels == true) & (preds.predicted == predicted)
    frame = pd.DataFrame(
        {
            "sample_id": preds.ids[mask],
            "p_predicted": preds.probs[mask, predicted],
            "p_true": preds.probs[mask, true],
        }
    )
    return frame.sort_values("p_predicted", ignore_index=True)


def filter_cells(
    preds: Predictions,
    *,
    true: int | None = None,
    predicted: int | None = None,
    outcome: str = "any",
    confidence: tuple[float, float] = (0.0, 1.0),
) -> np.ndarray:
    """Sample ids whose true class, predicted class, outcome ('any', 'correct',
    'misclassified') and top-class confidence (inclusive range) match."""
    if outcome not in ("any", "correct", "misclassified"):
        raise ValueError(f"outcome must be any, correct or misclassified, not {outcome!r}")
    top = preds.probs.max(1)
    mask = (top >= confidence[0]) & (top <= confidence[1])
    if true is not None:
        mask &= preds.labels == true
    if predicted is not None:
        mask &= preds.predicted == predicted
    if outcome != "any":
        mask &= (preds.predicted == preds.labels) == (outcome == "correct")
    return preds.ids[mask]


@dataclass
class Curve:
    name: str
    x: np.ndarray
    y: np.ndarray
    area: float


def roc_curves(preds: Predictions) -> list[Curve]:
    """One-vs-rest ROC per class (scikit-learn), with the AUC of each."""
    from sklearn.metrics import roc_curve  # lazy, like scipy below: the first page needs neither

    curves = []
    for k, name in enumerate(preds.class_names):
        positive = preds.labels == k
        if positive.all() or not positive.any():
            continue
        fpr, tpr, _ = roc_curve(positive, preds.probs[:, k])
        curves.append(Curve(name, fpr, tpr, float(np.trapezoid(tpr, fpr))))
    return curves


def pr_curves(preds: Predictions) -> list[Curve]:
    """One-vs-rest precision-recall per class, with average precision (step-wise area)."""
    from sklearn.metrics import precision_recall_curve

    curves = []
    for k, name in enumerate(preds.class_names):
        positive = preds.labels == k
        if not positive.any():
            continue
        precision, recall, _ = precision_recall_curve(positive, preds.probs[:, k])
        ap = float(-np.sum(np.diff(recall) * precision[:-1]))
        curves.append(Curve(name, recall, precision, ap))
    return curves


def align_all(preds: list[Predictions]) -> list[Predictions]:
    """Every model's predictions on the samples all of them saw, in one order."""
    if not preds:
        raise ValueError("no predictions to align")
    if any(not np.array_equal(p.class_names, preds[0].class_names) for p in preds[1:]):
        raise ValueError("the models do not predict the same classes")
    shared = preds[0].ids
    for p in preds[1:]:
        shared = np.intersect1d(shared, p.ids)
    if len(shared) == 0:
        raise ValueError("the models share no evaluated sample")

    def take(p: Predictions) -> Predictions:
        order = {sid: i for i, sid in enumerate(p.ids)}
        idx = np.array([order[s] for s in shared])
        return Predictions(p.ids[idx], p.labels[idx], p.probs[idx], p.class_names)

    return [take(p) for p in preds]


def align(a: Predictions, b: Predictions) -> tuple[Predictions, Predictions]:
    """Both models' predictions on the samples they share, in the same order."""
    pa, pb = align_all([a, b])
    return pa, pb


def mcnemar(y_true: np.ndarray, pred_a: np.ndarray, pred_b: np.ndarray) -> dict:
    """McNemar's exact test on paired predictions: does one model err where the other doesn't
    more often than chance? ``b`` = only A right, ``c`` = only B right."""
    right_a = np.asarray(pred_a) == np.asarray(y_true)
    right_b = np.asarray(pred_b) == np.asarray(y_true)
    b = int(np.sum(right_a & ~right_b))
    c = int(np.sum(~right_a & right_b))
    from scipy.stats import binomtest  # 0.9 s to import: only head-to-head pays it

    p_value = 1.0 if b + c == 0 else float(binomtest(b, b + c, 0.5).pvalue)
    return {
        "n": int(len(right_a)),
        "both_right": int(np.sum(right_a & right_b)),
        "only_a_right": b,
        "only_b_right": c,
        "both_wrong": int(np.sum(~right_a & ~right_b)),
        "p_value": p_value,
    }


def per_class_deltas(metrics_a: dict, metrics_b: dict, metric: str = "f1") -> pd.DataFrame:
    """Per-class ``metric`` of A and B and B − A."""
    rows = []
    for name, a in metrics_a["per_class"].items():
        b = metrics_b["per_class"].get(name)
        if b is None:
            continue
        rows.append({"class": name, "a": a[metric], "b": b[metric], "delta": b[metric] - a[metric]})
    return pd.DataFrame(rows)


def disagreements(a: Predictions, b: Predictions) -> pd.DataFrame:
    """Aligned samples on which the two models predict different classes."""
    a, b = align(a, b)
    mask = a.predicted != b.predicted
    names = np.asarray(a.class_names)
    return pd.DataFrame(
        {
            "sample_id": a.ids[mask],
            "truth": names[a.labels[mask]],
            "a_predicts": names[a.predicted[mask]],
            "a_confidence": a.probs[mask].max(1),
            "b_predicts": names[b.predicted[mask]],
            "b_confidence": b.probs[mask].max(1),
            "right": np.where(
                a.predicted[mask] == a.labels[mask],
                "A",
                np.where(b.predicted[mask] == b.labels[mask], "B", "neither"),
            ),
        }
    )


def studies_table(ckpts: list[Checkpoint]) -> pd.DataFrame:
    """Every number a study reported beside ours on the closest like-for-like split.

    Our match for a reported figure is the checkpoint of the same model on the same kind of
    data (BloodMNIST numbers ↔ pbc; Kaggle numbers ↔ blood-cells; malaria ↔ malaria, split by
    patient) and the same split
    (a study's 'validation' is compared with our val split, never with test).
    """
    shipped: dict[str, list[Checkpoint]] = {}
    for ckpt in ckpts:
        shipped.setdefault(ckpt.model, []).append(ckpt)
    rows = []
    # the literature and the run cards are enough: no network (and no torch) is needed here
    for name in sorted({r.model for r in REPORTED}):
        display_name = next((c.run.display_name for c in shipped.get(name, [])), "") or name
        for reported in reported_for(name):
            target_dataset = reported.bloodviz_dataset
            target_split = {"validation": "val"}.get(reported.split, reported.split)
            ours = [c for c in shipped.get(name, []) if c.dataset == target_dataset]
            key = _metric_key(reported.metric)
            ours_value, ours_ci, pretrained, training, budget = None, None, None, "", False
            where = "not trained yet" if key else "we do not compute this figure"
            for ckpt in ours if key else []:
                m = ckpt.metrics().get(target_split)
                if m is None:
                    continue
                ours_value = 100 * m[key]
                lo, hi = m.get(f"{key}_ci95", (None, None))
                ours_ci = f"{100 * lo:.1f}–{100 * hi:.1f}" if lo is not None else ""
                where = f"{ckpt.dataset_key} / {target_split} (n={m['n']})"
                pretrained = ckpt.run.pretrained_label
                training = ckpt.run.training_summary
                budget = ckpt.run.is_cpu_budget
                break
            rows.append(
                {
                    "model": name,
                    "name": display_name,
                    "study": reported.study,
                    "metric": reported.metric,
                    "reported": reported.value,
                    "reported on": f"{reported.dataset} / {reported.split}",
                    "reported pretrained": pretrained_label(reported.pretrained),
                    "bloodviz": ours_value,
                    "bloodviz 95% CI": ours_ci,
                    "bloodviz on": where,
                    "bloodviz pretrained": pretrained,
                    "bloodviz training": training,
                    "difference": None if ours_value is None else ours_value - reported.value,
                    "like for like": _like_for_like(reported, ours_value, pretrained, budget),
                    "note": reported.note,
                }
            )
    return pd.DataFrame(rows)


def _like_for_like(reported, ours_value, ours_pretrained, cpu_budget: bool = False) -> str:
    if ours_value is None:
        return ""
    theirs = pretrained_label(reported.pretrained)
    gaps = []
    if theirs != ours_pretrained:
        gaps.append(f"study {theirs}, ours {ours_pretrained}")
    if cpu_budget:
        gaps.append("ours a CPU-budget run on a training subset")
    if reported.protocol_gap:
        gaps.append(reported.protocol_gap)
    return "no: " + "; ".join(gaps) if gaps else "yes"


def _metric_key(metric: str) -> str | None:
    # weighted F1 is what study 002 printed; our summaries carry it without an interval
    return {"accuracy": "accuracy", "f1_weighted": "weighted_f1", "macro_f1": "macro_f1"}.get(
        metric
    )


def split_leakage(
    ckpts: list[Checkpoint], *, grouped: str = "malaria", random: str = "malaria-cells"
) -> pd.DataFrame:
    """What a random split by cell hides: one row per model trained on both splits of the data.

    ``grouped``: the dataset split by patient; ``random``: the same cells split at random, whose
    ``test_seen`` holds new cells of patients it trained on and whose ``test`` is the grouped
    split's unseen patients. ``gap`` is what the random split's own test overstates: its
    accuracy on seen patients minus its accuracy on new ones.
    """
    by_key = {(c.dataset, c.size, c.name): c for c in ckpts}
    rows = []
    for (dataset, size, name), cell_split in sorted(by_key.items()):
        patient_split = by_key.get((grouped, size, name))
        if dataset != random or patient_split is None:
            continue
        seen = cell_split.metrics().get("test_seen")
        new = cell_split.metrics().get("test")
        honest = patient_split.metrics().get("test")
        if not (seen and new and honest):
            continue
        rows.append(
            {
                "model": name,
                "size": size,
                "random split, its own test (seen patients)": seen["accuracy"],
                "random split, new patients": new["accuracy"],
                "patient split, new patients": honest["accuracy"],
                "gap": seen["accuracy"] - new["accuracy"],
                "seen_ci": seen["accuracy_ci95"],
                "new_ci": new["accuracy_ci95"],
                "honest_ci": honest["accuracy_ci95"],
                "n_seen": seen["n"],
                "n_new": new["n"],
            }
        )
    return pd.DataFrame(rows)


def twin_effect(ckpts: list[Checkpoint], sources: dict[str, int] | None = None) -> pd.DataFrame:
    """One row per blood-cells checkpoint: accuracy on Kaggle's TEST, on ``test_dedup`` (its
    images whose source field has no TRAIN image) and on TEST_SIMPLE, with 95% intervals.
    ``gap`` is what the twins add: TEST minus ``test_dedup``. With ``sources`` (image ->
    source region), ``dedup_ci_by_source`` resamples source cells instead of images."""
    from bloodviz.metrics import grouped_accuracy_ci

    rows = []
    for ckpt in ckpts:
        metrics = ckpt.metrics()
        test, dedup = metrics.get("test"), metrics.get("test_dedup")
        if ckpt.dataset != "blood-cells" or not (test and dedup):
            continue
        simple = metrics.get("test_simple") or {}
        rows.append(
            {
                "model": ckpt.name,
                "size": ckpt.size,
                "test (all)": test["accuracy"],
                "test_dedup (no TRAIN twin)": dedup["accuracy"],
                "test_simple": simple.get("accuracy", float("nan")),
                "gap": test["accuracy"] - dedup["accuracy"],
                "test_ci": test["accuracy_ci95"],
                "dedup_ci": dedup["accuracy_ci95"],
                "simple_ci": simple.get("accuracy_ci95"),
                "n_test": test["n"],
                "n_dedup": dedup["n"],
            }
        )
        if sources:
            preds = ckpt.predictions("test_dedup")
            groups = np.asarray([sources.get(i, -1) for i in preds.ids])
            rows[-1]["n_sources"] = len(set(groups.tolist()))
            rows[-1]["dedup_ci_by_source"] = grouped_accuracy_ci(
                preds.predicted == preds.labels, groups, seed=ckpt.run.seed
            )
    frame = pd.DataFrame(rows)
    return frame.sort_values("test (all)", ascending=False, ignore_index=True) if rows else frame


def ood_table(ckpts: list[Checkpoint]) -> pd.DataFrame:
    """One row per checkpoint with a benchmarked OOD detector: the AUROC of its Mahalanobis
    score (and of the energy baseline) against each set, test cells as in-distribution."""
    from bloodviz.ood import read_card

    rows = []
    for ckpt in ckpts:
        card = read_card(ckpt)
        sets = (card.get("benchmark") or {}).get("sets") if card else None
        if not sets:
            continue
        row = {"model": ckpt.name, "threshold": card["threshold"]}
        for name, result in sets.items():
            row[name] = result["auroc_mahalanobis"]
        row["energy (mean AUROC)"] = float(np.mean([r["auroc_energy"] for r in sets.values()]))
        rows.append(row)
    return pd.DataFrame(rows)
