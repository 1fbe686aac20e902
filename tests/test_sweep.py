"""Sweeps as Ray tasks on a local Ray instance, on real images."""

import pytest

from bloodviz.checkpoints import open_checkpoint
from bloodviz.sweep import plan, sweep

MODELS = ["cnn_baseline", "cnn002_4layer"]
SETTINGS = {"epochs": 1, "limit_per_class": 4, "batch_size": 16}

pytestmark = [pytest.mark.slow, pytest.mark.train]


def test_a_sweep_on_local_ray_trains_each_model_as_a_task_and_resumes(
    tmp_path, monkeypatch, data_root
):
    pytest.importorskip("ray")
    store = tmp_path / "ck"
    monkeypatch.setenv("BLOODVIZ_RUNS", str(tmp_path / "runs"))
    # resnet50_svm needs a resnet50 checkpoint in this store first: an expected failure that
    # is reported while the other tasks land
    outcome = sweep(
        "pbc",
        [*MODELS, "resnet50_svm"],
        size=64,
        data_root=str(data_root),
        checkpoints=store,
        workers=2,
        **SETTINGS,
    )
    assert {m: outcome[m] for m in MODELS} == {m: "trained" for m in MODELS}
    assert outcome["resnet50_svm"].startswith("failed: resnet50_svm takes its features")
    for model in MODELS:
        ckpt = open_checkpoint(store / "pbc-64" / model)  # written whole into the driver's store
        assert ckpt.has_weights and ckpt.run.n_samples["test"] == 32
        assert ckpt.predictions("test").probs.shape == (32, 8)
    # a repeated (or interrupted) sweep skips what is done, without starting Ray at all
    todo, current = plan("pbc", MODELS, size=64, checkpoints=store, **SETTINGS)
    assert todo == [] and sorted(current) == sorted(MODELS)
    again = sweep(
        "pbc", MODELS, size=64, data_root=str(data_root), checkpoints=store, workers=2, **SETTINGS
    )
    assert again == {m: "up to date" for m in MODELS}


def test_seeds_train_beside_each_other_and_the_leaderboard_shows_their_spread(
    tmp_path, monkeypatch, data_root
):
    """``--seeds 0 1``: seed 0 keeps the plain name, seed 1 lands as ``<model>-seed1``; the
    leaderboard keeps one row with the spread of both, model lists offer one of them."""
    import statistics

    from bloodviz.checkpoints import list_checkpoints, seed_representatives
    from bloodviz.compare import filter_board, leaderboard, seed_summary
    from bloodviz.zoo import format_zoo, zoo_rows

    store = tmp_path / "ck"
    monkeypatch.setenv("BLOODVIZ_RUNS", str(tmp_path / "runs"))
    outcome = sweep(
        "pbc",
        ["cnn_baseline"],
        size=64,
        data_root=str(data_root),
        checkpoints=store,
        seeds=[0, 1],
        **SETTINGS,
    )
    assert outcome == {"cnn_baseline": "trained", "cnn_baseline-seed1": "trained"}
    ckpts = list_checkpoints(store)
    assert sorted((c.name, c.seed, c.replicate_of) for c in ckpts) == [
        ("cnn_baseline", 0, "cnn_baseline"),
        ("cnn_baseline-seed1", 1, "cnn_baseline"),
    ]
    assert [c.name for c in seed_representatives(ckpts)] == ["cnn_baseline"]
    assert [c.name for c in list_checkpoints(store, every_seed=False)] == ["cnn_baseline"]
    # the two seeds really are two runs: different weights, so (almost surely) other numbers
    accuracies = [c.metrics()["test"]["accuracy"] for c in sorted(ckpts, key=lambda c: c.seed)]
    board = leaderboard(ckpts, "test")
    one = filter_board(board)
    assert list(one["model"]) == ["cnn_baseline"] and one["seeds"].iloc[0] == 2
    assert one["accuracy_seed_mean"].iloc[0] == pytest.approx(statistics.mean(accuracies))
    assert one["accuracy_seed_sd"].iloc[0] == pytest.approx(statistics.stdev(accuracies))
    assert seed_summary(one.iloc[0]).endswith("(2 seeds)")
    assert sorted(filter_board(board, every_seed=True)["model"]) == [
        "cnn_baseline",
        "cnn_baseline-seed1",
    ]
    assert "over 2 seeds]" in format_zoo(zoo_rows(store))
    # up to date: a second sweep trains neither seed again
    todo, current = plan("pbc", ["cnn_baseline"], 64, store, [0, 1], **SETTINGS)
    assert todo == [] and sorted(current) == ["cnn_baseline", "cnn_baseline-seed1"]
    # the dashboard: the sidebar offers the model once; the leaderboard has one row with the
    # spread, and every seed's row when asked
    from helpers import app_test

    app = app_test(monkeypatch, store).run()
    assert not app.exception
    models = next(m for m in app.sidebar.multiselect if m.label == "Models")
    assert list(models.options) == ["cnn_baseline"]
    table = app.dataframe[0].value
    assert len(table) == 1 and table["over_seeds"].iloc[0].endswith("(2 seeds)")
    app.toggle(key="lb_seeds").set_value(True).run()
    assert not app.exception
    assert sorted(app.dataframe[0].value["name"]) == [
        "Baseline CNN (4 conv + BN)",
        "Baseline CNN (4 conv + BN) (seed 1)",
    ]
