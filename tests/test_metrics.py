import numpy as np
import pytest
from sklearn import metrics as skm

from bloodviz import metrics as bm


@pytest.fixture(params=[0, 1, 2])
def arrays(request):
    rng = np.random.default_rng(request.param)
    n, k = 400, 6
    y_true = rng.integers(0, k, n)
    if request.param == 2:
        y_true[y_true == 5] = 4  # a class that never occurs in truth
    logits = rng.normal(size=(n, k))
    logits[np.arange(n), y_true] += rng.uniform(0, 3, n)
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return y_true, probs, k


def test_against_scikit_learn(arrays):
    y_true, probs, k = arrays
    y_pred = probs.argmax(1)
    labels = list(range(k))
    cm = bm.confusion_matrix(y_true, y_pred, k)
    assert np.array_equal(cm, skm.confusion_matrix(y_true, y_pred, labels=labels))
    assert bm.accuracy(y_true, y_pred) == pytest.approx(skm.accuracy_score(y_true, y_pred))
    p, r, f, s = bm.precision_recall_f1(cm)
    sp, sr, sf, ss = skm.precision_recall_fscore_support(
        y_true, y_pred, labels=labels, zero_division=0
    )
    assert np.allclose(p, sp) and np.allclose(r, sr) and np.allclose(f, sf)
    assert np.array_equal(s, ss)
    macro, weighted = bm.f1_scores(cm)
    present = sorted(set(y_true) | set(y_pred))
    assert macro == pytest.approx(skm.f1_score(y_true, y_pred, average="macro", labels=present))
    assert weighted == pytest.approx(skm.f1_score(y_true, y_pred, average="weighted"))
    auc, per_class = bm.roc_auc_ovr(y_true, probs)
    for c in range(k):
        if (y_true == c).any():
            assert per_class[c] == pytest.approx(skm.roc_auc_score(y_true == c, probs[:, c]))
        else:
            assert np.isnan(per_class[c])


def test_auc_with_ties_matches_scikit_learn():
    y = np.array([0, 1, 1, 0, 1, 0, 1])
    s = np.array([0.2, 0.2, 0.8, 0.5, 0.5, 0.1, 0.9])
    assert bm.binary_auc(y == 1, s) == pytest.approx(skm.roc_auc_score(y, s))


def test_ece_on_a_hand_computed_example():
    # two bins used: conf 0.9 (2 samples, 1 right) and conf 0.6 (2 samples, 2 right)
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.4, 0.6], [0.6, 0.4]])
    y_true = np.array([0, 1, 1, 0])
    expected = 0.5 * abs(0.5 - 0.9) + 0.5 * abs(1.0 - 0.6)
    assert bm.expected_calibration_error(y_true, probs) == pytest.approx(expected)
    perfect = np.eye(3)[[0, 1, 2, 1]]
    assert bm.expected_calibration_error(np.array([0, 1, 2, 1]), perfect) == 0.0


def test_bootstrap_interval_contains_estimate_and_is_seeded(arrays):
    y_true, probs, k = arrays
    y_pred = probs.argmax(1)
    ci = bm.bootstrap_ci(y_true, y_pred, k, n_boot=300, seed=5)
    acc = bm.accuracy(y_true, y_pred)
    assert ci["accuracy"][0] < acc < ci["accuracy"][1]
    assert 0.02 < ci["accuracy"][1] - ci["accuracy"][0] < 0.2
    assert ci == bm.bootstrap_ci(y_true, y_pred, k, n_boot=300, seed=5)


def test_summary_is_json_ready(arrays):
    import json

    y_true, probs, k = arrays
    names = [f"c{i}" for i in range(k)]
    summary = bm.classification_summary(y_true, probs, names, n_boot=50)
    json.dumps(summary)
    assert summary["n"] == len(y_true)
    assert sum(summary["per_class"][c]["support"] for c in names) == len(y_true)
