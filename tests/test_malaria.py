"""Malaria, the two-class dataset: screening figures, the patient-leakage view, and every page
working on real (tiny) malaria checkpoints."""

import io

import numpy as np
import pytest
from helpers import app_test, dataset_box, train_tiny
from PIL import Image
from sklearn.metrics import confusion_matrix, roc_curve

from bloodviz.checkpoints import list_checkpoints
from bloodviz.compare import leaderboard, split_leakage
from bloodviz.metrics import screening_at_threshold, youden_threshold
from bloodviz.plots import leakage_bars, roc_operating_point


def test_screening_figures_match_scikit_learn():
    rng = np.random.default_rng(0)
    positive = rng.random(400) < 0.4
    scores = np.clip(positive * 0.3 + rng.random(400) * 0.7, 0, 1)
    for threshold in (0.2, 0.5, 0.8):
        got = screening_at_threshold(positive, scores, threshold)
        tn, fp, fn, tp = confusion_matrix(positive, scores >= threshold).ravel()
        assert (got["tp"], got["fn"], got["fp"], got["tn"]) == (tp, fn, fp, tn)
        assert got["sensitivity"] == pytest.approx(tp / (tp + fn))
        assert got["specificity"] == pytest.approx(tn / (tn + fp))
        assert got["ppv"] == pytest.approx(tp / (tp + fp))
    # nothing called positive: PPV is undefined, not 0
    assert np.isnan(screening_at_threshold(positive, scores, 2.0)["ppv"])
    # Youden's threshold is the ROC point farthest above the diagonal
    t = youden_threshold(positive, scores)
    fpr, tpr, _ = roc_curve(positive, scores)
    best = screening_at_threshold(positive, scores, t)
    assert best["sensitivity"] + best["specificity"] - 1 == pytest.approx(max(tpr - fpr))
    fig = roc_operating_point(fpr, tpr, 0.9, best, "parasitized", reference=best)
    # the curve, the chance line, the chosen and the validation operating points
    assert [trace.mode for trace in fig.data] == ["lines", "lines", "markers", "markers"]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """cnn_baseline trained by the CLI on real malaria cells, split by patient and by cell."""
    return train_tiny(tmp_path_factory, datasets=("malaria", "malaria-cells"), limit=8)[0]


@pytest.mark.slow
def test_leaderboard_and_leakage_on_real_malaria_checkpoints(store):
    ckpts = list_checkpoints(store)
    assert {c.dataset_key for c in ckpts} == {"malaria-64", "malaria-cells-64"}
    board = leaderboard([c for c in ckpts if c.dataset == "malaria"])
    row = board.iloc[0]
    per_class = ckpts[0].metrics()["test"]["per_class"]
    assert row["sensitivity"] == per_class["parasitized"]["recall"]
    assert row["specificity"] == per_class["uninfected"]["recall"]
    table = split_leakage(ckpts)
    assert list(table["model"]) == ["cnn_baseline"]
    cells = next(c for c in ckpts if c.dataset == "malaria-cells").metrics()
    patients = next(c for c in ckpts if c.dataset == "malaria").metrics()
    first = table.iloc[0]
    assert first["random split, its own test (seen patients)"] == cells["test_seen"]["accuracy"]
    assert first["random split, new patients"] == cells["test"]["accuracy"]
    assert first["patient split, new patients"] == patients["test"]["accuracy"]
    assert first["n_new"] == first["n_seen"] == 16  # --limit-per-class 8 cuts every split
    assert len(leakage_bars(table).data) == 3
    # a store without the random split's twin has no rows
    assert split_leakage([c for c in ckpts if c.dataset == "malaria"]).empty


@pytest.mark.slow
def test_every_page_works_on_malaria(monkeypatch, store, data_root):
    app = app_test(monkeypatch, store).run()
    dataset_box(app).set_value("malaria-64").run()
    assert not app.exception
    columns = app.dataframe[0].value.columns
    assert "sensitivity" in columns and "specificity" in columns

    app.switch_page("app_pages/report.py")
    app.query_params["report_view"] = "Screening"  # only the open tab runs
    app.run()
    assert not app.exception
    assert any(m.label == "Sensitivity" for m in app.metric)
    slider = next(s for s in app.slider if s.key == "report_threshold")
    before = next(m for m in app.metric if m.label == "Sensitivity").value
    slider.set_value(0.01).run()
    assert not app.exception
    assert next(m for m in app.metric if m.label == "Sensitivity").value == "1.0000"
    assert float(before) <= 1.0
    assert any("chosen on validation" in c.value for c in app.caption)

    app.switch_page("app_pages/data.py").run()
    assert not app.exception
    assert any(s.value == "Patient leakage" for s in app.subheader)

    app.switch_page("app_pages/gradcam.py").run()
    assert not app.exception
    assert "parasitized" in next(s for s in app.selectbox if s.label == "True class").options

    # a cell at NIH's original size (non-square PNG) is stretched whole and classified
    cell = sorted((data_root / "malaria" / "parasitized").iterdir())[0]
    png = io.BytesIO()
    Image.open(cell).resize((142, 130)).save(png, "PNG")
    app.switch_page("app_pages/upload.py").run()
    app.file_uploader[0].set_value([("nih_cell.png", png.getvalue(), "image/png")]).run()
    assert not app.exception
    table = app.dataframe[0].value
    assert table.iloc[0]["predicted"] in ("parasitized", "uninfected")

    app.switch_page("app_pages/studies.py").run()
    assert not app.exception
    studies = app.dataframe[0].value
    malaria_row = studies[(studies["study"] == "003") & (studies["reported"] == 85.16)]
    assert len(malaria_row) == 1 and "NIH malaria" in malaria_row.iloc[0]["reported on"]
