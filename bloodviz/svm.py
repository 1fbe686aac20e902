"""Study 003's "ResNet50 features + one-vs-one SVM", as a bloodviz checkpoint.

A network's pooled features (2048 for ResNet-50) are standardised and fed to scikit-learn's
RBF ``SVC``, which trains one classifier per pair of classes (one-vs-one; its class scores
are the pairwise votes). Probabilities come from sigmoid calibration on cross-validated
scores (``CalibratedClassifierCV(SVC(), ensemble=False)``, scikit-learn's replacement for
``SVC(probability=True)``). With ``--pretrained`` the features are ImageNet's, as in
the study; otherwise they come from bloodviz's own ``resnet50`` checkpoint on the same data,
trained from scratch (offline there are no ImageNet weights), and the run card says so.

The checkpoint ships predictions, metrics and a run card but no weights: a scikit-learn model
can only be stored with pickle, which bloodviz never loads (unsafe). Refitting is one command
and takes about a minute on a CPU.
"""

from __future__ import annotations

import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from bloodviz.checkpoints import (
    CheckpointError,
    Predictions,
    checkpoint_dir,
    find_checkpoint,
    write_checkpoint,
)
from bloodviz.data import get_dataset
from bloodviz.inference import hardware_info, versions
from bloodviz.metrics import summarise
from bloodviz.models import create_model, model_info
from bloodviz.preprocess import Preprocessing
from bloodviz.runcard import RunCard, TrainConfig, run_identity

BACKBONE = "resnet50"


@torch.inference_mode()
def extract_features(
    network: torch.nn.Module,
    prep: Preprocessing,
    images: np.ndarray,
    batch_size: int = 128,
    desc: str | None = None,
) -> np.ndarray:
    """Pooled features (N x D, float32) of uint8 NHWC images, in fp32 on CPU."""
    network = network.eval()
    out = []
    starts = range(0, len(images), batch_size)
    for start in tqdm(starts, desc=desc, disable=desc is None, unit="batch", leave=False):
        batch = prep.normalize(images[start : start + batch_size])
        out.append(network(batch).float().flatten(1).numpy())
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def make_svm(seed: int = 0):
    """Standardised features into a calibrated RBF SVC (trained one-vs-one by libsvm)."""
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC

    # decision_function_shape only reshapes the scores the calibrator reads; training stays OvO
    svc = SVC(kernel="rbf", decision_function_shape="ovr", random_state=seed)
    return make_pipeline(StandardScaler(), CalibratedClassifierCV(svc, ensemble=False))


def support_vectors(fitted) -> int:
    """Support vectors of a fitted :func:`make_svm` pipeline."""
    return int(fitted[-1].calibrated_classifiers_[0].estimator.n_support_.sum())


def feature_network(dataset: str, size: int, num_classes: int, pretrained: bool, root=None):
    """ImageNet's ResNet-50 features, or those of our resnet50 checkpoint on this data."""
    if pretrained:
        return create_model(BACKBONE, num_classes=0, in_size=size, pretrained=True), (
            "ImageNet resnet50 (timm)"
        )
    try:
        ckpt = find_checkpoint(dataset, BACKBONE, size, root)
    except CheckpointError as exc:
        raise ValueError(
            f"resnet50_svm takes its features from the resnet50 checkpoint on {dataset}-{size}, "
            f"which is missing ({exc}). Train it first: python -m bloodviz train --model "
            f"resnet50 --dataset {dataset} --size {size}, or pass --pretrained"
        ) from exc
    network = ckpt.load_model()
    network.reset_classifier(0)  # timm: the pooled 2048 features instead of logits
    return network, f"bloodviz resnet50 checkpoint, trained from scratch ({ckpt.path})"


