"""The comparison pages under AppTest, over real (tiny) checkpoints of two models per dataset."""

import pytest
from helpers import app_test, dataset_box, train_tiny

pytestmark = pytest.mark.slow

MODELS = ("cnn_baseline", "cnn002_4layer")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return train_tiny(tmp_path_factory, datasets=("pbc", "blood-cells"), limit=6, models=MODELS)[0]


def _open(monkeypatch, store, page=None, dataset="pbc-64"):
    app = app_test(monkeypatch, store).run()
    assert not app.exception
    dataset_box(app).set_value(dataset).run()
    if page:
        app.switch_page(page).run()
    assert not app.exception, app.exception
    return app


def _box(app, label):
    return next(s for s in app.selectbox if s.label == label)


def test_leaderboard_is_the_default_page_and_reacts(monkeypatch, store):
    app = _open(monkeypatch, store)
    assert app.title[0].value == "Leaderboard"
    table = app.dataframe[0].value
    assert len(table) == 2 and table["accuracy"].is_monotonic_decreasing
    # tiny checkpoints are not benchmarked: no latency, so the scatter explains itself
    assert not app.get("plotly_chart")  # no scatter; parallel coordinates wait for the switch
    assert any("latency" in i.value for i in app.info)
    app.toggle(key="lb_parcoords").set_value(True).run()
    assert len(app.get("plotly_chart")) == 1
    _box(app, "Cost").set_value("parameters").run()
    assert not app.exception
    charts = app.get("plotly_chart")
    assert len(charts) == 2 and "parameters" in charts[0].proto.spec
    _box(app, "Cost").set_value("file_mb").run()
    assert "checkpoint file (MB)" in app.get("plotly_chart")[0].proto.spec
    # the leaderboard shows the whole zoo; the sidebar's choice only when asked
    models = next(m for m in app.sidebar.multiselect if m.label == "Models")
    models.set_value(["cnn_baseline"]).run()
    assert len(app.dataframe[0].value) == 2
    app.toggle(key="lb_chosen").set_value(True).run()
    assert len(app.dataframe[0].value) == 1
    assert len(app.get("plotly_chart")) == 1  # the scatter; no parallel axes for one model
    app.toggle(key="lb_chosen").set_value(False).run()
    # the filters narrow it: a study, then a minimum accuracy no tiny model reaches
    app.multiselect(key="lb_study").set_value(["002"]).run()
    assert list(app.dataframe[0].value["name"]) == ["Basic CNN, 4 conv layers (study 002)"]
    app.multiselect(key="lb_study").set_value([]).run()
    app.slider(key="lb_min_acc").set_value(0.99).run()
    assert not app.exception
    assert any("No model passes these filters (2 before filtering)" in i.value for i in app.info)


def test_leaderboard_without_benchmarks_says_which_command(monkeypatch, store):
    app = _open(monkeypatch, store)
    assert any("python -m bloodviz bench" in c.value for c in app.caption)


def test_report_page_tables_charts_and_confusion_cell(monkeypatch, store):
    app = _open(monkeypatch, store, "app_pages/report.py")
    report = app.dataframe[0].value
    assert list(report["class"][-2:]) == ["macro avg", "weighted avg"]
    assert len(report) == 8 + 2
    # only the chosen tab runs: per-class bars; then the heatmap; ROC, PR and reliability; the
    # training history; the Trust tab's risk-coverage
    charts = {}
    for view in ("Per class", "Confusion matrix", "ROC / PR / calibration", "Training", "Trust"):
        app.query_params["report_view"] = view
        app.run()
        assert not app.exception
        charts[view] = len(app.get("plotly_chart"))
    assert list(charts.values()) == [1, 1, 3, 1, 1], charts
    app.query_params["report_view"] = "Confusion matrix"
    app.run()
    _box(app, "True class").set_value("basophil").run()
    _box(app, "Predicted class").set_value("basophil").run()
    assert not app.exception
    assert any("true class **basophil** predicted **basophil**" in m.value for m in app.markdown)
    _box(app, "Model").set_value("cnn002_4layer").run()
    assert not app.exception
    assert any("Basic CNN, 4 conv layers" in c.value for c in app.caption)
    app.toggle[0].set_value(True).run()  # normalised confusion matrix
    assert not app.exception


