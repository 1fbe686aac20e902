"""Shared test helpers: run the CLI, train tiny real checkpoints."""

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def run_bloodviz(*args: str, env: dict | None = None, timeout: int = 600, check: bool = False):
    return subprocess.run(
        [sys.executable, "-m", "bloodviz", *args],
        cwd=REPO,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=check,
    )


def store_env(checkpoints: Path, runs: Path) -> dict:
    """Environment that points the CLI at a checkpoint store and a run-state folder."""
    return {"BLOODVIZ_CHECKPOINTS": str(checkpoints), "BLOODVIZ_RUNS": str(runs)}


def train_tiny(
    tmp_path_factory,
    datasets=("pbc",),
    size: int = 64,
    epochs: int = 1,
    limit: int = 6,
    models: tuple[str, ...] = ("cnn_baseline",),
) -> tuple[Path, dict]:
    """Train ``models`` by the CLI on ``limit`` real images a class; return (store, env)."""
    root = tmp_path_factory.mktemp("ck")
    env = store_env(root, tmp_path_factory.mktemp("runs"))
    for dataset, model in ((d, m) for d in datasets for m in models):
        run_bloodviz(
            "train",
            "--model",
            model,
            "--dataset",
            dataset,
            "--size",
            str(size),
            "--epochs",
            str(epochs),
            "--limit-per-class",
            str(limit),
            "--quiet",
            env=env,
            check=True,
        )
    return root, env


def app_test(monkeypatch, root: Path):
    """The dashboard under Streamlit's AppTest, reading checkpoints from ``root``."""
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("BLOODVIZ_CHECKPOINTS", str(root))
    return AppTest.from_file(str(REPO / "app.py"), default_timeout=180)


def dataset_box(app):
    return next(s for s in app.sidebar.selectbox if s.label == "Dataset")
