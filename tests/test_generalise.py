"""Cross-dataset generalisation: white-cell models on the other lab's cells."""

import json

import numpy as np
import pytest
from helpers import app_test, dataset_box, train_tiny

from bloodviz import generalise
from bloodviz.checkpoints import list_checkpoints


def test_balanced_accuracy_is_the_mean_recall_of_the_classes_present():
    from sklearn.metrics import balanced_accuracy_score

    rng = np.random.default_rng(0)
    names = np.array(generalise.SHARED_CLASSES)
    truth = names[rng.choice(4, 200, p=[0.1, 0.1, 0.1, 0.7])]
    calls = np.where(rng.random(200) < 0.7, truth, names[rng.integers(0, 4, 200)])
    ours = generalise.balanced_accuracy(truth, calls, classes=generalise.SHARED_CLASSES)
    assert ours == pytest.approx(balanced_accuracy_score(truth, calls))
    # everything called "neutrophil": plain accuracy 70%, balanced 25%
    all_one = np.full(200, "neutrophil")
    assert generalise.balanced_accuracy(truth, all_one, classes=names) == pytest.approx(0.25)
    low, high = generalise.bootstrap_balanced(truth, calls, classes=names)
    assert low < ours < high


def test_restricted_calls_ignore_the_classes_the_other_set_lacks():
    classes = ("basophil", "eosinophil", "lymphocyte", "platelet")  # 2 of them shared
    probs = np.array([[0.1, 0.2, 0.1, 0.6], [0.0, 0.1, 0.3, 0.6]])
    row = generalise._scores(np.array(["eosinophil", "lymphocyte"]), probs, classes)
    assert row["accuracy_as_is"] == 0.0  # both "platelet"
    assert row["accuracy_restricted"] == 1.0  # the best shared class is right both times


def test_a_field_where_no_white_cell_was_found_counts_as_a_miss():
    classes = ("eosinophil", "lymphocyte")
    probs = np.array([[0.9, 0.1], [np.nan, np.nan]])  # the second field: no cell found
    row = generalise._scores(np.array(["eosinophil", "eosinophil"]), probs, classes)
    assert row["accuracy_as_is"] == row["accuracy_restricted"] == 0.5


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return train_tiny(tmp_path_factory, datasets=("pbc", "blood-cells"), limit=6)[0]


@pytest.mark.slow
def test_a_model_is_scored_on_the_other_lab_and_the_page_shows_it(store, monkeypatch, data_root):
    (ckpt,) = list_checkpoints(store, "blood-cells-64")
    result = generalise.cross_dataset(ckpt, progress=False, command="test")
    fields = f"{generalise.FIELDS_SET}, unseen"
    localised = "pbc test (localised)"
    recalibrated = f"pbc test {generalise.RECALIBRATED}"  # cnn_baseline has batch norm
    assert set(result["sets"]) == {
        "blood-cells test (own)",
        "pbc test",
        localised,
        recalibrated,
        fields,
    }
    other = result["sets"]["pbc test"]
    assert other["n"] > 1000  # PBC's test cells of the four shared classes
    # the same cells as whole images through the localiser, as an upload would be framed
    assert result["sets"][localised]["n"] == other["n"]
    assert result["sets"][recalibrated]["n"] == other["n"]
    assert result["sets"][recalibrated] != result["sets"][localised]
    # a blood-cells model saw crops of most BCCD fields: only the others are its test
    assert 10 < result["sets"][fields]["n"] < 200
    assert 0 <= other["balanced_as_is"] <= 1 and other["balanced_restricted"] >= 0
    assert json.loads((ckpt.path / generalise.RESULT_FILE).read_text())["command"] == "test"
    assert "pbc test" in generalise.format_table([result])
    (pbc,) = list_checkpoints(store, "pbc-64")
    malaria_like = type("C", (), {"dataset": "malaria", "dataset_key": "malaria-64"})()
    with pytest.raises(ValueError, match="white-cell"):
        generalise.cross_dataset(malaria_like)
    app = app_test(monkeypatch, store).run()
    dataset_box(app).set_value("blood-cells-64").run()
    app.switch_page("app_pages/generalisation.py").run()
    assert not app.exception
    assert "pbc test" in set(app.dataframe[0].value["evaluated on"])
    dataset_box(app).set_value("pbc-64").run()
    assert not app.exception
    assert any("Not measured yet for cnn_baseline" in i.value for i in app.info)
    assert pbc.name == "cnn_baseline"
