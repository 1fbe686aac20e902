"""Training: seeded, resumable, best-on-validation, written as an atomic checkpoint.

Resumable: after every epoch the whole training state goes to ``runs/<dataset>-<size>/<model>/
state.pt`` (atomic replace). Rerunning the same command after Ctrl-C or a kill continues from
the last finished epoch, so at most one epoch is lost. Each epoch's shuffling, augmentation and
dropout are seeded from (seed, epoch), so a resumed run follows the same path as an
uninterrupted one.
"""

from __future__ import annotations

import copy
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, fields
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from bloodviz.checkpoints import (
    FORMAT,
    WEIGHTS,
    Predictions,
    checkpoint_dir,
    checkpoint_name,
    keep_weights_local,
    save_predictions,
    save_weights,
    why_not_shipped,
    write_atomic,
    write_json,
)
from bloodviz.data import BloodDataset, get_dataset
from bloodviz.inference import (
    hardware_info,
    pick_device,
    pick_precision,
    predict_probs,
    versions,
)
from bloodviz.metrics import classification_summary
from bloodviz.models import create_model, model_info
from bloodviz.models.registry import LAYOUT_ONLY
from bloodviz.paths import runs_root


@dataclass
class TrainConfig:
    model: str
    dataset: str
    size: int | None = None
    epochs: int = 30
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup_epochs: float = 1.0
    label_smoothing: float = 0.05
    patience: int = 8
    augment: bool = True
    seed: int = 0
    limit_per_class: int | None = None
    # A CPU-budget run: fewer training images, but val and test stay whole, so its
    # numbers stay comparable with every other model's (unlike limit_per_class).
    train_limit_per_class: int | None = None
    pretrained: bool = False
    precision: str = "auto"
    device: str = "auto"

    @classmethod
    def for_model(cls, model: str, dataset: str, **settings) -> TrainConfig:
        """Defaults, then the model's recipe, then every setting given (``None`` = not given)."""
        chosen = {**model_info(model).recipe}
        chosen.update({k: v for k, v in settings.items() if v is not None})
        return cls(model=model, dataset=dataset, **chosen)

    @property
    def train_limit(self) -> int | None:
        """Images a class the training split is cut to (a CPU-budget run's subset first)."""
        return self.train_limit_per_class or self.limit_per_class

    @property
    def cpu_budget(self) -> bool:
        return self.train_limit_per_class is not None

    def resume_key(self) -> dict:
        """Settings that must match for a saved state to be continued."""
        key = asdict(self)
        key.pop("device")
        key.pop("precision")
        return key

    def matches(self, saved: dict) -> bool:
        """Whether settings saved by an earlier run (a resume key, or a run card's config)
        are these, device and precision aside. A setting added to TrainConfig after that run
        counts as its default, so older partial runs and checkpoints stay current."""
        current = self.resume_key()
        defaults = {f.name: f.default for f in fields(self)}
        filled = {**{k: defaults[k] for k in current if k not in saved}, **saved}
        filled.pop("device", None)
        filled.pop("precision", None)
        return filled == current


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


def _lr_lambda(total_steps: int, warmup_steps: int):
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor


