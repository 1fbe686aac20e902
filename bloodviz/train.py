"""The network trainer: seeded, resumable, best-on-validation, written as an atomic checkpoint.

:func:`train` reads as its steps: :func:`start_run` (data, model, optimizer, and the state of
an interrupted run), then per epoch :func:`train_one_epoch` and :func:`validate`, then
:func:`finish_run` (the best epoch's weights, evaluated and written). timm's
``train_one_epoch`` / ``validate`` split is the model for it.

Resumable: after every epoch the whole training state goes to ``runs/<dataset>-<size>/<model>/
state.pt`` (atomic replace). Rerunning the same command after Ctrl-C or a kill continues from
the last finished epoch, so at most one epoch is lost. Each epoch's shuffling, augmentation and
dropout are seeded from (seed, epoch), so a resumed run follows the same path as an
uninterrupted one.

A time budget (``--time-budget 45m``) plans the number of epochs from the measured speed of
the first steps, so that the cosine schedule reaches its end when the budget is spent. Those
first steps are inside the warm-up, whose learning rates do not depend on the run's length.
"""

from __future__ import annotations

import copy
import math
import os
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from bloodviz.checkpoints import (
    WEIGHTS,
    Predictions,
    checkpoint_dir,
    write_checkpoint,
)
from bloodviz.data import BloodDataset, SplitArrays, get_dataset
from bloodviz.inference import hardware_info, pick_device, predict_probs, versions
from bloodviz.metrics import summarise
from bloodviz.models import create_model
from bloodviz.models.registry import LAYOUT_ONLY
from bloodviz.paths import runs_root
from bloodviz.preprocess import Preprocessing
from bloodviz.runcard import RunCard, TrainConfig, parse_duration, run_identity

# steps timed before a time-budgeted run plans its length (all inside the warm-up)
BUDGET_PROBE_STEPS = 8


class ResumeMismatch(RuntimeError):
    pass


