import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def run(*args, env=None):
    import os

    return subprocess.run(
        [sys.executable, "-m", "bloodviz", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=300,
    )


def test_datasets_lists_the_shared_data(data_root):
    result = run("datasets", "--data-root", str(data_root))
    assert result.returncode == 0
    assert "pbc" in result.stdout and "train=11366" in result.stdout
    assert "test_simple=71" in result.stdout
    assert "bloodmnist   not available" in result.stdout


@pytest.mark.slow
def test_missing_data_root_is_a_clear_error(tmp_path):
    result = run(
        "train",
        "--model",
        "cnn_baseline",
        "--dataset",
        "pbc",
        "--data-root",
        str(tmp_path / "absent"),
    )
    assert result.returncode == 2
    assert f"error: data root {tmp_path / 'absent'}" in result.stderr
    result = run(
        "evaluate",
        "--model",
        "nope",
        "--dataset",
        "pbc",
        env={"BLOODVIZ_CHECKPOINTS": str(tmp_path)},
    )
    assert result.returncode == 2 and "no checkpoint folder" in result.stderr


def test_kaggle_download_prints_steps():
    result = run("download", "blood-cells", "--data-root", "/tmp/x")
    assert result.returncode == 0
    assert "kaggle datasets download -d paultimothymooney/blood-cells" in result.stdout
