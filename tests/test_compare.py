"""Comparison functions against scikit-learn / scipy and hand-made cases."""

import numpy as np
import pytest
from helpers import train_tiny
from sklearn.metrics import average_precision_score, classification_report, roc_auc_score

from bloodviz.checkpoints import Predictions, list_checkpoints
from bloodviz.compare import (
    align,
    cell_samples,
    classification_report_table,
    disagreements,
    leaderboard,
    mcnemar,
    most_confused,
    pareto_front,
    per_class_deltas,
    pr_curves,
    roc_curves,
    studies_table,
)
from bloodviz.metrics import classification_summary

CLASSES = ("a", "b", "c")


def _random_predictions(seed: int, n: int = 300, ids=None) -> Predictions:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, n)
    logits = rng.normal(size=(n, 3)) + 2.5 * np.eye(3)[labels]
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    ids = np.array([f"s{i}" for i in range(n)]) if ids is None else ids
    return Predictions(ids, labels, probs, CLASSES)


def test_pareto_front_keeps_only_undominated_points():
    cost = np.array([1.0, 2.0, 3.0, 2.5, 10.0, np.nan])
    quality = np.array([0.80, 0.90, 0.95, 0.85, 0.95, 0.99])
    front = pareto_front(cost, quality)
    assert front.tolist() == [True, True, True, False, False, False]
    # higher-is-better costs (throughput) flip the comparison
    assert pareto_front(-cost[:5], quality[:5], lower_cost_better=False).tolist() == [
        True,
        True,
        True,
        False,
        False,
    ]


def test_mcnemar_counts_and_exact_p_value():
    truth = np.zeros(40, dtype=int)
    a = np.zeros(40, dtype=int)
    b = np.zeros(40, dtype=int)
    a[:10] = 1  # A wrong on 10 cells
    b[30:32] = 1  # B wrong on 2 others
    result = mcnemar(truth, a, b)
    assert (result["only_a_right"], result["only_b_right"]) == (2, 10)
    assert result["both_right"] == 28 and result["both_wrong"] == 0
    # exact two-sided binomial: 2 * P(X <= 2), X ~ Bin(12, 0.5)
    expected = 2 * sum(__import__("math").comb(12, k) for k in range(3)) / 2**12
    assert result["p_value"] == pytest.approx(expected)
    assert mcnemar(truth, a, a)["p_value"] == 1.0


def test_report_table_matches_scikit_learn():
    preds = _random_predictions(0)
    summary = classification_summary(preds.labels, preds.probs, CLASSES, n_boot=10)
    table = classification_report_table(summary).set_index("class")
    ref = classification_report(
        preds.labels, preds.predicted, target_names=CLASSES, output_dict=True, zero_division=0
    )
    for name in (*CLASSES, "macro avg", "weighted avg"):
        assert table.loc[name, "precision"] == pytest.approx(ref[name]["precision"])
        assert table.loc[name, "recall"] == pytest.approx(ref[name]["recall"])
        assert table.loc[name, "f1"] == pytest.approx(ref[name]["f1-score"])
        assert table.loc[name, "support"] == ref[name]["support"]


def test_curves_areas_match_scikit_learn():
    preds = _random_predictions(1)
    for k, (roc, pr) in enumerate(zip(roc_curves(preds), pr_curves(preds))):
        positive = preds.labels == k
        assert roc.area == pytest.approx(roc_auc_score(positive, preds.probs[:, k]))
        assert pr.area == pytest.approx(average_precision_score(positive, preds.probs[:, k]))


def test_confusion_cell_and_most_confused():
    preds = _random_predictions(2)
    cm = np.zeros((3, 3), dtype=int)
    np.add.at(cm, (preds.labels, preds.predicted), 1)
    true, pred = most_confused(cm)
    assert true != pred and cm[true, pred] == max(
        cm[i, j] for i in range(3) for j in range(3) if i != j
    )
    cell = cell_samples(preds, true, pred)
    assert len(cell) == cm[true, pred]
    assert cell["p_predicted"].is_monotonic_increasing


