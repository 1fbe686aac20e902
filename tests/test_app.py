"""The dashboard, rendered headless with Streamlit's AppTest over real (tiny) checkpoints."""

from pathlib import Path

import pytest
from helpers import app_test, dataset_box, run_bloodviz, train_tiny
from streamlit.testing.v1 import AppTest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """cnn_baseline for pbc-64 and blood-cells-64, trained by the CLI on small real subsets."""
    return train_tiny(tmp_path_factory, datasets=("pbc", "blood-cells"))[0]


def _dataset_box(app):
    return dataset_box(app)


def _app(monkeypatch, root) -> AppTest:
    return app_test(monkeypatch, root)


def test_empty_store_explains_how_to_train(monkeypatch, tmp_path):
    app = _app(monkeypatch, tmp_path).run()
    assert not app.exception
    assert any("python -m bloodviz train" in info.value for info in app.info)
    app.switch_page("app_pages/upload.py").run()
    assert not app.exception
    assert any("python -m bloodviz train" in info.value for info in app.info)


def test_checkpoint_table_lists_and_filters(monkeypatch, store):
    app = _app(monkeypatch, store).run()
    app.switch_page("app_pages/checkpoints.py").run()
    assert not app.exception
    table = app.dataframe[0].value
    assert set(table["dataset"]) == {"pbc-64", "blood-cells-64"}
    assert set(table["split"]) == {"test", "test_simple", "test_dedup"}
    next(m for m in app.multiselect if m.label == "Datasets").set_value(["pbc-64"]).run()
    assert set(app.dataframe[0].value["dataset"]) == {"pbc-64"}


def test_gradcam_page_draws_maps_and_reacts(monkeypatch, store):
    app = _app(monkeypatch, store).run()
    app.switch_page("app_pages/gradcam.py").run()
    assert not app.exception
    one_method = len(app.get("image"))
    assert one_method >= 2  # the cell and one overlay
    methods = next(m for m in app.multiselect if m.label == "Methods")
    methods.set_value(["gradcam", "eigencam", "layercam"]).run()
    assert not app.exception
    assert len(app.get("image")) == one_method + 2
    assert any("ROAD score" in c.value for c in app.caption)
    true_class = next(s for s in app.selectbox if s.label == "True class")
    assert "basophil" not in true_class.options  # blood-cells-64 comes first: 4 WBC classes
    true_class.set_value("eosinophil").run()
    assert not app.exception
    assert any("true class **eosinophil**" in c.value for c in app.caption)
    # the sidebar's dataset choice carries over to every page: PBC has 8 classes
    _dataset_box(app).set_value("pbc-64").run()
    assert not app.exception
    assert "basophil" in next(s for s in app.selectbox if s.label == "True class").options
    app.switch_page("app_pages/upload.py").run()
    assert _dataset_box(app).value == "pbc-64"
    assert any("trained on **pbc-64**" in c.value for c in app.caption)


def test_upload_page_classifies_real_images_and_reports_bad_ones(monkeypatch, store, data_root):
    app = _app(monkeypatch, store).run()
    _dataset_box(app).set_value("pbc-64").run()
    app.switch_page("app_pages/upload.py").run()
    assert not app.exception
    original = (data_root / "pbc-originals" / "monocyte").iterdir().__next__().read_bytes()
    app.file_uploader[0].set_value(
        [
            ("field.jpg", original, "image/jpeg"),
            ("broken.jpg", b"definitely not a jpeg", "image/jpeg"),
        ]
    ).run()
    assert not app.exception
    assert any("broken.jpg: not an image file" in e.value for e in app.error)
    assert any("framing: full" in c.value for c in app.caption)
    table = app.dataframe[0].value
    assert list(table["path"]) == ["field.jpg", "broken.jpg"]
    assert app.get("plotly_chart")
    app.radio[0].set_value("One cropped cell").run()
    assert any("framing: cell" in c.value for c in app.caption)


