"""Train a list of models in turn, skipping checkpoints that are already up to date."""

from __future__ import annotations

from pathlib import Path

from tqdm.auto import tqdm

from bloodviz.checkpoints import CheckpointError, checkpoint_name, find_checkpoint
from bloodviz.data import DEFAULT_SIZES
from bloodviz.fit import fit
from bloodviz.models import list_models
from bloodviz.runcard import TrainConfig


def is_up_to_date(config: TrainConfig, checkpoints: Path | None = None) -> bool:
    """A checkpoint is up to date if it was trained with settings a resume would accept."""
    try:
        name = checkpoint_name(config.model, config.pretrained)
        ckpt = find_checkpoint(config.dataset, name, config.size, checkpoints)
    except CheckpointError:
        return False
    return config.matches(ckpt.run.config)


def sweep(
    dataset: str,
    models: list[str],
    size: int | None = None,
    data_root: str | None = None,
    checkpoints: Path | None = None,
    command: str | None = None,
    fresh: bool = False,
    **settings,
) -> dict[str, str]:
    """Train each model (``all`` = every registered one); returns model -> what happened."""
    names = list_models() if models == ["all"] else models
    size = size or DEFAULT_SIZES.get(dataset, 64)
    outcome: dict[str, str] = {}
    bar = tqdm(names, desc=f"sweep {dataset}-{size}", unit="model")
    for name in bar:
        config = TrainConfig.for_model(name, dataset, size=size, **settings)
        if is_up_to_date(config, checkpoints):
            outcome[name] = "up to date"
            continue
        bar.set_postfix(model=name)

        def log(message: str, name=name) -> None:
            # one line per message, so a background sweep's log file tells its progress
            tqdm.write(f"{name}: {message}")

        try:
            fit(
                config,
                data_root=data_root,
                checkpoints=checkpoints,
                progress=False,
                fresh=fresh,
                command=command,
                log=log,
            )
            outcome[name] = "trained"
        except (ValueError, RuntimeError, NotImplementedError, OSError) as exc:
            outcome[name] = f"failed: {exc}"
            tqdm.write(f"{name}: {exc}")
    return outcome
