"""Upload-and-classify: every bad input gets its own message; odd modes and framings work."""

import io
import os
from pathlib import Path

import numpy as np
import pytest
from helpers import run_bloodviz, train_tiny
from PIL import Image

from bloodviz.checkpoints import open_checkpoint
from bloodviz.paths import REPO_ROOT
from bloodviz.predict import InputError, Runner, classify, read_image, result_rows

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ckpt_root(tmp_path_factory):
    return train_tiny(tmp_path_factory, epochs=2, limit=8)[0]


@pytest.fixture(scope="module")
def ckpt(ckpt_root):
    return open_checkpoint(ckpt_root / "pbc-64" / "cnn_baseline")


def _encode(image: Image.Image, fmt: str, **kw) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kw)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def original(data_root) -> Image.Image:
    return Image.open(data_root / "pbc-originals" / "basophil" / "BA_172469.jpg").convert("RGB")


def test_each_bad_input_has_its_own_message(original):
    good = _encode(original, "JPEG")
    cases = {
        "empty": (b"", "empty"),
        "truncated": (good[: len(good) // 2], "truncated or corrupt"),
        "renamed.jpg": (b"%PDF-1.4 this is a PDF renamed .jpg" * 20, "not an image file"),
        "huge": (b"\xff" * (21 * 2**20), "over the 20 MB limit"),
        "gif": (_encode(original, "GIF"), "GIF files are not supported"),
    }
    frames = [original, original.rotate(90)]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="TIFF", save_all=True, append_images=frames[1:])
    cases["pages.tiff"] = (buffer.getvalue(), "multi-page TIFF with 2 frames")
    buffer = io.BytesIO()
    frames[0].save(buffer, format="WEBP", save_all=True, append_images=frames[1:], duration=100)
    cases["anim.webp"] = (buffer.getvalue(), "animated WEBP")
    bomb = _encode(Image.new("L", (9000, 9000)), "PNG")  # 81 megapixels of zeros, tiny file
    cases["bomb.png"] = (bomb, "too large")
    cases["dot.png"] = (_encode(Image.new("RGB", (1, 1)), "PNG"), "1x1 pixels is too small")
    strip = _encode(Image.new("RGB", (20000, 3), (200, 120, 160)), "PNG")
    cases["strip.png"] = (strip, "20000x3 strip is not a microscope image")
    for name, (data, message) in cases.items():
        with pytest.raises(InputError, match=message):
            read_image(data, name)


@pytest.mark.parametrize(
    "mode,fmt",
    [
        ("RGB", "JPEG"),
        ("RGB", "PNG"),
        ("RGB", "BMP"),
        ("RGB", "WEBP"),
        ("L", "PNG"),
        ("RGBA", "PNG"),
        ("P", "PNG"),
        ("CMYK", "JPEG"),
        ("I;16", "TIFF"),
        ("RGB", "TIFF"),
    ],
)
def test_modes_and_formats_classify(ckpt, original, mode, fmt):
    if mode == "I;16":
        image = Image.fromarray(np.asarray(original.convert("L"), dtype=np.uint16) * 200)
    else:
        image = original.convert(mode)
    results = classify([("x", _encode(image, fmt))], [ckpt])
    assert results[0].error is None
    assert results[0].framing == "full"  # a 360x363 field
    assert results[0].per_model["cnn_baseline"].sum() == pytest.approx(1)


def test_exif_rotated_upload_matches_upright(ckpt, original):
    exif = Image.Exif()
    exif[0x0112] = 8  # display rotated 90 degrees counter-clockwise
    turned = original.transpose(Image.Transpose.ROTATE_270)
    upright = classify([("a", _encode(original, "PNG"))], [ckpt])[0]
    tagged = classify([("b", _encode(turned, "PNG", exif=exif.tobytes()))], [ckpt])[0]
    assert np.allclose(
        upright.per_model["cnn_baseline"], tagged.per_model["cnn_baseline"], atol=1e-6
    )


def test_full_field_matches_its_dataset_crop(ckpt, data_root):
    """A PBC original classified as a full field gives what its 128 px crop gives as a cell."""
    diffs = []
    for path in sorted((data_root / "pbc-originals").glob("*/*.jpg"))[::8]:
        rel = f"{path.parent.name}/{path.name}"
        full = classify([("f", path.read_bytes())], [ckpt], framing="full")[0]
        crop = classify([("c", (data_root / "pbc" / rel).read_bytes())], [ckpt])[0]
        assert crop.framing == "cell"
        diffs.append(np.abs(full.per_model["cnn_baseline"] - crop.per_model["cnn_baseline"]).max())
    assert np.median(diffs) < 0.05, diffs


def test_batch_keeps_going_and_rows_are_complete(ckpt, original):
    files = [
        ("ok.jpg", _encode(original, "JPEG")),
        ("empty.jpg", b""),
        ("cell.png", _encode(original.resize((128, 128)), "PNG")),
    ]
    results = classify(files, [ckpt, ckpt])
    assert [r.error is None for r in results] == [True, False, True]
    rows = result_rows(results, ckpt.preprocessing.class_names)
    assert [r["path"] for r in rows] == ["ok.jpg", "empty.jpg", "cell.png"]
    assert "empty" in rows[1]["error"]


def test_onnx_runner_agrees_with_pytorch(ckpt, original):
    import json

    from bloodviz.inference import export_onnx, onnx_session

    runner = Runner(ckpt, backend="pytorch")
    cell = ckpt.preprocessing.prepare(original, "full")[None]
    torch_probs = runner.probs(cell)
    (ckpt.path / "bench-cpu.json").write_text(json.dumps({"use_onnx": True, "threads": 1}))
    try:
        onnx = Runner(ckpt)
        assert onnx.backend == "onnxruntime"
        assert np.abs(onnx.probs(cell) - torch_probs).max() < 1e-4
        lean = Runner(ckpt, lean=True)  # the app's lighter session computes the same
        assert np.abs(lean.probs(cell) - torch_probs).max() < 1e-4
    finally:
        (ckpt.path / "bench-cpu.json").unlink()
    assert onnx_session(export_onnx(ckpt), 1) is not None


def test_a_runner_on_the_explainers_model_shares_its_lock_and_its_answers(ckpt, original):
    from bloodviz.explain import Explainer

    explainer = Explainer.from_checkpoint(ckpt)
    runner = Runner(ckpt, model=explainer.model, lock=explainer.lock)
    cell = ckpt.preprocessing.prepare(original, "full")[None]
    assert runner.backend == "pytorch" and runner._model is explainer.model
    assert np.abs(runner.probs(cell) - Runner(ckpt, backend="pytorch").probs(cell)).max() < 1e-5
    assert np.abs(runner.probs(cell)[0] - explainer.probabilities(cell[0])).max() < 1e-5
    explainer.lock.acquire()  # a Grad-CAM pass holds it: the runner waits for it
    try:
        import threading

        done = threading.Event()
        worker = threading.Thread(target=lambda: (runner.probs(cell), done.set()))
        worker.start()
        assert not done.wait(0.5)
    finally:
        explainer.lock.release()
    assert done.wait(30)
    worker.join()


def test_upload_classification_runs_without_torch(ckpt, original, tmp_path):
    """The app's path: ONNX Runtime only, exported by a child process; torch never imported."""
    import subprocess
    import sys

    cell = ckpt.preprocessing.prepare(original, "full")[None]
    expected = Runner(ckpt, backend="pytorch").probs(cell)
    np.save(tmp_path / "cell.npy", cell)
    code = f"""
import sys, numpy as np
from bloodviz.checkpoints import open_checkpoint
from bloodviz.predict import Runner
runner = Runner(open_checkpoint({str(ckpt.path)!r}), backend="onnx")
probs = runner.probs(np.load({str(tmp_path / "cell.npy")!r}))
np.save({str(tmp_path / "probs.npy")!r}, probs)
print(runner.backend, "torch" in sys.modules)
"""
    env = {**os.environ, "BLOODVIZ_CACHE": str(tmp_path / "cache")}  # a cold ONNX cache
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=REPO_ROOT
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["onnxruntime", "False"]
    assert np.abs(np.load(tmp_path / "probs.npy") - expected).max() < 1e-4


def test_cli_predict_csv_matches_library(ckpt_root, ckpt, data_root, tmp_path):
    path = data_root / "pbc-originals" / "eosinophil"
    image = sorted(path.iterdir())[0]
    out = tmp_path / "p.csv"
    result = run_bloodviz(
        "predict",
        str(image),
        str(tmp_path / "missing.jpg"),
        "--dataset",
        "pbc",
        "--model",
        "cnn_baseline",
        "--csv",
        str(out),
        "--pytorch",
        env={"BLOODVIZ_CHECKPOINTS": str(ckpt_root)},
    )
    assert result.returncode == 1 and "missing.jpg" in result.stderr
    import pandas as pd

    frame = pd.read_csv(out)
    assert list(frame.columns[:4]) == ["path", "model", "predicted", "probability"]
    library = classify([(str(image), image.read_bytes())], [ckpt])[0].per_model["cnn_baseline"]
    cli = frame.iloc[0][[f"p_{c}" for c in ckpt.preprocessing.class_names]].to_numpy(float)
    assert np.abs(cli - library).max() < 1e-5


def test_folders_expand_and_unreadable_paths_get_their_own_row(tmp_path, original):
    from bloodviz.predict import read_paths

    folder = tmp_path / "cells"
    (folder / "more").mkdir(parents=True)
    original.save(folder / "b.jpg")
    original.save(folder / "more" / "a.png")
    (folder / "notes.txt").write_text("not an image")
    (tmp_path / "empty").mkdir()
    files = dict(read_paths([folder, tmp_path / "missing.jpg", tmp_path / "empty"]))
    assert [Path(n).name for n in files][:2] == ["b.jpg", "a.png"]  # sorted, subfolders too
    assert isinstance(files[str(folder / "b.jpg")], bytes)
    assert "no such file" in str(files[str(tmp_path / "missing.jpg")])
    assert "a folder with no image files" in str(files[str(tmp_path / "empty")])


def test_the_result_table_gives_each_column_one_type():
    """An unreadable file's row has "" where the others have numbers and flags: the table the
    upload page shows makes those missing values, so Arrow takes every column."""
    import pandas as pd
    import pyarrow as pa

    from bloodviz.predict import typed_table

    rows = [
        {
            "path": "a.png",
            "predicted": "eosinophil",
            "probability": 0.9,
            "flagged": False,
            "error": "",
        },
        {
            "path": "b.txt",
            "predicted": "",
            "probability": "",
            "flagged": "",
            "error": "not an image",
        },
    ]
    table = typed_table(rows)
    assert table["probability"].dtype == float and pd.isna(table["probability"][1])
    assert str(table["flagged"].dtype) == "boolean" and pd.isna(table["flagged"][1])
    assert list(table["error"]) == ["", "not an image"]
    pa.Table.from_pandas(table)  # what st.dataframe does; mixed columns raise here
    with pytest.raises(pa.ArrowInvalid):
        pa.Table.from_pandas(pd.DataFrame(rows))