def fit_feature_svm(
    config: TrainConfig,
    data_root: str | None = None,
    checkpoints: Path | None = None,
    runs: Path | None = None,
    fresh: bool = False,
    progress: bool = True,
    command: str | None = None,
    log=print,
) -> Path:
    """Fit the SVM on one dataset's training features and write a predictions-only checkpoint.

    The SVM fits in one go, so ``runs`` and ``fresh`` (a network's resume state) do not
    apply; they are accepted so that :func:`bloodviz.fit.fit` calls every trainer alike.
    Of ``config``, epochs, batch size and learning rate
    do not apply, ``train_limit_per_class`` bounds the SVM's training set (its cost grows
    with the square of it), and ``seed`` fixes the subset and the probability calibration.
    """
    info = model_info(config.model)
    dataset = get_dataset(config.dataset, config.size or info.default_size, data_root)
    config.size = dataset.size
    prep = dataset.preprocessing()
    started = time.time()
    started_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    torch.manual_seed(config.seed)
    network, source = feature_network(
        dataset.name, dataset.size, len(dataset.class_names), config.pretrained, checkpoints
    )
    limit = config.limit_per_class
    train_data = dataset.load_split(
        "train", limit=config.train_limit, seed=config.seed, progress=progress
    )
    splits = {"val": dataset.load_split("val", limit=limit, seed=config.seed, progress=progress)}
    for split in dataset.eval_splits:
        splits[split] = dataset.load_split(split, limit=limit, seed=config.seed, progress=progress)
    log(f"{config.model} on {dataset.key}: features of {len(train_data)} train images ({source})")

    def features(images: np.ndarray, split: str) -> np.ndarray:
        return extract_features(network, prep, images, desc=split if progress else None)

    fit_started = time.time()
    train_features = features(train_data.images, "train")
    svm = make_svm(config.seed).fit(train_features, train_data.labels)
    fit_seconds = time.time() - fit_started
    log(f"SVM fitted on {train_features.shape} features in {fit_seconds:.0f}s")

    predictions = {}
    for split, data in splits.items():
        probs = svm.predict_proba(features(data.images, split)).astype(np.float64)
        predictions[split] = Predictions(
            ids=data.ids, labels=data.labels, probs=probs, class_names=dataset.class_names
        )
    metrics = summarise(predictions, config.seed)
    n_support = support_vectors(svm)
    name = config.checkpoint_name
    out_dir = checkpoint_dir(dataset.key, name, checkpoints)
    refit = (
        f"python -m bloodviz train --model {config.model} --dataset {dataset.name} "
        f"--size {dataset.size}"
        + (f" --train-subset {config.train_limit_per_class}" if config.cpu_budget else "")
        + (" --pretrained" if config.pretrained else "")
    )
    run_card = {
        **run_identity(config, dataset),
        "features": source,
        "classifier": f"StandardScaler + SVC(rbf, C=1, one-vs-one, sigmoid-calibrated), "
        f"{n_support} support vectors",
        "device": "cpu",
        "precision": "fp32",
        "weights_dtype": None,
        "weights_not_shipped": "a scikit-learn SVM can only be saved with pickle, which bloodviz "
        f"never loads (unsafe); `{refit}` refits it ({fit_seconds:.0f}s here)",
        "hardware": hardware_info(torch.device("cpu")),
        "versions": versions(),
        "started_at": started_at,
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "wall_time_s": round(time.time() - started, 1),
        "train_time_s": round(fit_seconds, 1),
        "train_images_per_s": None,
        "epochs_run": None,
        "stopped_early": False,
        "best_epoch": None,
        "best_val_accuracy": metrics["val"]["accuracy"],
        "n_samples": {"train": len(train_data), **{s: len(d) for s, d in splits.items()}},
        "parameters": sum(p.numel() for p in network.parameters()),
        "command": command or " ".join([Path(sys.executable).name, *sys.argv]),
    }

    write_checkpoint(
        out_dir,
        run=RunCard.from_dict(run_card),
        preprocessing=prep,
        predictions=predictions,
        metrics=metrics,
    )
    for split, m in metrics.items():
        log(f"{split}: accuracy {m['accuracy']:.4f}  macro-F1 {m['macro_f1']:.4f}  n={m['n']}")
    log(f"checkpoint (predictions only) written to {out_dir}")
    return out_dir
