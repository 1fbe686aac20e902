"""The dashboard, rendered headless with Streamlit's AppTest."""

import shutil
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture()
def checkpoint_root(tmp_path, monkeypatch):
    monkeypatch.setenv("BLOODVIZ_CHECKPOINTS", str(tmp_path))
    return tmp_path


def _app() -> AppTest:
    return AppTest.from_file(str(REPO / "app.py"), default_timeout=120)


def test_empty_store_explains_how_to_train(checkpoint_root):
    app = _app().run()
    assert not app.exception
    assert any("python -m bloodviz train" in info.value for info in app.info)


def test_table_lists_checkpoints_and_filters(checkpoint_root, tmp_path_factory):
    # a real checkpoint, trained by the CLI on a small real subset
    import os
    import subprocess
    import sys

    runs = tmp_path_factory.mktemp("runs")
    env = {**os.environ, "BLOODVIZ_CHECKPOINTS": str(checkpoint_root), "BLOODVIZ_RUNS": str(runs)}
    for dataset in ("pbc", "blood-cells"):
        subprocess.run(
            [
                sys.executable,
                "-m",
                "bloodviz",
                "train",
                "--model",
                "cnn_baseline",
                "--dataset",
                dataset,
                "--size",
                "28",
                "--epochs",
                "1",
                "--limit-per-class",
                "5",
                "--quiet",
            ],
            cwd=REPO,
            env=env,
            check=True,
            capture_output=True,
            timeout=600,
        )
    app = _app().run()
    assert not app.exception
    table = app.dataframe[0].value
    assert set(table["dataset"]) == {"pbc-28", "blood-cells-28"}
    assert set(table["split"]) == {"test", "test_simple"}
    app.multiselect[0].set_value(["pbc-28"]).run()
    assert set(app.dataframe[0].value["dataset"]) == {"pbc-28"}
    shutil.rmtree(checkpoint_root / "pbc-28")