def test_upload_page_finds_and_boxes_the_white_cells_of_a_smear_field(
    monkeypatch, store, data_root
):
    app = _app(monkeypatch, store).run()
    _dataset_box(app).set_value("blood-cells-64").run()
    app.switch_page("app_pages/upload.py").run()
    field = data_root / "blood-cells" / "dataset-master" / "JPEGImages" / "BloodImage_00001.jpg"
    app.file_uploader[0].set_value([("field.jpg", field.read_bytes(), "image/jpeg")]).run()
    assert not app.exception
    table = app.dataframe[0].value
    assert table["path"].str.startswith("field.jpg #cell").all()
    assert {"box_x0", "box_y0", "box_x1", "box_y1"} <= set(table.columns)
    captions = [c for image in app.get("image") for c in image.captions]
    assert any("white cell(s) found" in c for c in captions), captions
    assert any(c.value.startswith("framing: field, box") for c in app.caption)


def test_page_and_cli_agree_on_the_same_image(monkeypatch, store, data_root, tmp_path):
    import pandas as pd

    image = sorted((data_root / "pbc-originals" / "lymphocyte").iterdir())[0]
    out = tmp_path / "cli.csv"
    run_bloodviz(
        "predict",
        str(image),
        "--dataset",
        "pbc",
        "--model",
        "cnn_baseline",
        "--csv",
        str(out),
        env={"BLOODVIZ_CHECKPOINTS": str(store)},
        check=True,
    )
    cli = pd.read_csv(out).iloc[0]
    app = _app(monkeypatch, store).run()
    _dataset_box(app).set_value("pbc-64").run()
    app.switch_page("app_pages/upload.py").run()
    app.file_uploader[0].set_value([(image.name, image.read_bytes(), "image/jpeg")]).run()
    assert not app.exception
    page = app.dataframe[0].value.iloc[0]
    assert page["predicted"] == cli["predicted"]
    columns = [c for c in cli.index if c.startswith("p_")]
    assert max(abs(float(page[c]) - float(cli[c])) for c in columns) < 1e-5


def test_upload_page_recalibrates_to_another_lab_as_the_cli_does(
    monkeypatch, store, data_root, tmp_path
):
    """Kaggle cells for a PBC model: the toggle re-estimates batch norm on the uploaded cells,
    and the page's calls are the CLI's ``predict --recalibrate`` on the same files."""
    import pandas as pd

    folder = data_root / "blood-cells" / "dataset2-master" / "images" / "TEST_SIMPLE"
    images = sorted(folder.glob("*/*.jpeg"))[::3]  # 24 of the 71, every class
    out = tmp_path / "cli.csv"
    cli = run_bloodviz(
        "predict",
        *map(str, images),
        "--dataset",
        "pbc",
        "--model",
        "cnn_baseline",
        "--framing",
        "field",
        "--recalibrate",
        "--csv",
        str(out),
        env={"BLOODVIZ_CHECKPOINTS": str(store)},
        check=True,
    )
    note = next(line for line in cli.stdout.splitlines() if "recalibrated on" in line)
    app = _app(monkeypatch, store).run()
    _dataset_box(app).set_value("pbc-64").run()
    app.switch_page("app_pages/upload.py").run()
    app.file_uploader[0].set_value([(str(p), p.read_bytes(), "image/jpeg") for p in images])
    app.radio[0].set_value("A smear field: find the white cells").run()
    assert not app.exception
    plain = app.dataframe[0].value
    toggle = next(t for t in app.toggle if t.label.startswith("Recalibrate"))
    toggle.set_value(True).run()
    assert not app.exception
    assert any(c.value == note for c in app.caption), note  # "cnn_baseline: ... on N cells"
    page = app.dataframe[0].value
    columns = [c for c in page.columns if c.startswith("p_")]
    assert list(page["path"]) == list(plain["path"])
    assert (page[columns] - plain[columns]).abs().to_numpy().max() > 0.05
    frame = pd.read_csv(out)
    assert list(page["path"]) == list(frame["path"])
    assert abs(page[columns].to_numpy() - frame[columns].to_numpy()).max() < 1e-5


