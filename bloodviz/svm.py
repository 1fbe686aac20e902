"""Study 003's "ResNet50 features + one-vs-one SVM", as a bloodviz checkpoint.

A network's pooled features (2048 for ResNet-50) are standardised and fed to scikit-learn's
RBF ``SVC``, which trains one classifier per pair of classes (one-vs-one; its class scores
are the pairwise votes). Probabilities come from sigmoid calibration on cross-validated
scores (``CalibratedClassifierCV(SVC(), ensemble=False)``, scikit-learn's replacement for
``SVC(probability=True)``). With ``--pretrained`` the features are ImageNet's, as in
the study; otherwise they come from bloodviz's own ``resnet50`` checkpoint on the same data,
trained from scratch (offline there are no ImageNet weights), and the run card says so.

A scikit-learn model can only be stored with pickle, which bloodviz never loads (unsafe), so
the fitted pipeline's arrays become :class:`bloodviz.models.svm_head.SVMHead`, a torch module
that recomputes its probabilities, and the checkpoint ships that head alone (a few MB) as
safetensors, on top of the same store's resnet50 checkpoint: the weights record that
checkpoint's SHA-256, and a changed resnet50 is refused with the refit command. The checkpoint
then loads as the resnet50 with the SVM as its ``fc``, so Grad-CAM, uploads and the ONNX export
run on it. Its predictions are the head's own; the fit fails if they drift from
scikit-learn's. With ImageNet features (``--pretrained``) it stays predictions-only.
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
    Checkpoint,
    CheckpointError,
    Predictions,
    checkpoint_dir,
    find_checkpoint,
    weights_digest,
    write_checkpoint,
)
from bloodviz.data import get_dataset
from bloodviz.inference import hardware_info, versions
from bloodviz.metrics import summarise
from bloodviz.models import create_model, model_info
from bloodviz.models.svm_head import SVMHead
from bloodviz.preprocess import Preprocessing
from bloodviz.runcard import RunCard, TrainConfig, run_identity

BACKBONE = "resnet50"
HEAD = "fc"  # the SVM sits where timm's ResNet has its classifier
MAX_HEAD_DRIFT = 1e-4  # largest |p_torch - p_sklearn| a shipped head may show


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
    """ImageNet's ResNet-50 features, or those of our resnet50 checkpoint on this data; with
    where they came from, and that checkpoint (None for ImageNet's)."""
    if pretrained:
        network = create_model(BACKBONE, num_classes=0, in_size=size, pretrained=True)
        return network, "ImageNet resnet50 (timm)", None
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
    return network, f"bloodviz resnet50 checkpoint, trained from scratch ({ckpt.path})", ckpt


def head_weights(fitted, features_ckpt: Checkpoint, refit: str) -> tuple[dict, dict]:
    """The state dict of a fitted pipeline's :class:`SVMHead` under ``fc.``, and the metadata
    that ties it to the feature checkpoint it was fitted on."""
    head = SVMHead.from_fitted(fitted)
    state = {f"{HEAD}.{name}": tensor for name, tensor in head.state_dict().items()}
    metadata = {
        "head": HEAD,
        "features_from": f"{features_ckpt.dataset_key}/{features_ckpt.name}",
        "features_sha256": weights_digest(features_ckpt.weights_path),
        "refit": refit,
    }
    return state, metadata


def head_probabilities(fitted, features: np.ndarray) -> np.ndarray:
    """What the shipped head gives for ``features`` (float64), to check it against the fit."""
    with torch.inference_mode():
        head = SVMHead.from_fitted(fitted)
        return head.probabilities(torch.from_numpy(features)).numpy().astype(np.float64)


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
    """Fit the SVM on one dataset's training features and write its checkpoint (the head).

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
    network, source, features_ckpt = feature_network(
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
    drift = 0.0
    for split, data in splits.items():
        split_features = features(data.images, split)
        probs = svm.predict_proba(split_features).astype(np.float64)
        if features_ckpt is not None:  # the shipped head's own probabilities, checked
            ours = head_probabilities(svm, split_features.astype(np.float64))
            drift = max(drift, float(np.abs(ours - probs).max(initial=0.0)))
            if drift > MAX_HEAD_DRIFT:
                raise RuntimeError(
                    f"the SVM head's probabilities drift from scikit-learn's by {drift:.2e} "
                    f"on {split} (at most {MAX_HEAD_DRIFT:.0e}); nothing was written"
                )
            probs = ours
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
        "weights_dtype": "fp64 SVM head" if features_ckpt is not None else None,
        "weights_not_shipped": ""
        if features_ckpt is not None
        else "a scikit-learn SVM can only be saved with pickle, which bloodviz never loads "
        f"(unsafe), and ImageNet's features are not shipped; `{refit}` refits it "
        f"({fit_seconds:.0f}s here)",
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

    weights, weights_extra = (
        head_weights(svm, features_ckpt, refit) if features_ckpt is not None else (None, None)
    )
    write_checkpoint(
        out_dir,
        run=RunCard.from_dict(run_card),
        preprocessing=prep,
        predictions=predictions,
        metrics=metrics,
        weights=weights,
        weights_extra=weights_extra,
    )
    for split, m in metrics.items():
        log(f"{split}: accuracy {m['accuracy']:.4f}  macro-F1 {m['macro_f1']:.4f}  n={m['n']}")
    if weights is None:
        log(f"checkpoint (predictions only) written to {out_dir}")
    else:
        log(
            f"checkpoint written to {out_dir}: the SVM head on {weights_extra['features_from']} "
            f"(max |p - scikit-learn's| {drift:.1e})"
        )
    return out_dir
