"""One entry for every trainer: a network by gradient descent, or features + an SVM."""

from __future__ import annotations

from pathlib import Path

from bloodviz.models import model_info
from bloodviz.runcard import TrainConfig


def fit(
    config: TrainConfig,
    data_root: str | None = None,
    checkpoints: Path | None = None,
    runs: Path | None = None,
    fresh: bool = False,
    progress: bool = True,
    command: str | None = None,
    log=print,
) -> Path:
    """Train ``config.model`` with the trainer its registry entry names; return the
    checkpoint folder it wrote."""
    if model_info(config.model).trainer == "svm":
        from bloodviz.svm import fit_feature_svm as trainer
    else:
        from bloodviz.train import train as trainer
    return trainer(
        config,
        data_root=data_root,
        checkpoints=checkpoints,
        runs=runs,
        fresh=fresh,
        progress=progress,
        command=command,
        log=log,
    )
