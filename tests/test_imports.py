"""Bring your own model: predictions made elsewhere and ONNX files, checked and compared."""

import shutil

import numpy as np
import pandas as pd
import pytest
from helpers import app_test, dataset_box, run_bloodviz, store_env

from bloodviz.checkpoints import find_checkpoint, list_checkpoints, open_checkpoint
from bloodviz.imports import (
    ImportRefused,
    import_onnx,
    import_predictions,
    imported_onnx_file,
    prediction_template,
)

SHIPPED = "cnn_baseline"  # a shipped pbc-64 checkpoint whose predictions stand in for "elsewhere"


@pytest.fixture(scope="module")
def elsewhere(tmp_path_factory):
    """The shipped model's val and test predictions, as a researcher would bring them."""
    ckpt = find_checkpoint("pbc", SHIPPED)
    frames = [pd.read_csv(ckpt.path / f"predictions-{s}.csv") for s in ("val", "test")]
    path = tmp_path_factory.mktemp("preds") / "preds.csv"
    pd.concat(frames).sample(frac=1.0, random_state=0).to_csv(path, index=False)  # any order
    return ckpt, path


def test_imported_predictions_score_as_the_original(tmp_path, elsewhere):
    original, csv = elsewhere
    path = import_predictions(csv, dataset="pbc", name="mine", checkpoints=tmp_path)
    ckpt = open_checkpoint(path)
    assert ckpt.run.imported["kind"] == "predictions" and ckpt.run.family == "imported"
    for split in ("val", "test"):
        assert ckpt.metrics()[split]["accuracy"] == original.metrics()[split]["accuracy"]
        assert ckpt.metrics()[split]["macro_f1"] == pytest.approx(
            original.metrics()[split]["macro_f1"]
        )
    assert not ckpt.has_weights and "predictions made elsewhere" in ckpt.predictions_only_reason
    # test rows alone are enough; validation is optional
    test_only = tmp_path / "test_only.csv"
    pd.read_csv(original.path / "predictions-test.csv").to_csv(test_only, index=False)
    only = open_checkpoint(
        import_predictions(test_only, dataset="pbc", name="mine2", checkpoints=tmp_path)
    )
    assert only.splits == ["test"]


def _refused(tmp_path, frame: pd.DataFrame, match: str, name: str = "bad"):
    path = tmp_path / f"{name}.csv"
    frame.to_csv(path, index=False)
    with pytest.raises(ImportRefused, match=match):
        import_predictions(path, dataset="pbc", name=name, checkpoints=tmp_path / "store")
    assert not (tmp_path / "store" / "pbc-64" / name).exists()  # nothing written


def test_bad_prediction_files_are_refused_with_the_reason(tmp_path, elsewhere):
    original, _ = elsewhere
    good = pd.read_csv(original.path / "predictions-test.csv")
    _refused(tmp_path, good.iloc[1:], r"split test has 3248 samples and 1 of them have no row")
    _refused(tmp_path, pd.concat([good, good.iloc[:2]]), "appear more than once")
    _refused(tmp_path, good.drop(columns=["sample_id"]), "no sample_id column")
    _refused(tmp_path, good.rename(columns={"p_ig": "p_granulocyte"}), r"unknown: \['p_granu")
    logits = good.copy()
    logits["p_basophil"] += 3.0
    _refused(tmp_path, logits, "between 0 and 1 .logits")
    columns = [c for c in good.columns if c.startswith("p_")]
    scaled = good.copy()
    scaled[columns] *= 0.9
    _refused(tmp_path, scaled, "do not sum to 1 .within 0.001.*sums to 0.9000")
    nan = good.copy()
    nan.loc[5, "p_platelet"] = np.nan
    _refused(tmp_path, nan, "missing or infinite")
    stranger = good.copy()
    stranger.loc[0, "sample_id"] = "TEST/EOSINOPHIL/_0_1.jpeg"
    _refused(tmp_path, stranger, "not in the val or evaluation splits")
    relabelled = good.copy()
    relabelled.loc[0, "label"] = "platelet" if good.loc[0, "label"] != "platelet" else "ig"
    _refused(tmp_path, relabelled, "carry a label that is not the dataset's")
    text = tmp_path / "binary.csv"
    text.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00")
    with pytest.raises(ImportRefused):
        import_predictions(text, dataset="pbc", name="png", checkpoints=tmp_path / "store")