def test_align_and_disagreements_pair_samples_by_id():
    a = _random_predictions(3, n=50)
    b = _random_predictions(4, n=50)
    # give B the same truth, but in reverse order and missing five samples
    b = Predictions(a.ids[::-1][5:], a.labels[::-1][5:], b.probs[5:], CLASSES)
    pa, pb = align(a, b)
    assert len(pa.ids) == 45 and (pa.ids == pb.ids).all() and (pa.labels == pb.labels).all()
    table = disagreements(a, b)
    assert len(table) == int((pa.predicted != pb.predicted).sum())
    assert set(table["right"]) <= {"A", "B", "neither"}
    with pytest.raises(ValueError, match="share no"):
        align(a, Predictions(np.array(["zz"]), np.array([0]), np.ones((1, 3)) / 3, CLASSES))


def test_per_class_deltas():
    preds_a, preds_b = _random_predictions(5), _random_predictions(6)
    ma = classification_summary(preds_a.labels, preds_a.probs, CLASSES, n_boot=10)
    mb = classification_summary(preds_b.labels, preds_b.probs, CLASSES, n_boot=10)
    deltas = per_class_deltas(ma, mb, "recall")
    assert list(deltas["class"]) == list(CLASSES)
    assert np.allclose(deltas["delta"], deltas["b"] - deltas["a"])


@pytest.fixture(scope="module")
def two_models(tmp_path_factory):
    return train_tiny(
        tmp_path_factory, datasets=("pbc",), limit=4, models=("cnn_baseline", "cnn002_4layer")
    )[0]


@pytest.mark.slow
def test_leaderboard_and_studies_table_from_real_checkpoints(two_models):
    ckpts = list_checkpoints(two_models)
    board = leaderboard(ckpts, "test")
    assert set(board["model"]) == {"cnn_baseline", "cnn002_4layer"}
    assert board["accuracy"].is_monotonic_decreasing
    assert (board["accuracy_lo"] <= board["accuracy"]).all()
    assert (board["accuracy"] <= board["accuracy_hi"]).all()
    assert board["parameters"].tolist() == [
        next(c.run.parameters for c in ckpts if c.model == m) for m in board["model"]
    ]
    studies = studies_table(ckpts)
    row = studies[(studies["model"] == "cnn002_4layer") & (studies["metric"] == "accuracy")]
    assert row["reported"].item() == 88.78
    metrics = next(c for c in ckpts if c.model == "cnn002_4layer").metrics()["test"]
    assert row["bloodviz"].item() == pytest.approx(100 * metrics["accuracy"])
    assert row["bloodviz on"].item().startswith("pbc-64 / test")
    # a study's validation figure is never compared with a test split
    lenet = studies[(studies["model"] == "lenet5") & (studies["metric"] == "accuracy")]
    assert lenet["bloodviz"].isna().all() and lenet["reported on"].str.endswith("validation").all()


def test_like_for_like_flags_pretraining_and_cpu_budget_runs():
    from bloodviz.compare import _like_for_like
    from bloodviz.literature import Reported
    from bloodviz.runcard import RunCard

    identity = {"dataset": "pbc", "size": 64, "model": "resnet50"}
    budget = RunCard.from_dict(
        {
            **identity,
            "epochs_run": 2,
            "n_samples": {"train": 800},
            "config": {"train_limit_per_class": 100},
        }
    )
    full = RunCard.from_dict({**identity, "epochs_run": 15, "n_samples": {"train": 11366}})
    assert budget.training_summary == "2 ep on 800 train images (CPU-budget subset)"
    assert full.training_summary == "15 ep on 11,366 train images"
    imagenet = Reported("resnet50", "000", "accuracy", 88.55, "validation", pretrained=True)
    scratch = Reported("cnn002_3layer", "002", "accuracy", 88.07, "test")
    assert _like_for_like(scratch, 90.0, "from scratch", full.is_cpu_budget) == "yes"
    assert _like_for_like(imagenet, 50.0, "from scratch", budget.is_cpu_budget) == (
        "no: study ImageNet, ours from scratch; ours a CPU-budget run on a training subset"
    )
    assert _like_for_like(scratch, None, None) == ""


def test_quality_band_leaves_failed_runs_below_it():
    import bloodviz.compare as compare

    zoo = np.array([0.98, 0.975, 0.97, 0.965, 0.96, 0.955, 0.95, 0.94, 0.93, 0.27, 0.10])
    low, high = compare.quality_band(zoo)
    assert 0.27 < low < 0.93  # the failed runs fall below, every working model is inside
    assert high == pytest.approx(0.99)
    assert compare.quality_band([0.5, 0.6]) == pytest.approx((0.49, 0.61))
    assert compare.quality_band([np.nan]) == (0.0, 1.0)
    assert compare.quality_band([0.999, 1.0])[1] == pytest.approx(1.01)  # ceiling + pad