def test_head_to_head_runs_mcnemar_and_lists_disagreements(monkeypatch, store):
    app = _open(monkeypatch, store, "app_pages/head_to_head.py", dataset="blood-cells-64")
    metrics = {m.label: m.value for m in app.metric}
    assert "McNemar exact p" in metrics
    disagree = int(metrics["Cells they disagree on"])
    assert any("McNemar's exact test" in m.value for m in app.markdown)
    if disagree:
        assert len(app.dataframe[0].value) == disagree
    _box(app, "Split").set_value("test_simple").run()
    assert not app.exception
    assert any("test_simple cells both models saw" in m.value for m in app.markdown)


def test_head_to_head_needs_two_models(monkeypatch, store):
    app = _open(monkeypatch, store)
    next(m for m in app.sidebar.multiselect if m.label == "Models").set_value(["cnn_baseline"])
    app.run()
    app.switch_page("app_pages/head_to_head.py").run()
    assert not app.exception
    assert any("at least 2 model" in i.value for i in app.info)


def test_studies_page_compares_like_with_like(monkeypatch, store):
    app = _open(monkeypatch, store, "app_pages/studies.py")
    table = app.dataframe[0].value
    row = table[(table["model"] == "cnn002_4layer") & (table["metric"] == "accuracy")].iloc[0]
    assert row["reported"] == 88.78 and row["bloodviz on"].startswith("pbc-64 / test")
    studies = next(m for m in app.multiselect if m.label == "Studies")
    studies.set_value(["002"]).run()
    assert set(app.dataframe[0].value["study"]) == {"002"}
    app.toggle[0].set_value(True).run()
    assert app.dataframe[0].value["bloodviz"].notna().all()


def test_data_page_balance_and_gallery(monkeypatch, store):
    app = _open(monkeypatch, store, "app_pages/data.py")
    counts = app.dataframe[0].value
    assert counts.loc["total", "test"] > 3000  # the real PBC test split, not the tiny subset
    images = len(app.get("image"))
    assert images == 8 * 6
    next(s for s in app.slider if s.label == "Cells per class").set_value(3).run()
    assert len(app.get("image")) == 8 * 3


def test_a_checkpoint_rewritten_while_the_app_runs_is_read_afresh(monkeypatch, store, tmp_path):
    import json
    import os
    import shutil

    copy = tmp_path / "store"
    shutil.copytree(store, copy)
    app = _open(monkeypatch, copy)
    before = app.dataframe[0].value.set_index("name")["accuracy"]
    folder = copy / "pbc-64" / "cnn_baseline"
    metrics = json.loads((folder / "metrics.json").read_text())
    metrics["test"]["accuracy"] = 0.123  # stands in for a retrained model's new result
    (folder / "metrics.json").write_text(json.dumps(metrics))
    later = (folder / "run.json").stat().st_mtime_ns + 10**9
    os.utime(folder / "run.json", ns=(later, later))
    app.run()
    after = app.dataframe[0].value.set_index("name")["accuracy"]
    name = next(n for n in after.index if "Baseline" in n)
    assert before[name] != 0.123 and after[name] == 0.123


def test_a_predictions_only_checkpoint_is_compared_but_not_run(monkeypatch, store, tmp_path):
    """A model whose weights are too big to ship appears on the leaderboard with its metrics,
    and the Grad-CAM and upload pages leave it out with the reason instead of failing."""
    import json
    import shutil

    copy = tmp_path / "store"
    shutil.copytree(store, copy)
    folder = copy / "pbc-64" / "cnn002_4layer"
    (folder / "model.safetensors").unlink()
    run = json.loads((folder / "run.json").read_text())
    run["weights_not_shipped"] = "its fp16 weights are 109 MB, over the 50 MB per-file limit"
    (folder / "run.json").write_text(json.dumps(run))
    app = _open(monkeypatch, copy)
    table = app.dataframe[0].value.set_index("name")
    assert sorted(table["weights"]) == ["predictions only", "shipped"]
    for page in ("app_pages/gradcam.py", "app_pages/upload.py"):
        app.switch_page(page).run()
        assert not app.exception, app.exception
        notes = " ".join(c.value for c in app.caption)
        assert "cnn002_4layer** is left out here" in notes and "109 MB" in notes
    app.switch_page("app_pages/report.py").run()
    _box(app, "Model").set_value("cnn002_4layer").run()
    assert any(c.value.startswith("Predictions only: its fp16") for c in app.caption)