def test_names_never_replace_the_zoo_or_without_asking(tmp_path, elsewhere):
    _, csv = elsewhere
    with pytest.raises(ImportRefused, match="is a model of the zoo"):
        import_predictions(csv, dataset="pbc", name="resnet18", checkpoints=tmp_path)
    with pytest.raises(ImportRefused, match="use 1-48 lower-case"):
        import_predictions(csv, dataset="pbc", name="../escape", checkpoints=tmp_path)
    import_predictions(csv, dataset="pbc", name="mine", checkpoints=tmp_path)
    with pytest.raises(ImportRefused, match="exists already.*--overwrite"):
        import_predictions(csv, dataset="pbc", name="mine", checkpoints=tmp_path)
    import_predictions(csv, dataset="pbc", name="mine", checkpoints=tmp_path, overwrite=True)
    # a trained (not imported) checkpoint under a free name is never replaced
    shutil.copytree(find_checkpoint("pbc", SHIPPED).path, tmp_path / "pbc-64" / "trained_here")
    with pytest.raises(ImportRefused, match="only an imported checkpoint is replaced"):
        import_predictions(
            csv, dataset="pbc", name="trained_here", checkpoints=tmp_path, overwrite=True
        )


def test_template_lists_the_test_ids():
    template = pd.read_csv(__import__("io").StringIO(prediction_template("pbc", 64)))
    assert len(template) == 3248 and list(template.columns)[:2] == ["sample_id", "label"]
    assert "p_ig" in template.columns


@pytest.fixture(scope="module")
def onnx_file(tmp_path_factory):
    """A real classifier as an ONNX file: the shipped model exported."""
    from bloodviz.inference import export_onnx

    ckpt = find_checkpoint("pbc", SHIPPED)
    out = tmp_path_factory.mktemp("onnx") / "their_model.onnx"
    shutil.copyfile(export_onnx(ckpt), out)
    return ckpt, out


@pytest.mark.slow
def test_imported_onnx_runs_on_every_cell_benchmarks_and_classifies(
    tmp_path, onnx_file, monkeypatch, data_root
):
    original, path = onnx_file
    result = run_bloodviz(
        "import-onnx",
        str(path),
        "--dataset",
        "pbc",
        "--name",
        "their_cnn",
        "--quiet",
        env=store_env(tmp_path, tmp_path / "runs"),
    )
    assert result.returncode == 0, result.stderr
    assert "pbc-64 their_cnn test: accuracy" in result.stdout
    ckpt = open_checkpoint(tmp_path / "pbc-64" / "their_cnn")
    agree = np.mean(ckpt.predictions("test").predicted == original.predictions("test").predicted)
    assert agree > 0.999  # the same network through ONNX Runtime
    assert imported_onnx_file(ckpt) == ckpt.path / "model.onnx"
    bench = ckpt.bench()
    assert bench["latency_b1_ms"]["median_ms"] > 0 and bench["parameters"] > 1000

    # every page shows it; upload runs it; Grad-CAM says why it is not there
    app = app_test(monkeypatch, tmp_path).run()
    dataset_box(app).set_value("pbc-64").run()
    assert not app.exception
    assert "imported ONNX" in set(app.dataframe[0].value.get("weights", []))
    app.switch_page("app_pages/upload.py").run()
    image = sorted((data_root / "pbc" / "neutrophil").iterdir())[0]
    app.file_uploader[0].set_value([(image.name, image.read_bytes(), "image/jpeg")]).run()
    assert not app.exception
    assert app.dataframe[0].value.iloc[0]["model"] == "their_cnn"
    app.switch_page("app_pages/gradcam.py").run()
    assert any("their_cnn** is left out" in c.value for c in app.caption)