def _augment(batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Flips, 90-degree turns and mild brightness/contrast jitter on uint8 NHWC.

    Blood cells have no canonical orientation, so the dihedral group is label-preserving;
    stain intensity varies between smears, hence the small photometric jitter.
    """
    n = batch.shape[0]
    flip = torch.rand(n, generator=generator) < 0.5
    batch = batch.clone()
    batch[flip] = batch[flip].flip(2)
    turns = torch.randint(0, 4, (n,), generator=generator)
    for k in (1, 2, 3):
        chosen = turns == k
        if chosen.any():
            batch[chosen] = torch.rot90(batch[chosen], k, dims=(1, 2))
    x = batch.float()
    brightness = 1 + (torch.rand(n, 1, 1, 1, generator=generator) - 0.5) * 0.2
    contrast = 1 + (torch.rand(n, 1, 1, 1, generator=generator) - 0.5) * 0.2
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = ((x - mean) * contrast + mean) * brightness
    return x.clamp_(0, 255)


class WarmupCosine:
    """Linear warm-up then cosine decay to 0 at ``total_steps``, which a time-budgeted run
    sets once it has measured its speed (the warm-up does not depend on it)."""

    def __init__(self, total_steps: int, warmup_steps: int):
        self.total_steps = total_steps
        self.warmup_steps = warmup_steps

    def __call__(self, step: int) -> float:
        # at most a quarter of the run: a one-epoch run (or a budget that allows one) with a
        # one-epoch warm-up would end at its peak rate and never decay
        warmup = min(self.warmup_steps, self.total_steps // 4)
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, self.total_steps - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


@dataclass
class RunState:
    """Everything an interrupted run needs besides the model and optimizer."""

    epochs: int  # planned: the configured epochs, or what the time budget allows
    history: list[dict] = field(default_factory=list)
    best: dict = field(
        default_factory=lambda: {"val_accuracy": -1.0, "val_loss": math.inf, "epoch": 0}
    )
    best_weights: dict | None = None
    epoch: int = 0
    bad_epochs: int = 0
    train_seconds: float = 0.0
    train_images: int = 0
    budget_planned: bool = False
    precision_probe: dict = field(default_factory=dict)

    def record(self, row: dict, model: torch.nn.Module) -> None:
        """Add one epoch's row; keep the weights if it is the best so far."""
        self.history.append(row)
        self.epoch = row["epoch"]
        improved = row["val_accuracy"] > self.best["val_accuracy"] or (
            row["val_accuracy"] == self.best["val_accuracy"]
            and row["val_loss"] < self.best["val_loss"]
        )
        if improved:
            self.best = {
                "val_accuracy": row["val_accuracy"],
                "val_loss": row["val_loss"],
                "epoch": row["epoch"],
            }
            self.best_weights = copy.deepcopy({k: v.cpu() for k, v in model.state_dict().items()})
            self.bad_epochs = 0
        else:
            self.bad_epochs += 1


@dataclass
class TrainingRun:
    """A run's fixed parts: what it trains, on which data, with what."""

    config: TrainConfig
    dataset: BloodDataset
    prep: Preprocessing
    train_data: SplitArrays
    val_data: SplitArrays
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    schedule: WarmupCosine
    # fp16 loss scaling on CUDA; one for the whole run, so its learned scale carries over epochs
    scaler: torch.amp.GradScaler
    device: torch.device
    precision: str
    state_path: Path
    local_weights: Path
    out_dir: Path
    steps_per_epoch: int
    state: RunState
    started: float = field(default_factory=time.time)
    started_at: str = field(
        default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds")
    )
    # wall time of the earlier sessions of a resumed run
    wall_before: float = 0.0

    @property
    def wall_seconds(self) -> float:
        """Wall time of the whole run, across resumes."""
        return self.wall_before + time.time() - self.started

    def save_state(self) -> None:
        state = self.state
        _save_state(
            self.state_path,
            {
                "config": self.config.resume_key(),
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "history": state.history,
                "best": {**state.best, "state": state.best_weights},
                "epoch": state.epoch,
                "bad_epochs": state.bad_epochs,
                "train_seconds": state.train_seconds,
                "train_images": state.train_images,
                "epochs": state.epochs,
                "budget_planned": state.budget_planned,
                "precision_probe": state.precision_probe,
                "started_at": self.started_at,
                "wall_s": self.wall_seconds,
            },
        )


def _save_state(path: Path, state: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    torch.save(state, tmp)
    os.replace(tmp, path)


def _load_state(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def pick_precision(
    config: TrainConfig, model: torch.nn.Module, device: torch.device, size: int, classes: int
) -> tuple[str, dict]:
    """The precision to train in, and what a CPU probe measured to choose it."""
    if config.precision != "auto":
        return config.precision, {}
    if device.type == "cuda":
        return ("bf16" if torch.cuda.is_bf16_supported() else "fp16"), {}
    from bloodviz.speed import probe_cpu_precision

    return probe_cpu_precision(model, size=size, num_classes=classes, batch_size=config.batch_size)


def start_run(
    config: TrainConfig,
    data_root: str | None,
    checkpoints: Path | None,
    runs: Path | None,
    fresh: bool,
    progress: bool,
    log,
) -> TrainingRun:
    """Load the data, build the model and optimizer, and restore an interrupted run."""
    from bloodviz.models import model_info

    size = config.size or model_info(config.model).default_size
    dataset = get_dataset(config.dataset, size, data_root)
    config.size = dataset.size
    device = pick_device(config.device)
    name = config.checkpoint_name
    run_dir = Path(runs or runs_root()) / dataset.key / name
    state_path = run_dir / "state.pt"
    if fresh and state_path.exists():
        state_path.unlink()
    saved = _load_state(state_path) if state_path.exists() else None
    if saved is not None and not config.matches(saved["config"]):
        raise ResumeMismatch(
            f"a partial run with other settings is at {state_path}; rerun with the same "
            f"settings to continue it, or pass --fresh to discard it"
        )

    train_data = dataset.load_split(
        "train", limit=config.train_limit, seed=config.seed, progress=progress
    )
    val_data = dataset.load_split(
        "val", limit=config.limit_per_class, seed=config.seed, progress=progress
    )
    torch.manual_seed(config.seed)
    classes = len(dataset.class_names)
    model = create_model(
        config.model, num_classes=classes, in_size=dataset.size, pretrained=config.pretrained
    )
    if config.init_from and saved is None:
        _load_start_weights(model, config, dataset.key, checkpoints, log)
    probed = saved.get("precision_probe") if saved is not None else None
    if config.precision == "auto" and probed:  # a resumed run keeps what its probe chose
        from bloodviz.speed import precision_from_probe

        precision, probe = precision_from_probe(probed), probed
    else:
        precision, probe = pick_precision(config, model, device, dataset.size, classes)
    model = model.to(device).to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.lr, weight_decay=config.weight_decay
    )
    steps_per_epoch = math.ceil(len(train_data) / config.batch_size)
    if len(train_data) % config.batch_size == 1 and steps_per_epoch > 1:
        # a last batch of one image: batch norm after a flatten cannot normalise it
        # (blood-cells' 8,961 training images in batches of 64 or 128), so it is left out
        steps_per_epoch -= 1
    schedule = WarmupCosine(
        config.epochs * steps_per_epoch, int(config.warmup_epochs * steps_per_epoch)
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    state = RunState(epochs=config.epochs, precision_probe=probe)
    if saved is not None:
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        best = dict(saved["best"])
        state = RunState(
            epochs=saved.get("epochs", config.epochs),
            history=saved["history"],
            best_weights=best.pop("state", None),
            best=best,
            epoch=saved["epoch"],
            bad_epochs=saved["bad_epochs"],
            train_seconds=saved["train_seconds"],
            train_images=saved["train_images"],
            budget_planned=saved.get("budget_planned", False),
            precision_probe=probe,
        )
        schedule.total_steps = state.epochs * steps_per_epoch
        log(f"resuming from {state_path}: {state.epoch} of {state.epochs} epoch(s) done")
    log(
        f"{config.model} on {dataset.key}: {len(train_data)} train / {len(val_data)} val images, "
        f"device {device}, precision {precision}"
        + (f" (probe, train img/s: {probe})" if probe else "")
    )
    prep = _run_preprocessing(config, dataset, train_data)
    if prep.stain:  # the same for an image every epoch: normalised once, not per batch
        train_data = SplitArrays(
            train_data.ids, prep.normalise_stain(train_data.images), train_data.labels
        )
    training_run = TrainingRun(
        config=config,
        dataset=dataset,
        prep=prep,
        train_data=train_data,
        val_data=val_data,
        model=model,
        optimizer=optimizer,
        scheduler=scheduler,
        schedule=schedule,
        scaler=torch.amp.GradScaler(enabled=precision == "fp16" and device.type == "cuda"),
        device=device,
        precision=precision,
        state_path=state_path,
        local_weights=run_dir / WEIGHTS,
        out_dir=checkpoint_dir(dataset.key, name, checkpoints),
        steps_per_epoch=steps_per_epoch,
        state=state,
    )
    if saved is not None and "started_at" in saved:  # the card tells the whole run's times
        training_run.started_at = saved["started_at"]
        training_run.wall_before = saved["wall_s"]
    return training_run


def _load_start_weights(model, config: TrainConfig, dataset_key: str, checkpoints, log) -> None:
    """Fine-tuning: the weights of checkpoint ``config.init_from``, checked to fit before any
    training time is spent. ``name`` is a checkpoint of the same dataset and size;
    ``<dataset>-<size>/<name>`` one of another dataset (e.g. ``pbc-64/vgg16`` for a
    blood-cells run), whose output layer alone is left as initialised, since the class
    counts differ."""
    from bloodviz.checkpoints import CheckpointError, checkpoint_dir, open_checkpoint

    source_key, _, source_name = config.init_from.rpartition("/")
    source_key = source_key or dataset_key
    source = open_checkpoint(checkpoint_dir(source_key, source_name, checkpoints))
    if source.model != config.model:
        raise CheckpointError(
            f"--init-from {config.init_from} is a {source.model}, not a {config.model}"
        )
    if source_key == dataset_key:
        # load_model refuses a predictions-only checkpoint and weights that do not fit
        model.load_state_dict(source.load_model().state_dict())
    else:
        _load_all_but_the_output_layer(model, source, config.init_from)
    log(f"starting from the weights of {source_key}/{source_name}")


def _load_all_but_the_output_layer(model, source, init_from: str) -> None:
    """Copy every tensor of ``source``'s network into ``model`` but those of the output layer,
    the only ones allowed to differ, and then only in their first dimension (the classes)."""
    from bloodviz.checkpoints import CheckpointError

    theirs = source.load_model().state_dict()
    ours = model.state_dict()
    if set(theirs) != set(ours):
        raise CheckpointError(f"--init-from {init_from}: its layers are not this model's")
    kept = {}
    for name, tensor in theirs.items():
        target = ours[name]
        if tensor.shape == target.shape:
            kept[name] = tensor
        elif (
            tensor.dim() == target.dim()
            and tensor.shape[1:] == target.shape[1:]
            and tensor.shape[0] == source.preprocessing.num_classes
        ):
            kept[name] = target  # the output layer: one row a class, left as initialised
        else:
            raise CheckpointError(
                f"--init-from {init_from}: {name} is {tuple(tensor.shape)} there and "
                f"{tuple(target.shape)} here; only the output layer may differ"
            )
    model.load_state_dict(kept)


def _run_preprocessing(config: TrainConfig, dataset: BloodDataset, train_data) -> Preprocessing:
    """The dataset's preprocessing, with the run's stain normalisation fitted on (a seeded
    sample of) its training cells: the same every time, so a resumed run keeps it."""
    prep = dataset.preprocessing()
    if not config.stain_normalise:
        return prep
    if config.stain_normalise != "reinhard":
        raise ValueError(f"stain normalisation must be 'reinhard', not {config.stain_normalise!r}")
    from dataclasses import replace

    from bloodviz.stain import StainNormaliser

    rng = np.random.default_rng(config.seed)
    sample = rng.choice(len(train_data), size=min(2000, len(train_data)), replace=False)
    target = StainNormaliser.fit(train_data.images[np.sort(sample)])
    return replace(prep, stain=target.to_dict())


def _augment_batch(run: TrainingRun, batch: torch.Tensor, generator: torch.Generator):
    """A uint8 NHWC training batch (already stain-normalised where the run does that, in
    :func:`start_run`) augmented as the network sees it; float NCHW in [0, 255]."""
    config = run.config
    if config.robust_augment is not None:
        from bloodviz.stain import RobustAugment, robust_augment

        settings = RobustAugment.from_dict(config.robust_augment)
        return robust_augment(batch.permute(0, 3, 1, 2).float(), generator, settings)
    x = _augment(batch, generator) if config.augment else batch.float()
    return x.permute(0, 3, 1, 2)


def plan_epochs(
    budget_s: float, spent_s: float, step_s: float, steps_per_epoch: int, val_s: float, cap: int
) -> int:
    """Whole epochs that fit in what is left of the budget (at least 1, at most ``cap``)."""
    epoch_s = step_s * steps_per_epoch + val_s
    return max(1, min(cap, int((budget_s - spent_s) // epoch_s)))


def train_one_epoch(run: TrainingRun, epoch: int, progress: bool, log) -> dict:
    """One pass over the shuffled training split; returns loss, accuracy, images and seconds."""
    config, model, device = run.config, run.model, run.device
    torch.manual_seed(config.seed * 10007 + epoch)
    generator = torch.Generator().manual_seed(config.seed * 10007 + epoch)
    order = torch.randperm(len(run.train_data), generator=generator)
    images = torch.from_numpy(run.train_data.images)
    labels = torch.from_numpy(run.train_data.labels)
    mean = torch.tensor(run.prep.mean, device=device).view(1, 3, 1, 1) * 255
    std = torch.tensor(run.prep.std, device=device).view(1, 3, 1, 1) * 255
    autocast = run.precision in ("bf16", "fp16")
    amp_dtype = torch.bfloat16 if run.precision == "bf16" else torch.float16
    plan_budget = bool(config.time_budget) and not run.state.budget_planned
    probe_steps = min(BUDGET_PROBE_STEPS, max(1, run.schedule.warmup_steps))

    model.train()
    loss_sum, correct, seen = 0.0, 0, 0
    tick = time.time()
    bar = tqdm(
        range(run.steps_per_epoch), desc=f"epoch {epoch + 1}", leave=False, disable=not progress
    )
    for step in bar:
        idx = order[step * config.batch_size : (step + 1) * config.batch_size]
        batch = images[idx]
        x = _augment_batch(run, batch, generator).to(device)
        x = ((x - mean) / std).contiguous(memory_format=torch.channels_last)
        y = labels[idx].to(device)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=autocast):
            logits = model(x)
            loss = F.cross_entropy(logits.float(), y, label_smoothing=config.label_smoothing)
            # study-specific terms: Keras-style L2 penalties, an autoencoder's MSE
            extra = model.auxiliary_loss(y) if hasattr(model, "auxiliary_loss") else None
            if extra is not None:
                loss = loss + extra
        run.optimizer.zero_grad(set_to_none=True)
        run.scaler.scale(loss).backward()
        if config.grad_clip:
            run.scaler.unscale_(run.optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        run.scaler.step(run.optimizer)
        run.scaler.update()
        run.scheduler.step()
        loss_sum += loss.item() * len(idx)
        correct += int((logits.argmax(1) == y).sum())
        seen += len(idx)
        bar.set_postfix(loss=f"{loss_sum / seen:.3f}")
        if plan_budget and step + 1 == probe_steps:
            _plan_budget(run, (time.time() - tick) / probe_steps, log)
            plan_budget = False
            model.train()
    seconds = time.time() - tick
    return {"loss": loss_sum / seen, "accuracy": correct / seen, "images": seen, "seconds": seconds}


def _plan_budget(run: TrainingRun, step_s: float, log) -> None:
    """Set the run's length from its first steps' speed and a timed validation batch."""
    budget = parse_duration(run.config.time_budget)
    sample = run.val_data.images[:256]
    tick = time.time()
    predict_probs(run.model, run.prep, sample, device=run.device)
    val_s = (time.time() - tick) * len(run.val_data) / max(1, len(sample))
    spent = time.time() - run.started
    epochs = plan_epochs(budget, spent, step_s, run.steps_per_epoch, val_s, run.config.epochs)
    run.state.epochs = epochs
    run.state.budget_planned = True
    run.schedule.total_steps = epochs * run.steps_per_epoch
    log(
        f"time budget {run.config.time_budget}: {step_s:.2f} s/step, validation {val_s:.0f} s "
        f"-> {epochs} epoch(s) (cap {run.config.epochs})"
    )


def validate(run: TrainingRun) -> tuple[float, float, np.ndarray]:
    """Validation accuracy, loss and probabilities of the current weights."""
    probs = predict_probs(run.model, run.prep, run.val_data.images, device=run.device)
    labels = run.val_data.labels
    accuracy = float(np.mean(probs.argmax(1) == labels))
    loss = float(-np.mean(np.log(probs[np.arange(len(labels)), labels] + 1e-12)))
    return accuracy, loss, probs


def train(
    config: TrainConfig,
    data_root: str | None = None,
    checkpoints: Path | None = None,
    runs: Path | None = None,
    fresh: bool = False,
    progress: bool = True,
    command: str | None = None,
    log=print,
) -> Path:
    """Train ``config.model`` (a network) on ``config.dataset``; return its checkpoint folder."""
    run = start_run(config, data_root, checkpoints, runs, fresh, progress, log)
    state = run.state
    stopped_early = False
    bar = tqdm(
        total=state.epochs, initial=state.epoch, desc=f"train {config.model}", disable=not progress
    )
    epoch = state.epoch
    while epoch < state.epochs:
        if state.bad_epochs >= config.patience:
            stopped_early = True
            break
        stats = train_one_epoch(run, epoch, progress, log)
        bar.total = state.epochs  # a time budget may have just planned the run's length
        state.train_seconds += stats["seconds"]
        state.train_images += stats["images"]
        val_acc, val_loss, _ = validate(run)
        row = {
            "epoch": epoch + 1,
            "train_loss": stats["loss"],
            "train_accuracy": stats["accuracy"],
            "val_loss": val_loss,
            "val_accuracy": val_acc,
            "lr": run.optimizer.param_groups[0]["lr"],
            "seconds": stats["seconds"],
            "precision": run.precision,  # a resumed run may have changed it
        }
        state.record(row, run.model)
        bar.update(1)
        bar.set_postfix(val_acc=f"{val_acc:.4f}", best=f"{state.best['val_accuracy']:.4f}")
        log(
            f"epoch {epoch + 1}/{state.epochs}: train loss {row['train_loss']:.4f} "
            f"acc {row['train_accuracy']:.4f} | val loss {val_loss:.4f} acc {val_acc:.4f} "
            f"| {row['seconds']:.0f}s"
        )
        run.save_state()
        epoch += 1
    bar.close()
    if state.best_weights is None:
        raise RuntimeError("training ran no epoch; nothing to save")
    return finish_run(run, stopped_early, progress, command, log)


def finish_run(run: TrainingRun, stopped_early: bool, progress: bool, command, log) -> Path:
    """Evaluate the best epoch's weights on every split and write the checkpoint."""
    config, state, prep, dataset = run.config, run.state, run.prep, run.dataset
    model = run.model
    model.load_state_dict(state.best_weights)
    model = model.cpu().to(memory_format=torch.contiguous_format)
    eval_data = {
        split: dataset.load_split(
            split, limit=config.limit_per_class, seed=config.seed, progress=progress
        )
        for split in dataset.eval_splits
    }
    eval_data["val"] = run.val_data
    if not config.cpu_budget:
        fp16, val_probs = _fp16_check(config, model, prep, run.val_data.images, dataset)
    else:  # a CPU-budget run's weights are never shipped: keep fp32, skip the check's pass
        fp16, val_probs = False, predict_probs(model, prep, run.val_data.images)
    if fp16:
        # ship and cache exactly what the fp16 file will reproduce
        model.load_state_dict(_fp16_rounded(model.state_dict()))
    predictions = {
        split: Predictions(
            ids=data.ids,
            labels=data.labels,
            probs=val_probs if split == "val" else predict_probs(model, prep, data.images),
            class_names=dataset.class_names,
        )
        for split, data in eval_data.items()
    }
    metrics = summarise(predictions, config.seed)
    card = RunCard.from_dict(
        {
            **run_identity(config, dataset),
            "device": str(run.device),
            "precision": run.precision,
            "weights_dtype": "fp16" if fp16 else "fp32",
            "hardware": hardware_info(run.device),
            "versions": versions(),
            "started_at": run.started_at,
            "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "wall_time_s": round(run.wall_seconds, 1),
            "train_time_s": round(state.train_seconds, 1),
            "train_images_per_s": round(state.train_images / state.train_seconds, 1)
            if state.train_seconds
            else None,
            "epochs_run": len(state.history),
            "epochs_planned": state.epochs if config.time_budget else None,
            "stopped_early": stopped_early,
            "best_epoch": state.best["epoch"],
            "best_val_accuracy": state.best["val_accuracy"],
            "n_samples": {
                "train": len(run.train_data),
                **{s: len(d) for s, d in eval_data.items()},
            },
            "parameters": sum(p.numel() for p in model.parameters()),
            "command": command or " ".join([Path(sys.executable).name, *sys.argv]),
            "precision_probe": state.precision_probe,
        }
    )
    out_dir = write_checkpoint(
        run.out_dir,
        run=card,
        preprocessing=prep,
        predictions=predictions,
        metrics=metrics,
        history=pd.DataFrame(state.history),
        weights=model.state_dict(),
        fp16=fp16,
        local_weights=run.local_weights,
    )
    run.state_path.unlink(missing_ok=True)
    for split, m in metrics.items():
        log(f"{split}: accuracy {m['accuracy']:.4f}  macro-F1 {m['macro_f1']:.4f}  n={m['n']}")
    log(f"checkpoint written to {out_dir}")
    return out_dir


def _fp16_rounded(state: dict) -> dict:
    """The weights as an fp16 file will give them back (floats rounded, read as fp32)."""
    return {k: (v.half().float() if v.is_floating_point() else v) for k, v in state.items()}


def _fp16_check(config: TrainConfig, model, prep, images, dataset: BloodDataset):
    """Whether fp16 weights keep every validation prediction, and the validation
    probabilities of the weights that will ship (so they are not computed twice)."""
    reference = predict_probs(model, prep, images)
    if len(images) == 0:
        return True, reference
    half = create_model(
        config.model,
        num_classes=len(dataset.class_names),
        in_size=prep.size,
        pretrained=LAYOUT_ONLY if config.pretrained else False,
    )
    half.load_state_dict(_fp16_rounded(model.state_dict()))
    rounded = predict_probs(half, prep, images)
    if np.array_equal(reference.argmax(1), rounded.argmax(1)):
        return True, rounded
    return False, reference
