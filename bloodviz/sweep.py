"""Train a list of models, skipping checkpoints that are already up to date.

In this process one after another, or as Ray tasks: ``workers=N`` starts a local Ray instance
with N one-thread workers (the training lanes of one machine), ``ray_address`` joins an
existing cluster. Ray schedules; bloodviz only says what one task is (:func:`_train_task`).
Each task trains into a scratch store on its node and returns the finished checkpoint's
files, which the driver writes atomically into its own store, so a cluster needs no shared
file system for checkpoints (its nodes need the datasets, under ``BLOODVIZ_DATA``). An
interrupted sweep resumes: finished checkpoints are up to date and skipped, and a model cut
short continues from its state under ``runs/`` on the node that trained it.
"""

from __future__ import annotations

import os
from dataclasses import asdict
from pathlib import Path

from tqdm.auto import tqdm

from bloodviz.checkpoints import (
    CheckpointError,
    checkpoint_dir,
    find_checkpoint,
    write_atomic,
)
from bloodviz.data import DEFAULT_SIZES
from bloodviz.fit import fit
from bloodviz.models import list_models
from bloodviz.paths import REPO_ROOT
from bloodviz.runcard import TrainConfig

# what a Ray task may fail with and the sweep reports (other errors are bugs and propagate)
EXPECTED_FAILURES = (ValueError, RuntimeError, NotImplementedError, OSError)


def is_up_to_date(config: TrainConfig, checkpoints: Path | None = None) -> bool:
    """A checkpoint is up to date if it was trained with settings a resume would accept."""
    try:
        name = config.checkpoint_name
        ckpt = find_checkpoint(config.dataset, name, config.size, checkpoints)
    except CheckpointError:
        return False
    return config.matches(ckpt.run.config)


def plan(
    dataset: str,
    models: list[str],
    size: int | None = None,
    checkpoints: Path | None = None,
    seeds: list[int] | None = None,
    **settings,
) -> tuple[list[TrainConfig], list[str]]:
    """The configs still to train (each model with each of ``seeds``, else with the one
    ``seed`` setting), and the checkpoint names already up to date."""
    names = list_models() if models == ["all"] else models
    size = size or DEFAULT_SIZES.get(dataset, 64)
    single = settings.pop("seed", None)  # train's --seed, where no list of seeds is given
    seeds = seeds or [single]
    todo, current = [], []
    for name in names:
        for seed in seeds:
            config = TrainConfig.for_model(name, dataset, size=size, seed=seed, **settings)
            (current if is_up_to_date(config, checkpoints) else todo).append(config)
    return todo, [c.checkpoint_name for c in current]


def sweep(
    dataset: str,
    models: list[str],
    size: int | None = None,
    data_root: str | None = None,
    checkpoints: Path | None = None,
    command: str | None = None,
    fresh: bool = False,
    workers: int | None = None,
    ray_address: str | None = None,
    seeds: list[int] | None = None,
    **settings,
) -> dict[str, str]:
    """Train each model (``all`` = every registered one) with each of ``seeds``; returns
    checkpoint name (``cnn_baseline``, ``cnn_baseline-seed1``) -> what happened."""
    todo, current = plan(dataset, models, size, checkpoints, seeds, **settings)
    outcome = {name: "up to date" for name in current}
    if workers or ray_address:
        outcome.update(
            _sweep_on_ray(todo, data_root, checkpoints, command, fresh, workers, ray_address)
        )
        return outcome
    bar = tqdm(todo, desc=f"sweep {dataset}", unit="model")
    for config in bar:
        bar.set_postfix(model=config.checkpoint_name)

        def log(message: str, name=config.checkpoint_name) -> None:
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
            outcome[config.checkpoint_name] = "trained"
        except EXPECTED_FAILURES as exc:
            outcome[config.checkpoint_name] = f"failed: {exc}"
            tqdm.write(f"{config.checkpoint_name}: {exc}")
    return outcome


def _train_task(
    config: dict,
    data_root: str | None,
    command: str | None,
    fresh: bool,
    threads: int,
) -> dict:
    """One Ray task: train into a scratch store, return the checkpoint's files (or the error)."""
    import tempfile

    import torch

    torch.set_num_threads(threads)
    config = TrainConfig(**config)
    with tempfile.TemporaryDirectory(prefix="bloodviz-task-") as scratch:

        def log(message: str) -> None:
            print(f"{config.model}: {message}", flush=True)  # Ray prefixes it with the task

        try:
            out = fit(
                config,
                data_root=data_root,
                checkpoints=Path(scratch),
                progress=False,
                fresh=fresh,
                command=command,
                log=log,
            )
        except EXPECTED_FAILURES as exc:
            return {"model": config.model, "error": str(exc)}
        files = {p.name: p.read_bytes() for p in sorted(out.iterdir()) if p.is_file()}
        return {"model": config.model, "key": out.parent.name, "name": out.name, "files": files}


def _sweep_on_ray(
    todo: list[TrainConfig],
    data_root: str | None,
    checkpoints: Path | None,
    command: str | None,
    fresh: bool,
    workers: int | None,
    ray_address: str | None,
) -> dict[str, str]:
    try:
        import ray
    except ImportError as exc:
        raise RuntimeError(
            "--workers / --ray-address need Ray: pip install -r requirements-dev.txt"
        ) from exc
    # Workers import bloodviz from this checkout; one thread each, so N workers are N lanes.
    env = {"PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    for name in ("BLOODVIZ_DATA", "BLOODVIZ_RUNS", "BLOODVIZ_CACHE", "HF_HUB_OFFLINE"):
        if name in os.environ:
            env[name] = os.environ[name]
    runtime_env: dict = {"env_vars": env}
    if ray_address:
        # a remote cluster gets the code (not the store, runs or data) as its working dir
        runtime_env["working_dir"] = str(REPO_ROOT)
        runtime_env["excludes"] = ["checkpoints/", "runs/", "data/", ".git/", "test-artifacts/"]
        ray.init(address=ray_address, runtime_env=runtime_env)
    else:
        ray.init(
            num_cpus=workers,
            runtime_env=runtime_env,
            include_dashboard=False,
            log_to_driver=True,
        )
    task = ray.remote(num_cpus=1, max_retries=0)(_train_task)
    outcome: dict[str, str] = {}
    try:
        pending = {
            task.remote(asdict(c), data_root, command, fresh, 1): c.checkpoint_name for c in todo
        }
        bar = tqdm(total=len(pending), desc=f"sweep on Ray ({len(todo)} tasks)", unit="model")
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            model = pending.pop(done[0])
            result = ray.get(done[0])
            if "error" in result:
                outcome[model] = f"failed: {result['error']}"
                tqdm.write(f"{model}: {result['error']}")
            else:
                target = checkpoint_dir(result["key"], result["name"], checkpoints)

                def fill(folder: Path, files=result["files"]) -> None:
                    for name, content in files.items():
                        (folder / name).write_bytes(content)

                write_atomic(target, fill)
                outcome[model] = "trained"
                tqdm.write(f"{model}: checkpoint written to {target}")
            bar.update(1)
        bar.close()
    finally:
        ray.shutdown()
    return outcome