def test_onnx_files_that_do_not_fit_are_refused(tmp_path, onnx_file):
    import torch

    _, path = onnx_file
    with pytest.raises(ImportRefused, match="outputs 8 classes; the dataset has 4"):
        import_onnx(path, dataset="blood-cells", name="x", checkpoints=tmp_path)
    fixed = tmp_path / "fixed32.onnx"
    torch.onnx.export(
        torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 8)),
        torch.zeros(1, 3, 32, 32),
        str(fixed),
        dynamo=False,
    )
    with pytest.raises(ImportRefused, match="images of height 32.*--size 32"):
        import_onnx(fixed, dataset="pbc", name="x", checkpoints=tmp_path)
    channels_last = tmp_path / "nhwc.onnx"

    class ChannelsLast(torch.nn.Module):
        def forward(self, x):
            return x.mean(dim=(1, 2))[:, :1].repeat(1, 8)

    torch.onnx.export(ChannelsLast(), torch.zeros(1, 64, 64, 3), str(channels_last), dynamo=False)
    with pytest.raises(ImportRefused, match="takes channels last"):
        import_onnx(channels_last, dataset="pbc", name="x", checkpoints=tmp_path)

    class NotANumber(torch.nn.Module):
        def forward(self, x):
            return torch.log(x.mean(dim=(2, 3)) - 10.0).repeat(1, 3)[:, :8]

    nan = tmp_path / "nan.onnx"
    torch.onnx.export(
        NotANumber(),
        torch.zeros(1, 3, 64, 64),
        str(nan),
        dynamo=False,
        dynamic_axes={"input": {0: "batch"}},
        input_names=["input"],
    )
    with pytest.raises(ImportRefused, match="NaN or infinite outputs on val"):
        import_onnx(nan, dataset="pbc", name="x", checkpoints=tmp_path, progress=False)
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model")
    with pytest.raises(ImportRefused, match="not an ONNX model"):
        import_onnx(junk, dataset="pbc", name="x", checkpoints=tmp_path)
    assert not list_checkpoints(tmp_path)


@pytest.mark.slow
def test_checkpoints_page_imports_an_uploaded_csv(tmp_path, monkeypatch, elsewhere):
    _, csv = elsewhere
    app = app_test(monkeypatch, tmp_path).run()
    app.switch_page("app_pages/checkpoints.py").run()
    assert not app.exception
    app.text_input(key="import_name").input("from_a_gpu")
    uploader = next(u for u in app.file_uploader if u.key == "import_file")
    uploader.set_value([("preds.csv", csv.read_bytes(), "text/csv")])
    app.button[0].click().run()
    assert not app.exception
    assert any("Imported as pbc-64/from_a_gpu" in s.value for s in app.success)
    assert (tmp_path / "pbc-64" / "from_a_gpu" / "metrics.json").exists()
    # the same name again, without asking to replace: refused, nothing lost
    uploader = next(u for u in app.file_uploader if u.key == "import_file")
    uploader.set_value([("preds.csv", csv.read_bytes(), "text/csv")])
    app.button[0].click().run()
    assert any("exists already" in e.value for e in app.error)


def test_importing_predictions_never_loads_torch(tmp_path, elsewhere):
    """The app's import form runs in the app's process, which keeps torch out (600 MB)."""
    import subprocess
    import sys

    _, csv = elsewhere
    code = (
        "import sys; from bloodviz.imports import import_predictions; "
        f"import_predictions({str(csv)!r}, dataset='pbc', name='light', "
        f"checkpoints=__import__('pathlib').Path({str(tmp_path)!r})); "
        "print('torch' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"