def _save_state(path: Path, state: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    torch.save(state, tmp)
    os.replace(tmp, path)


def _load_state(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


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
    """Train ``config.model`` on ``config.dataset`` and write its checkpoint; return its folder."""
    info = model_info(config.model)
    if info.trainer == "svm":
        from bloodviz.svm import fit_feature_svm

        return fit_feature_svm(config, data_root, checkpoints, progress, command, log)
    dataset = get_dataset(config.dataset, config.size or info.default_size, data_root)
    config.size = dataset.size
    device = pick_device(config.device)
    precision = pick_precision(config.precision, device)
    name = checkpoint_name(config.model, config.pretrained)
    out_dir = checkpoint_dir(dataset.key, name, checkpoints)
    state_path = Path(runs or runs_root()) / dataset.key / name / "state.pt"
    if fresh and state_path.exists():
        state_path.unlink()

    started = time.time()
    started_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    limit = config.limit_per_class
    train_data = dataset.load_split(
        "train", limit=config.train_limit, seed=config.seed, progress=progress
    )
    val_data = dataset.load_split("val", limit=limit, seed=config.seed, progress=progress)
    prep = dataset.preprocessing()
    log(
        f"{config.model} on {dataset.key}: {len(train_data)} train / {len(val_data)} val images, "
        f"device {device}, precision {precision}"
    )

    torch.manual_seed(config.seed)
    model = create_model(
        config.model,
        num_classes=len(dataset.class_names),
        in_size=dataset.size,
        pretrained=config.pretrained,
    )
    model = model.to(device).to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.lr, weight_decay=config.weight_decay
    )
    steps_per_epoch = math.ceil(len(train_data) / config.batch_size)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        _lr_lambda(config.epochs * steps_per_epoch, int(config.warmup_epochs * steps_per_epoch)),
    )
    history: list[dict] = []
    best = {"val_accuracy": -1.0, "val_loss": math.inf, "epoch": 0, "state": None}
    start_epoch = 0
    bad_epochs = 0
    train_seconds = 0.0
    train_images = 0

    if state_path.exists():
        saved = _load_state(state_path)
        if not config.matches(saved["config"]):
            raise ResumeMismatch(
                f"a partial run with other settings is at {state_path}; rerun with the same "
                f"settings to continue it, or pass --fresh to discard it"
            )
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        history = saved["history"]
        best = saved["best"]
        start_epoch = saved["epoch"]
        bad_epochs = saved["bad_epochs"]
        train_seconds = saved["train_seconds"]
        train_images = saved["train_images"]
        log(f"resuming from {state_path}: {start_epoch} epoch(s) done")

    train_images_u8 = torch.from_numpy(train_data.images)
    train_labels = torch.from_numpy(train_data.labels)
    val_labels = val_data.labels
    autocast = precision in ("bf16", "fp16")
    amp_dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    scaler = torch.amp.GradScaler(enabled=precision == "fp16" and device.type == "cuda")
    mean = torch.tensor(prep.mean, device=device).view(1, 3, 1, 1) * 255
    std = torch.tensor(prep.std, device=device).view(1, 3, 1, 1) * 255

    stopped_early = False
    epoch_bar = tqdm(
        range(start_epoch, config.epochs),
        initial=start_epoch,
        total=config.epochs,
        desc=f"train {config.model}",
        disable=not progress,
    )
    for epoch in epoch_bar:
        if bad_epochs >= config.patience:
            stopped_early = True
            break
        torch.manual_seed(config.seed * 10007 + epoch)
        generator = torch.Generator().manual_seed(config.seed * 10007 + epoch)
        order = torch.randperm(len(train_data), generator=generator)
        model.train()
        epoch_loss, epoch_correct, seen = 0.0, 0, 0
        tick = time.time()
        step_bar = tqdm(
            range(steps_per_epoch), desc=f"epoch {epoch + 1}", leave=False, disable=not progress
        )
        for step in step_bar:
            idx = order[step * config.batch_size : (step + 1) * config.batch_size]
            batch = train_images_u8[idx]
            x = _augment(batch, generator) if config.augment else batch.float()
            x = x.permute(0, 3, 1, 2).to(device)
            x = ((x - mean) / std).contiguous(memory_format=torch.channels_last)
            y = train_labels[idx].to(device)
            with torch.autocast(device.type, dtype=amp_dtype, enabled=autocast):
                logits = model(x)
                loss = F.cross_entropy(logits.float(), y, label_smoothing=config.label_smoothing)
                # study-specific terms: Keras-style L2 penalties, an autoencoder's MSE
                extra = model.auxiliary_loss(y) if hasattr(model, "auxiliary_loss") else None
                if extra is not None:
                    loss = loss + extra
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            epoch_loss += loss.item() * len(idx)
            epoch_correct += int((logits.argmax(1) == y).sum())
            seen += len(idx)
            step_bar.set_postfix(loss=f"{epoch_loss / seen:.3f}")
        train_seconds += time.time() - tick
        train_images += seen

        val_probs = predict_probs(model, prep, val_data.images, device=device)
        val_acc = float(np.mean(val_probs.argmax(1) == val_labels))
        val_loss = float(
            -np.mean(np.log(val_probs[np.arange(len(val_labels)), val_labels] + 1e-12))
        )
        row = {
            "epoch": epoch + 1,
            "train_loss": epoch_loss / seen,
            "train_accuracy": epoch_correct / seen,
            "val_loss": val_loss,
            "val_accuracy": val_acc,
            "lr": optimizer.param_groups[0]["lr"],
            "seconds": time.time() - tick,
        }
        history.append(row)
        improved = val_acc > best["val_accuracy"] or (
            val_acc == best["val_accuracy"] and val_loss < best["val_loss"]
        )
        if improved:
            best = {
                "val_accuracy": val_acc,
                "val_loss": val_loss,
                "epoch": epoch + 1,
                "state": copy.deepcopy({k: v.cpu() for k, v in model.state_dict().items()}),
            }
            bad_epochs = 0
        else:
            bad_epochs += 1
        epoch_bar.set_postfix(val_acc=f"{val_acc:.4f}", best=f"{best['val_accuracy']:.4f}")
        log(
            f"epoch {epoch + 1}/{config.epochs}: train loss {row['train_loss']:.4f} "
            f"acc {row['train_accuracy']:.4f} | val loss {val_loss:.4f} acc {val_acc:.4f} "
            f"| {row['seconds']:.0f}s"
        )
        _save_state(
            state_path,
            {
                "config": config.resume_key(),
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "history": history,
                "best": best,
                "epoch": epoch + 1,
                "bad_epochs": bad_epochs,
                "train_seconds": train_seconds,
                "train_images": train_images,
            },
        )

    if best["state"] is None:
        raise RuntimeError("training ran no epoch; nothing to save")
    model.load_state_dict(best["state"])
    model = model.cpu().to(memory_format=torch.contiguous_format)

    eval_data = {
        split: dataset.load_split(split, limit=limit, seed=config.seed, progress=progress)
        for split in dataset.eval_splits
    }
    eval_data["val"] = val_data
    if not config.cpu_budget:
        fp16, val_probs = _fp16_check(
            config.model, model, prep, val_data.images, len(dataset.class_names), config.pretrained
        )
    else:  # a CPU-budget run's weights are never shipped: keep fp32, skip the check's pass
        fp16, val_probs = False, predict_probs(model, prep, val_data.images)
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
    finished_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    run_card = {
        **run_card_identity(config, dataset),
        "device": str(device),
        "precision": precision,
        "weights_dtype": "fp16" if fp16 else "fp32",
        "hardware": hardware_info(device),
        "versions": versions(),
        "started_at": started_at,
        "finished_at": finished_at,
        "wall_time_s": round(time.time() - started, 1),
        "train_time_s": round(train_seconds, 1),
        "train_images_per_s": round(train_images / train_seconds, 1) if train_seconds else None,
        "epochs_run": len(history),
        "stopped_early": stopped_early,
        "best_epoch": best["epoch"],
        "best_val_accuracy": best["val_accuracy"],
        "n_samples": {"train": len(train_data), **{s: len(d) for s, d in eval_data.items()}},
        "parameters": sum(p.numel() for p in model.parameters()),
        "command": command or " ".join([Path(sys.executable).name, *sys.argv]),
    }

    local_weights = Path(runs or runs_root()) / dataset.key / name / WEIGHTS

    def fill(folder: Path) -> None:
        save_weights(model.state_dict(), folder / WEIGHTS, config.model, fp16=fp16)
        size_mb = (folder / WEIGHTS).stat().st_size / 2**20
        reason = why_not_shipped(size_mb, "fp16" if fp16 else "fp32", config.cpu_budget)
        if reason:
            # A predictions-only checkpoint: the weights stay on this machine, outside the
            # store, and the run card says so (the app then skips Grad-CAM and upload).
            run_card["weights_not_shipped"] = keep_weights_local(folder, local_weights, reason)
        else:
            local_weights.unlink(missing_ok=True)
        prep.save(folder / "preprocessing.json")
        for split, preds in predictions.items():
            save_predictions(folder / f"predictions-{split}.csv", preds)
        pd.DataFrame(history).to_csv(folder / "history.csv", index=False)
        write_json(folder / "metrics.json", metrics)
        write_json(folder / "run.json", run_card)

    write_atomic(out_dir, fill)
    state_path.unlink(missing_ok=True)
    for split, m in metrics.items():
        log(f"{split}: accuracy {m['accuracy']:.4f}  macro-F1 {m['macro_f1']:.4f}  n={m['n']}")
    log(f"checkpoint written to {out_dir}")
    return out_dir


