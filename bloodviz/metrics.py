"""Classification metrics as small pure functions over arrays.

``y_true``: integer labels, shape (N,). ``probs``: class probabilities, shape (N, K).
Implemented on the confusion matrix with numpy so that bootstrap intervals (a thousand
re-evaluations) stay fast; the test suite checks each against scikit-learn.
"""

from __future__ import annotations

import numpy as np


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """Rows are true classes, columns predicted classes (scikit-learn's convention)."""
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    flat = np.bincount(y_true * num_classes + y_pred, minlength=num_classes * num_classes)
    return flat.reshape(num_classes, num_classes)


def accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    y_true = np.asarray(y_true)
    return float(np.mean(y_true == np.asarray(y_pred))) if len(y_true) else float("nan")


def precision_recall_f1(cm: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per-class precision, recall, F1 and support; 0 where undefined (scikit-learn's default)."""
    tp = np.diag(cm).astype(float)
    predicted = cm.sum(axis=0).astype(float)
    support = cm.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(predicted > 0, tp / predicted, 0.0)
        recall = np.where(support > 0, tp / support, 0.0)
        denom = precision + recall
        f1 = np.where(denom > 0, 2 * precision * recall / denom, 0.0)
    return precision, recall, f1, support


def f1_scores(cm: np.ndarray) -> tuple[float, float]:
    """Macro and support-weighted F1 over the classes that occur in truth or prediction."""
    _, _, f1, support = precision_recall_f1(cm)
    present = (support > 0) | (cm.sum(axis=0) > 0)
    macro = float(f1[present].mean()) if present.any() else float("nan")
    weighted = float(np.sum(f1 * support) / support.sum()) if support.sum() else float("nan")
    return macro, weighted


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> float:
    return f1_scores(confusion_matrix(y_true, y_pred, num_classes))[0]


def binary_auc(positive: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve via the Mann-Whitney U statistic (ties count half)."""
    positive = np.asarray(positive, dtype=bool)
    n_pos = int(positive.sum())
    n_neg = len(positive) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    from scipy.stats import rankdata  # lazy: scipy.stats costs 0.9 s at import

    ranks = rankdata(scores)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def roc_auc_ovr(y_true: np.ndarray, probs: np.ndarray) -> tuple[float, np.ndarray]:
    """One-vs-rest ROC-AUC per class and their unweighted mean, as MedMNIST reports it."""
    y_true = np.asarray(y_true)
    per_class = np.array([binary_auc(y_true == k, probs[:, k]) for k in range(probs.shape[1])])
    valid = ~np.isnan(per_class)
    return (float(per_class[valid].mean()) if valid.any() else float("nan")), per_class


def screening_at_threshold(positive: np.ndarray, scores: np.ndarray, threshold: float) -> dict:
    """A two-class screen's figures when ``scores >= threshold`` calls a sample positive.

    ``positive``: truth (bool); ``scores``: the positive class's probability. Sensitivity is
    the share of positives caught, specificity the share of negatives cleared; PPV and NPV are
    the chance a positive / negative call is right (nan where nothing was called so).
    """
    positive = np.asarray(positive, dtype=bool)
    called = np.asarray(scores) >= threshold
    tp = int(np.sum(called & positive))
    fn = int(np.sum(~called & positive))
    fp = int(np.sum(called & ~positive))
    tn = int(np.sum(~called & ~positive))

    def ratio(a: int, b: int) -> float:
        return a / b if b else float("nan")

    return {
        "threshold": float(threshold),
        "tp": tp,
        "fn": fn,
        "fp": fp,
        "tn": tn,
        "sensitivity": ratio(tp, tp + fn),
        "specificity": ratio(tn, tn + fp),
        "ppv": ratio(tp, tp + fp),
        "npv": ratio(tn, tn + fn),
        "accuracy": ratio(tp + tn, len(positive)),
    }


def youden_threshold(positive: np.ndarray, scores: np.ndarray) -> float:
    """The threshold that maximises sensitivity + specificity - 1 (Youden's J); to be chosen
    on validation and applied to test, never chosen on test."""
    from sklearn.metrics import roc_curve  # lazy: the first page needs no scikit-learn

    fpr, tpr, thresholds = roc_curve(np.asarray(positive, dtype=bool), scores)
    best = int(np.argmax(tpr - fpr))
    return float(min(thresholds[best], 1.0))


def risk_coverage(correct: np.ndarray, trust: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Selective prediction: keeping the most trusted share ``coverage`` of the samples (by
    ``trust``, higher kept first), the accuracy of what is kept. Returns (coverage, accuracy),
    one point per sample count (ties in ``trust`` broken by order)."""
    correct = np.asarray(correct, dtype=np.float64)
    order = np.argsort(-np.asarray(trust, dtype=np.float64), kind="stable")
    kept = np.arange(1, len(correct) + 1)
    return kept / len(correct), np.cumsum(correct[order]) / kept


def reliability_bins(
    y_true: np.ndarray, probs: np.ndarray, n_bins: int = 15
) -> dict[str, np.ndarray]:
    """Top-label confidence binned into equal-width bins: counts, mean confidence, accuracy."""
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == np.asarray(y_true)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    # right-closed bins, (0, 1/n], ..., as in Guo et al. 2017
    index = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, n_bins - 1)
    counts = np.bincount(index, minlength=n_bins)
    conf_sum = np.bincount(index, weights=confidence, minlength=n_bins)
    correct_sum = np.bincount(index, weights=correct.astype(float), minlength=n_bins)
    with np.errstate(divide="ignore", invalid="ignore"):
        mean_conf = np.where(counts > 0, conf_sum / counts, np.nan)
        acc = np.where(counts > 0, correct_sum / counts, np.nan)
    return {"edges": edges, "counts": counts, "confidence": mean_conf, "accuracy": acc}


def expected_calibration_error(y_true: np.ndarray, probs: np.ndarray, n_bins: int = 15) -> float:
    """ECE: bin-weighted mean |accuracy - confidence| of the top label."""
    bins = reliability_bins(y_true, probs, n_bins)
    counts = bins["counts"]
    if counts.sum() == 0:
        return float("nan")
    gaps = np.abs(np.nan_to_num(bins["accuracy"]) - np.nan_to_num(bins["confidence"]))
    return float(np.sum(gaps * counts) / counts.sum())


def bootstrap_ci(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    num_classes: int,
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap intervals for accuracy and macro-F1 (resampling test samples)."""
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    n = len(y_true)
    rng = np.random.default_rng(seed)
    accs = np.empty(n_boot)
    f1s = np.empty(n_boot)
    for b in range(n_boot):
        idx = rng.integers(0, n, n)
        cm = confusion_matrix(y_true[idx], y_pred[idx], num_classes)
        accs[b] = np.trace(cm) / n
        f1s[b] = f1_scores(cm)[0]
    lo, hi = (1 - level) / 2 * 100, (1 + level) / 2 * 100
    return {
        "accuracy": (float(np.percentile(accs, lo)), float(np.percentile(accs, hi))),
        "macro_f1": (float(np.percentile(f1s, lo)), float(np.percentile(f1s, hi))),
    }


def grouped_accuracy_ci(
    correct: np.ndarray,
    groups: np.ndarray,
    *,
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval for accuracy resampling whole groups (e.g. the source
    cell that several augmented test images were cut from), not single images: the interval
    an evaluation set of a few sources, each copied many times, really supports."""
    correct = np.asarray(correct, dtype=np.float64)
    _, group_index = np.unique(np.asarray(groups), return_inverse=True)
    hits = np.bincount(group_index, weights=correct)
    sizes = np.bincount(group_index).astype(np.float64)
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(sizes), (n_boot, len(sizes)))
    accs = hits[picks].sum(axis=1) / sizes[picks].sum(axis=1)
    lo, hi = (1 - level) / 2 * 100, (1 + level) / 2 * 100
    return float(np.percentile(accs, lo)), float(np.percentile(accs, hi))


def classification_summary(
    y_true: np.ndarray,
    probs: np.ndarray,
    class_names: list[str] | tuple[str, ...],
    n_boot: int = 1000,
    seed: int = 0,
) -> dict:
    """Everything the report pages show, as one JSON-able dict."""
    y_true = np.asarray(y_true, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    k = len(class_names)
    y_pred = probs.argmax(axis=1)
    cm = confusion_matrix(y_true, y_pred, k)
    precision, recall, f1, support = precision_recall_f1(cm)
    macro, weighted = f1_scores(cm)
    auc, auc_per_class = roc_auc_ovr(y_true, probs)
    ci = bootstrap_ci(y_true, y_pred, k, n_boot=n_boot, seed=seed)
    return {
        "n": int(len(y_true)),
        "accuracy": accuracy(y_true, y_pred),
        "accuracy_ci95": list(ci["accuracy"]),
        "macro_f1": macro,
        "macro_f1_ci95": list(ci["macro_f1"]),
        "weighted_f1": weighted,
        "auc_ovr": auc,
        "ece": expected_calibration_error(y_true, probs),
        "per_class": {
            name: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
                "auc": float(auc_per_class[i]),
            }
            for i, name in enumerate(class_names)
        },
        "confusion_matrix": cm.tolist(),
        "class_names": list(class_names),
    }


def summarise(predictions: dict, seed: int = 0) -> dict:
    """A checkpoint's ``metrics.json``: one :func:`classification_summary` per split of
    ``predictions`` (split -> :class:`bloodviz.checkpoints.Predictions`)."""
    return {
        split: classification_summary(p.labels, p.probs, p.class_names, seed=seed)
        for split, p in predictions.items()
    }