def test_filter_board_applies_every_filter():
    import pandas as pd

    import bloodviz.compare as compare

    board = pd.DataFrame(
        {
            "model": ["a", "b", "c", "d"],
            "study": ["002", "002", "003", "-"],
            "family": ["VGG", "CNN", "ResNet", "CNN"],
            "whole_split": [True, False, True, True],
            "accuracy": [0.97, 0.95, 0.80, 0.99],
        }
    )
    assert list(compare.filter_board(board)["model"]) == ["a", "b", "c", "d"]
    assert list(compare.filter_board(board, studies=["002"])["model"]) == ["a", "b"]
    assert list(compare.filter_board(board, families=["CNN"])["model"]) == ["b", "d"]
    assert list(compare.filter_board(board, whole_split_only=True)["model"]) == ["a", "c", "d"]
    assert list(compare.filter_board(board, min_accuracy=0.96)["model"]) == ["a", "d"]
    both = compare.filter_board(board, studies=["002"], whole_split_only=True)
    assert list(both["model"]) == ["a"]


def test_tradeoff_scatter_labels_the_front_and_the_chosen_only():
    import pandas as pd

    from bloodviz.plots import tradeoff_scatter

    board = pd.DataFrame(
        {
            "model": ["cheap", "best", "dominated", "picked"],
            "name": ["cheap", "best", "dominated", "picked"],
            "family": ["CNN"] * 4,
            "latency_ms": [1.0, 10.0, 20.0, 30.0],
            "accuracy": [0.90, 0.98, 0.95, 0.94],
        }
    )
    fig = tradeoff_scatter(board, "latency_ms", "accuracy", labelled=["picked"])
    texts = [t for trace in fig.data if trace.mode == "text" for t in trace.text]
    assert sorted(texts) == ["best", "cheap", "picked"]
    assert "dominated" not in texts
    ranged = tradeoff_scatter(board, "latency_ms", "accuracy", quality_range=(0.93, 0.99))
    assert tuple(ranged.layout.yaxis.range) == (0.93, 0.99)
    # a log cost axis labels 1-2-5 steps in full (plotly's own would read "5 1 2 5 10 2")
    assert ranged.layout.xaxis.type == "log"
    assert list(ranged.layout.xaxis.ticktext) == ["1", "2", "5", "10", "20", "50"]


def test_log_ticks_cover_the_values_in_1_2_5_steps():
    from bloodviz.plots import _short_number, log_ticks

    assert log_ticks(np.array([0.6, 3.0, 95.0, np.nan])) == [0.5, 1, 2, 5, 10, 20, 50, 100]
    assert log_ticks(np.array([0.0, -1.0])) == []
    assert [_short_number(v) for v in (2e5, 1e6, 5e9, 0.5)] == ["200k", "1M", "5G", "0.5"]


def test_seed_spread_summarises_the_runs_that_differ_only_in_their_seed():
    import pandas as pd

    import bloodviz.compare as compare

    board = pd.DataFrame(
        {
            "model": ["a", "a-seed1", "a-seed2", "b"],
            "replicate_of": ["a", "a", "a", "b"],
            "seed": [0, 1, 2, 0],
            "accuracy": [0.90, 0.92, 0.94, 0.80],
            "macro_f1": [0.80, 0.80, 0.86, 0.70],
        }
    )
    spread = compare.with_seed_spread(board)
    assert list(spread["seeds"]) == [3, 3, 3, 1]
    assert spread["accuracy_seed_mean"].iloc[0] == pytest.approx(0.92)
    assert spread["accuracy_seed_sd"].iloc[0] == pytest.approx(0.02)  # sample sd, ddof 1
    assert spread["macro_f1_seed_mean"].iloc[1] == pytest.approx(0.82)
    assert pd.isna(spread["accuracy_seed_sd"].iloc[3])
    assert list(spread["replica"]) == [False, True, True, False]
    assert compare.seed_summary(spread.iloc[0]) == "0.9200 ± 0.0200 (3 seeds)"
    assert compare.seed_summary(spread.iloc[3]) == "one seed"
    spread["whole_split"], spread["study"], spread["family"] = True, "-", "CNN"
    assert list(compare.filter_board(spread)["model"]) == ["a", "b"]
    assert len(compare.filter_board(spread, every_seed=True)) == 4