def summarise(predictions: dict[str, Predictions], seed: int = 0) -> dict:
    """The metrics.json of a checkpoint: one classification summary per split."""
    return {
        split: classification_summary(p.labels, p.probs, p.class_names, seed=seed)
        for split, p in predictions.items()
    }


def run_card_identity(config: TrainConfig, dataset: BloodDataset) -> dict:
    """The first fields of every run card: what was trained, on what, with which settings."""
    info = model_info(config.model)
    return {
        "format": FORMAT,
        "dataset": dataset.name,
        "size": dataset.size,
        "model": config.model,
        "display_name": info.display_name,
        "family": info.family,
        "pretrained": config.pretrained,
        "pretrained_source": info.pretrained_source if config.pretrained else "",
        "adaptation": info.adaptation,
        "dataset_description": dataset.description,
        "config": asdict(config),
    }


def _fp16_rounded(state: dict) -> dict:
    """The weights as an fp16 file will give them back (floats rounded, read as fp32)."""
    return {k: (v.half().float() if v.is_floating_point() else v) for k, v in state.items()}


def _fp16_check(name, model, prep, images, num_classes, pretrained=False):
    """Whether fp16 weights keep every validation prediction, and the validation
    probabilities of the weights that will ship (so they are not computed twice)."""
    reference = predict_probs(model, prep, images)
    if len(images) == 0:
        return True, reference
    half = create_model(
        name,
        num_classes=num_classes,
        in_size=prep.size,
        pretrained=LAYOUT_ONLY if pretrained else False,
    )
    half.load_state_dict(_fp16_rounded(model.state_dict()))
    rounded = predict_probs(half, prep, images)
    if np.array_equal(reference.argmax(1), rounded.argmax(1)):
        return True, rounded
    return False, reference


def describe(dataset: BloodDataset) -> str:
    return f"{dataset.name} at {dataset.size} px: {dataset.description}"