UPLOADS = {
    "pbc-64": ("pbc-originals", "lymphocyte"),
    "blood-cells-64": ("blood-cells", "dataset2-master", "images", "TEST", "MONOCYTE"),
}


@pytest.mark.parametrize("upload_on", ["pbc-64", "blood-cells-64"])
def test_upload_after_gradcam_classifies_on_pytorch_copies_without_an_onnx_export(
    monkeypatch, store, data_root, tmp_path, upload_on
):
    """After the Grad-CAM page (pbc-64), the upload page classifies on PyTorch copies in the
    shared cache: on the one Grad-CAM loaded (pbc-64; measured: exporting resnet18 beside its
    loaded copy peaked 170 MB), and, for a network not yet loaded (blood-cells-64), on a new
    copy rather than an ONNX export in the app's process, which torch makes once imported
    (its trace took the app from 1,180 to 1,486 MB for blood-cells-64 resnet50, the tour's
    peak)."""
    from bloodviz import ui

    monkeypatch.setenv("BLOODVIZ_CACHE", str(tmp_path / "cache"))  # a cold ONNX cache
    ui.loaded_models.clear()
    app = _app(monkeypatch, store).run()
    _dataset_box(app).set_value("pbc-64").run()
    app.switch_page("app_pages/gradcam.py").run()
    assert not app.exception
    app.switch_page("app_pages/upload.py").run()
    _dataset_box(app).set_value(upload_on).run()  # chosen on this page: no Grad-CAM of it
    image = sorted(data_root.joinpath(*UPLOADS[upload_on]).iterdir())[0]
    app.file_uploader[0].set_value([(image.name, image.read_bytes(), "image/jpeg")]).run()
    assert not app.exception
    assert len(app.dataframe[0].value) == 1
    loaded = sorted((key[0], Path(key[1]).parent.name) for key in ui.loaded_models().keys())
    assert loaded == sorted({("torch", "pbc-64"), ("torch", upload_on)}), loaded
    assert not list((tmp_path / "cache").rglob("*.onnx"))


def test_gradcam_filters_preset_from_query(monkeypatch, store):
    app = _app(monkeypatch, store)
    app.query_params["true"] = "eosinophil"
    app.query_params["pred"] = "eosinophil"
    app.run()
    app.switch_page("app_pages/gradcam.py").run()
    assert not app.exception
    assert next(s for s in app.selectbox if s.label == "True class").value == "eosinophil"


LIGHT_PAGES_SCRIPT = """
import resource, sys
from streamlit.testing.v1 import AppTest

HEAVY = ("torch", "timm", "pytorch_grad_cam", "onnxruntime")
app = AppTest.from_file(sys.argv[1], default_timeout=180)
app.run()
assert not app.exception, app.exception
for page in sys.argv[2:]:
    app.switch_page(page).run()
    assert not app.exception, (page, app.exception)
print(",".join(m for m in HEAVY if m in sys.modules) or "none")
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)
"""


