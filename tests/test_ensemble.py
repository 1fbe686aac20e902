"""Ensembles: averaged probabilities, members chosen on validation, costs added up."""

from dataclasses import dataclass

import numpy as np
import pytest

from bloodviz.checkpoints import Predictions, list_checkpoints
from bloodviz.compare import align_all, leaderboard
from bloodviz.ensemble import average, choose_members, leaderboard_row

CLASSES = ("a", "b")


def _preds(ids, labels, p_b) -> Predictions:
    p_b = np.asarray(p_b, dtype=float)
    return Predictions(np.asarray(ids), np.asarray(labels), np.c_[1 - p_b, p_b], CLASSES)


@dataclass
class FakeCheckpoint:
    name: str
    val: Predictions

    @property
    def splits(self):
        return ["val"]

    def predictions(self, split):
        return self.val


def test_average_aligns_by_sample_id_and_weights():
    first = _preds(["x", "y", "z"], [0, 1, 1], [0.2, 0.9, 0.4])
    second = _preds(["z", "y"], [1, 1], [0.8, 0.5])  # other order, one sample fewer
    mean = average([first, second])
    assert list(mean.ids) == ["y", "z"]
    assert mean.probs[:, 1] == pytest.approx([0.7, 0.6])
    weighted = average([first, second], weights=[3, 1])
    assert weighted.probs[:, 1] == pytest.approx([0.8, 0.5])
    assert np.allclose(weighted.probs.sum(1), 1)
    with pytest.raises(ValueError, match="one non-negative number per member"):
        average([first, second], weights=[1, -1])
    with pytest.raises(ValueError, match="share no evaluated sample"):
        align_all([first, _preds(["w"], [0], [0.1])])


def test_members_are_chosen_on_validation_and_failed_models_never_join():
    labels = np.array([0, 1] * 50)
    rng = np.random.default_rng(0)
    # two good models that err on different images, and one that gives up (0.5 everywhere)
    good = np.where(labels == 1, 0.9, 0.1)
    a = good.copy()
    a[:6] = 1 - a[:6]  # wrong on 0-5
    b = good.copy()
    b[6:12] = 1 - b[6:12]  # wrong on 6-11
    b[:6] = np.where(labels[:6] == 1, 0.99, 0.01)  # and very sure where A is wrong
    c = good.copy()
    c[12:20] = 1 - c[12:20]
    ids = [f"s{i}" for i in range(100)]
    pool = [
        FakeCheckpoint("a", _preds(ids, labels, a)),
        FakeCheckpoint("b", _preds(ids, labels, b)),
        FakeCheckpoint("c", _preds(ids, labels, c)),
        FakeCheckpoint("broken", _preds(ids, labels, 0.5 + rng.normal(0, 1e-3, 100))),
    ]
    chosen = [m.name for m in choose_members(pool, max_members=5)]
    assert chosen[0] == "a"  # the most accurate alone (ties: the first)
    assert "b" in chosen  # it corrects A's mistakes
    assert "broken" not in chosen
    assert [m.name for m in choose_members(pool, max_members=1)] == ["a"]


def test_leaderboard_row_adds_up_the_members_costs():
    ckpts = [c for c in list_checkpoints(dataset_key="pbc-64") if c.bench()][:3]
    row = leaderboard_row(ckpts, "test")
    members = leaderboard(ckpts, "test")
    assert row["latency_ms"] == pytest.approx(members["latency_ms"].sum())
    assert row["parameters"] == pytest.approx(members["parameters"].sum())
    assert row["n"] == 3248
    assert row["accuracy_lo"] <= row["accuracy"] <= row["accuracy_hi"]
    assert row["name"].startswith("ensemble of ")