def test_comparison_pages_never_import_torch():
    """Only Grad-CAM and upload need a network: the leaderboard, report, head-to-head,
    studies, data and provenance pages run on the shipped store without torch, timm,
    pytorch-grad-cam or ONNX Runtime (their import alone is about 800 MB and 5 s)."""
    import subprocess
    import sys

    pages = [
        f"app_pages/{p}.py" for p in ("report", "head_to_head", "studies", "generalisation", "data")
    ]
    pages.append("app_pages/checkpoints.py")
    result = subprocess.run(
        [sys.executable, "-c", LIGHT_PAGES_SCRIPT, str(REPO / "app.py"), *pages],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    heavy, _peak_mb = result.stdout.split()[-2:]
    assert heavy == "none"


UPLOAD_SCRIPT = """
import sys
from streamlit.testing.v1 import AppTest

app = AppTest.from_file(sys.argv[1], default_timeout=300)
app.run()
next(s for s in app.sidebar.selectbox if s.label == "Dataset").set_value("pbc-64").run()
app.switch_page("app_pages/upload.py").run()
app.file_uploader[0].set_value([("cell.jpg", open(sys.argv[2], "rb").read(), "image/jpeg")]).run()
assert not app.exception, app.exception
assert len(app.dataframe[0].value) > 1, app.dataframe[0].value
print(",".join(m for m in ("torch", "timm", "pytorch_grad_cam") if m in sys.modules) or "none")
"""


def test_upload_page_classifies_without_torch(data_root, tmp_path):
    """Uploads are classified on ONNX Runtime: the app's process never imports torch for them
    (the ONNX files are exported by a child process, here into a cold cache)."""
    import os
    import subprocess
    import sys

    original = sorted((data_root / "pbc-originals" / "neutrophil").iterdir())[0]
    result = subprocess.run(
        [sys.executable, "-c", UPLOAD_SCRIPT, str(REPO / "app.py"), str(original)],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=REPO,
        env={**os.environ, "BLOODVIZ_CACHE": str(tmp_path / "cache")},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split()[-1] == "none"


def test_every_page_shows_cells_without_the_datasets(monkeypatch, tmp_path):
    """A fresh clone or Community Cloud: no data root at all, the shipped store and cell bank."""
    monkeypatch.setenv("BLOODVIZ_DATA", str(tmp_path))  # an empty folder: no dataset in it
    app = app_test(monkeypatch, REPO / "checkpoints").run()
    dataset_box(app).set_value("pbc-64").run()
    app.switch_page("app_pages/data.py").run()
    assert not app.exception
    assert not app.warning, [w.value for w in app.warning]
    assert any("cell bank" in i.value for i in app.info)
    assert len(app.get("image")) >= 8
    app.switch_page("app_pages/report.py")
    app.query_params["report_view"] = "Confusion matrix"  # the most confused pair's cells
    app.run()
    assert not app.exception
    assert not [w.value for w in app.warning if "cannot be shown" in w.value]
    assert app.get("image")
    app.switch_page("app_pages/head_to_head.py").run()  # the cells the two models disagree on
    assert not app.exception
    assert not [w.value for w in app.warning if "cannot be shown" in w.value]
    assert app.get("image")
    app.switch_page("app_pages/gradcam.py").run()
    assert not app.exception
    assert not app.warning, [w.value for w in app.warning]
    assert any("cell bank" in c.value for c in app.caption)
    assert any("ROAD score" in c.value for c in app.caption)


def test_a_shared_link_reopens_the_view():
    """The address carries the dataset, the models and each page's main choice."""
    app = AppTest.from_file(str(REPO / "app.py"), default_timeout=300)
    app.query_params.update(
        {
            "dataset": "blood-cells-64",
            "models-blood-cells-64": ["resnet18", "acnet", "mycnn_v4"],
            "report_model": "acnet",
            "report_split": "test_simple",
        }
    )
    app.run()
    assert app.selectbox(key="dataset").value == "blood-cells-64"
    assert app.multiselect(key="models-blood-cells-64").value == ["resnet18", "acnet", "mycnn_v4"]
    app.switch_page("app_pages/report.py").run()
    assert not app.exception
    assert app.selectbox(key="report_model").value == "acnet"
    assert app.selectbox(key="report_split").value == "test_simple"
    assert any("on blood-cells-64 / test_simple" in c.value for c in app.caption)

    pair = AppTest.from_file(str(REPO / "app.py"), default_timeout=300)
    pair.query_params.update(
        {
            "models-pbc-64": ["resnet18", "cnn002_bn", "cnn_baseline"],
            "h2h_a": "cnn002_bn",
            "h2h_b": "cnn_baseline",
        }
    )
    pair.run().switch_page("app_pages/head_to_head.py").run()
    assert not pair.exception
    assert (pair.selectbox(key="h2h_a").value, pair.selectbox(key="h2h_b").value) == (
        "cnn002_bn",
        "cnn_baseline",
    )


def test_an_invalid_link_falls_back_to_the_defaults():
    app = AppTest.from_file(str(REPO / "app.py"), default_timeout=300)
    app.query_params.update({"dataset": "no-such-set", "lb_split": "nonsense"})
    app.run()
    assert not app.exception
    assert app.selectbox(key="dataset").value == "pbc-64"  # the fullest dataset
    assert any("model(s) on **pbc-64 / test**" in c.value for c in app.caption)


def test_upload_page_offers_real_cells_without_a_file(monkeypatch, tmp_path):
    monkeypatch.setenv("BLOODVIZ_DATA", str(tmp_path))  # no dataset: the shipped cell bank
    app = app_test(monkeypatch, REPO / "checkpoints").run()
    app.switch_page("app_pages/upload.py").run()
    assert not app.dataframe  # nothing classified until asked
    app.toggle(key="samples").set_value(True).run()
    assert not app.exception
    table = app.dataframe[0].value
    cells = table.drop_duplicates("path")
    assert len(cells) == 8  # one test cell of each pbc class
    assert sorted(cells["true class"]) == sorted(
        ["basophil", "eosinophil", "erythroblast", "ig"]
        + ["lymphocyte", "monocyte", "neutrophil", "platelet"]
    )
    ensemble = table[table["model"] == "ensemble"]
    assert (ensemble["predicted"] == ensemble["true class"]).mean() >= 0.75
    first = list(cells["path"])
    app.button[0].click().run()  # other cells
    assert list(app.dataframe[0].value.drop_duplicates("path")["path"]) != first
    # another lab's cells: Kaggle's, of the four classes both datasets know
    app.segmented_control(key="samples_lab").set_value("another lab (blood-cells)").run()
    assert not app.exception
    foreign = app.dataframe[0].value.drop_duplicates("path")
    assert sorted(foreign["true class"]) == ["eosinophil", "lymphocyte", "monocyte", "neutrophil"]
    assert not set(foreign["path"]) & set(first)


def test_the_ensemble_joins_the_leaderboard_and_head_to_head():
    app = AppTest.from_file(str(REPO / "app.py"), default_timeout=300).run()
    chosen = app.multiselect(key="models-pbc-64").value
    app.toggle(key="lb_ensemble").set_value(True).run()
    assert not app.exception
    board = app.dataframe[0].value
    row = board[board["name"].str.startswith("ensemble of")]
    from bloodviz.checkpoints import list_checkpoints

    models = list_checkpoints(dataset_key="pbc-64", every_seed=False)  # a model once
    assert len(row) == 1 and len(board) == len(models) + 1
    assert row["parameters"].iloc[0] > 0  # the members' parameters added up
    app.switch_page("app_pages/head_to_head.py")
    app.query_params.update({"h2h_b": "ensemble"})
    app.run()
    assert not app.exception
    assert [m.label for m in app.metric][:2] == [f"A: {chosen[0]}", "B: ensemble"]
    assert any("McNemar" in m.label for m in app.metric)


def test_the_ensemble_has_a_report():
    app = AppTest.from_file(str(REPO / "app.py"), default_timeout=300)
    app.switch_page("app_pages/report.py")
    app.query_params.update({"report_model": "ensemble"})
    app.run()
    assert not app.exception
    assert app.caption[0].value.startswith("**Ensemble** of the sidebar's 4 models")
    assert app.dataframe[0].value["class"].iloc[-1] == "weighted avg"
    app.query_params["report_view"] = "Training"
    app.run()
    assert any("no training run of its own" in i.value for i in app.info)
