"""Knowing when not to trust a prediction: an out-of-distribution score from the network's
features, fitted per checkpoint.

The score is the Mahalanobis distance (Lee et al. 2018) of a cell's penultimate features to
the nearest class mean, under one covariance shared by the classes, all fitted on the
checkpoint's training cells. Features are first projected on their leading principal
components (at most :data:`COMPONENTS`, and only those with real variance), which keeps the
stored statistics small (2 MB in float64 for a 2048-wide ResNet-50 feature) and the covariance
well conditioned. The threshold is the validation cells' 95th percentile, so 95% of
in-distribution cells pass. The energy score (Liu et al. 2020; ``-logsumexp`` of the logits)
needs no fitting and is the baseline the benchmark compares with.

The penultimate features are the input of the network's last ``Linear`` layer that outputs
the class logits, read by a forward hook in the same pass as the prediction; the ONNX export
carries them as a second output, so ONNX Runtime scores uploads in that one pass too.

Stored beside the checkpoint: ``ood.safetensors`` (the projection, class means and precision)
and ``ood.json`` (threshold, method, the command that fitted it, and per-set benchmark
results once ``python -m bloodviz ood`` has run).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

COMPONENTS = 128
PASS_RATE = 0.95
OOD_WEIGHTS = "ood.safetensors"
OOD_CARD = "ood.json"
OOD_SCORES = "ood-scores-{split}.csv"


def feature_layer(model, size: int, num_classes: int) -> str:
    """Name of the last ``Linear`` layer run in a forward pass that outputs ``num_classes``
    values: its input is the penultimate feature vector."""
    import torch

    order: list[str] = []
    hooks = [
        module.register_forward_hook(lambda m, i, o, name=name: order.append(name))
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and module.out_features == num_classes
    ]
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, 3, size, size))
    finally:
        for hook in hooks:
            hook.remove()
    if not order:
        raise ValueError("the network has no final Linear layer to read features from")
    return order[-1]


class FeatureTap:
    """Forward hook on the classifier layer keeping its input: the features of the pass."""

    def __init__(self, model, layer: str):
        self.features = None
        self._hook = model.get_submodule(layer).register_forward_hook(self._keep)

    def _keep(self, module, inputs, output) -> None:
        self.features = inputs[0].flatten(1)

    def remove(self) -> None:
        self._hook.remove()


def logits_and_features(
    model, prep, images: np.ndarray, batch_size: int = 256, progress=False, layer: str | None = None
):
    """Logits (float64) and penultimate features (float32) of uint8 NHWC cells, one pass."""
    import torch
    from tqdm.auto import tqdm

    layer = layer or feature_layer(model, prep.size, prep.num_classes)
    tap = FeatureTap(model, layer)
    logits, feats = [], []
    try:
        with torch.no_grad():
            starts = range(0, len(images), batch_size)
            for start in tqdm(starts, desc="features", disable=not progress, leave=False):
                out = model(prep.normalize(images[start : start + batch_size]))
                logits.append(out.double().numpy())
                feats.append(tap.features.float().numpy())
    finally:
        tap.remove()
    return np.concatenate(logits), np.concatenate(feats)


def energy_score(logits: np.ndarray) -> np.ndarray:
    """Negative energy, ``logsumexp`` of the logits, sign-flipped so that higher means less
    like the training data (as the Mahalanobis score)."""
    top = logits.max(axis=1, keepdims=True)
    return -(top[:, 0] + np.log(np.exp(logits - top).sum(axis=1)))


@dataclass
class Mahalanobis:
    """Class-conditional Gaussians with a shared covariance, in a PCA space of the features."""

    center: np.ndarray  # D
    components: np.ndarray  # D x d
    means: np.ndarray  # K x d
    precision: np.ndarray  # d x d

    @classmethod
    def fit(
        cls, features: np.ndarray, labels: np.ndarray, components: int = COMPONENTS
    ) -> Mahalanobis:
        features = np.asarray(features, dtype=np.float64)
        center = features.mean(axis=0)
        centred = features - center
        # principal directions of the training features (right singular vectors); directions
        # with almost no variance (dead ReLU units) would make the precision ill-conditioned
        _, singular, vt = np.linalg.svd(centred, full_matrices=False)
        useful = int(np.sum(singular > singular[0] * 1e-3))
        d = int(max(1, min(components, useful, len(features) - 1)))
        basis = vt[:d].T
        projected = centred @ basis
        classes = np.unique(labels)
        means = np.stack([projected[labels == k].mean(axis=0) for k in classes])
        within = projected - means[np.searchsorted(classes, labels)]
        from sklearn.covariance import LedoitWolf  # shrinkage: a stable inverse

        precision = LedoitWolf(assume_centered=True).fit(within).precision_
        return cls(center, basis, means, precision)

    def score(self, features: np.ndarray) -> np.ndarray:
        """Squared distance to the nearest class mean (higher: less like the training data)."""
        projected = (np.asarray(features, dtype=np.float64) - self.center) @ self.components
        diffs = projected[:, None, :] - self.means[None, :, :]
        distances = np.einsum("nkd,de,nke->nk", diffs, self.precision, diffs)
        return distances.min(axis=1)

    def to_tensors(self) -> dict[str, np.ndarray]:
        # float64: the precision amplifies rounding of the projection (fp32 moved scores 50x)
        # contiguous copies: safetensors writes an array's memory as it lies, and the
        # components are a transposed (Fortran-ordered) view
        return {
            name: np.ascontiguousarray(getattr(self, name), dtype=np.float64)
            for name in ("center", "components", "means", "precision")
        }

    @classmethod
    def from_tensors(cls, tensors: dict) -> Mahalanobis:
        return cls(
            *(
                np.asarray(tensors[k], dtype=np.float64)
                for k in ("center", "components", "means", "precision")
            )
        )


@dataclass
class OodDetector:
    """A checkpoint's fitted score and threshold; ``flag`` says what to distrust."""

    mahalanobis: Mahalanobis
    threshold: float
    card: dict

    def score(self, features: np.ndarray) -> np.ndarray:
        return self.mahalanobis.score(features)

    def flag(self, scores: np.ndarray) -> np.ndarray:
        return np.asarray(scores) > self.threshold


def read_card(ckpt) -> dict | None:
    """The checkpoint's ``ood.json`` (threshold, method, benchmark), or None."""
    path = ckpt.path / OOD_CARD
    try:
        return json.loads(path.read_text()) if path.exists() else None
    except (OSError, ValueError):
        return None


def load_detector(ckpt) -> OodDetector | None:
    """The checkpoint's fitted OOD detector, or None where none was fitted (or it is damaged:
    the pages then fall back to confidence alone and say so)."""
    from safetensors.numpy import load_file

    weights, card = ckpt.path / OOD_WEIGHTS, ckpt.path / OOD_CARD
    if not (weights.exists() and card.exists()):
        return None
    try:
        info = json.loads(card.read_text())
        return OodDetector(
            Mahalanobis.from_tensors(load_file(str(weights))), info["threshold"], info
        )
    except (OSError, ValueError, KeyError):
        return None


def fit_detector(ckpt, data_root=None, progress: bool = True, command: str = "") -> OodDetector:
    """Fit the score on the training cells, threshold it on validation, score the evaluation
    splits, and store it all beside the checkpoint."""
    import time

    from safetensors.numpy import save_file

    from bloodviz.data import get_dataset
    from bloodviz.inference import hardware_info, versions

    if not ckpt.has_weights:
        raise ValueError(f"{ckpt.name} ships predictions only: no network to read features from")
    model = ckpt.load_model()
    data = get_dataset(ckpt.dataset, ckpt.size, data_root)
    tick = time.perf_counter()
    layer = feature_layer(model, ckpt.size, ckpt.preprocessing.num_classes)
    train = data.load_split("train", progress=progress)
    _, train_feats = logits_and_features(
        model, ckpt.preprocessing, train.images, progress=progress, layer=layer
    )
    detector = Mahalanobis.fit(train_feats, train.labels)
    # what is scored below is what the stored file gives back
    detector = Mahalanobis.from_tensors(detector.to_tensors())
    scores = {}
    for split in ["val", *ckpt.evaluation_splits]:
        arrays = data.load_split(split, progress=progress)
        logits, feats = logits_and_features(model, ckpt.preprocessing, arrays.images, layer=layer)
        scores[split] = (arrays.ids, detector.score(feats), energy_score(logits))
    threshold = float(np.quantile(scores["val"][1], PASS_RATE))
    card = {
        "method": "mahalanobis",
        "description": f"Mahalanobis distance to the nearest class mean (shared covariance, "
        f"Ledoit-Wolf shrinkage) of the penultimate features, on their first "
        f"{detector.components.shape[1]} principal components; fitted on the "
        f"{len(train.ids)} training cells",
        "feature_layer": layer,
        "feature_dim": int(train_feats.shape[1]),
        "components": int(detector.components.shape[1]),
        "threshold": threshold,
        "pass_rate_on_val": PASS_RATE,
        "fitted_on": {"train": int(len(train.ids)), "val": int(len(scores["val"][0]))},
        "command": command,
        "seconds": round(time.perf_counter() - tick, 1),
        "hardware": hardware_info(),
        "versions": versions(),
        "benchmark": {},
    }
    tmp = ckpt.path / f".{OOD_WEIGHTS}.tmp{os.getpid()}"
    save_file(detector.to_tensors(), str(tmp))
    for split, (ids, maha, energy) in scores.items():
        _write_scores(ckpt.path / OOD_SCORES.format(split=split), ids, maha, energy)
    os.replace(tmp, ckpt.path / OOD_WEIGHTS)
    write_card(ckpt.path, card)
    return OodDetector(detector, threshold, card)


def _write_scores(path: Path, ids, maha, energy) -> None:
    import pandas as pd

    frame = pd.DataFrame({"sample_id": ids, "ood_score": maha, "energy": energy})
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    frame.to_csv(tmp, index=False, float_format="%.6g")
    os.replace(tmp, path)


def write_card(folder: Path, card: dict) -> None:
    path = Path(folder) / OOD_CARD
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(card, indent=1) + "\n")
    os.replace(tmp, path)


def stored_scores(ckpt, split: str):
    """The OOD and energy scores of a split's cells, as fitted (None if not fitted)."""
    import pandas as pd

    path = ckpt.path / OOD_SCORES.format(split=split)
    if not path.exists():
        return None
    return pd.read_csv(path, dtype={"sample_id": str})


# -- the benchmark ----------------------------------------------------------------------------
OTHER_DATASETS = {
    "pbc": "blood-cells",
    "blood-cells": "pbc",
    "malaria": "pbc",
    "malaria-cells": "pbc",
}
BENCH_SIZE = 300  # images a synthetic set


def _prepared(prep, images) -> np.ndarray:
    from PIL import Image

    return np.stack([prep.prepare(Image.fromarray(np.asarray(i, dtype=np.uint8))) for i in images])


def ood_sets(ckpt, test_images: np.ndarray, data_root=None, seed: int = 0) -> dict[str, np.ndarray]:
    """The sets an OOD score should tell from the test cells, each framed as uploads are."""
    from PIL import Image, ImageFilter
    from sklearn.datasets import load_sample_images

    from bloodviz.data import get_dataset

    rng = np.random.default_rng(seed)
    prep, size = ckpt.preprocessing, ckpt.size
    sets: dict[str, np.ndarray] = {}
    other = OTHER_DATASETS.get(ckpt.dataset)
    if other:
        try:
            cells = get_dataset(other, size, data_root).load_split("test", progress=False)
            pick = rng.choice(len(cells), size=min(BENCH_SIZE * 2, len(cells)), replace=False)
            sets[f"{other} cells"] = cells.images[pick]
        except (OSError, ValueError):  # that dataset is not on this machine
            pass
    sets["gaussian noise"] = np.clip(
        rng.normal(128, 60, (BENCH_SIZE, size, size, 3)), 0, 255
    ).astype(np.uint8)
    levels = np.linspace(0, 255, 16).astype(np.uint8)
    sets["blank"] = np.stack([np.full((size, size, 3), v, np.uint8) for v in levels])
    colours = rng.integers(0, 256, (BENCH_SIZE, 1, 1, 3)).astype(np.uint8)
    sets["flat colour"] = np.broadcast_to(colours, (BENCH_SIZE, size, size, 3)).copy()
    photos = load_sample_images().images  # scikit-learn's two photographs (BSD licence)
    crops = []
    for _ in range(BENCH_SIZE):
        photo = photos[rng.integers(len(photos))]
        side = int(rng.integers(48, min(photo.shape[:2])))
        top = int(rng.integers(0, photo.shape[0] - side + 1))
        left = int(rng.integers(0, photo.shape[1] - side + 1))
        crops.append(photo[top : top + side, left : left + side])
    sets["natural photos"] = np.stack(
        [np.asarray(Image.fromarray(c).resize((size, size), Image.BICUBIC)) for c in crops]
    )
    pick = rng.choice(len(test_images), size=min(BENCH_SIZE, len(test_images)), replace=False)
    chosen = test_images[pick]
    grey = chosen.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    sets["greyscale test cells"] = np.repeat(grey[..., None], 3, axis=-1).astype(np.uint8)
    radius = max(1.0, size / 24)
    sets["blurred test cells"] = np.stack(
        [np.asarray(Image.fromarray(c).filter(ImageFilter.GaussianBlur(radius))) for c in chosen]
    )
    return {name: _prepared(prep, images) for name, images in sets.items()}


def auroc(inside: np.ndarray, outside: np.ndarray) -> float:
    """Probability that an outside image scores higher than an inside one (ties half)."""
    from bloodviz.metrics import binary_auc

    labels = np.r_[np.zeros(len(inside), bool), np.ones(len(outside), bool)]
    return binary_auc(labels, np.r_[inside, outside])


def fpr_at_95(inside: np.ndarray, outside: np.ndarray) -> float:
    """Share of outside images let through when 95% of inside ones pass."""
    return float(np.mean(outside <= np.quantile(inside, 0.95)))


def benchmark(ckpt, data_root=None, progress: bool = True, command: str = "") -> dict:
    """AUROC and FPR at 95% TPR of the Mahalanobis and energy scores, test cells against each
    set of :func:`ood_sets`; stored in ``ood.json`` (fitting the detector first if needed)."""
    from bloodviz.data import get_dataset

    detector = load_detector(ckpt) or fit_detector(ckpt, data_root, progress, command)
    data = get_dataset(ckpt.dataset, ckpt.size, data_root)
    split = ckpt.default_split or "test"
    test = data.load_split(split, progress=progress)
    model = ckpt.load_model()
    layer = detector.card.get("feature_layer") or feature_layer(
        model, ckpt.size, ckpt.preprocessing.num_classes
    )
    stored = stored_scores(ckpt, split)
    if stored is not None and set(test.ids) <= set(stored["sample_id"]):
        # the fit scored these very cells: read them back instead of a second pass
        stored = stored.set_index("sample_id").loc[test.ids]
        inside = {
            "mahalanobis": stored["ood_score"].to_numpy(),
            "energy": stored["energy"].to_numpy(),
        }
    else:
        logits, feats = logits_and_features(model, ckpt.preprocessing, test.images, layer=layer)
        inside = {"mahalanobis": detector.score(feats), "energy": energy_score(logits)}
    rows = {}
    for name, images in ood_sets(ckpt, test.images, data_root).items():
        logits, feats = logits_and_features(model, ckpt.preprocessing, images, layer=layer)
        outside = {"mahalanobis": detector.score(feats), "energy": energy_score(logits)}
        rows[name] = {
            "n": int(len(images)),
            **{f"auroc_{k}": auroc(inside[k], outside[k]) for k in inside},
            **{f"fpr95_{k}": fpr_at_95(inside[k], outside[k]) for k in inside},
            "flagged": float(np.mean(detector.flag(outside["mahalanobis"]))),
        }
    card = dict(detector.card)
    card["benchmark"] = {
        "in_distribution": f"{ckpt.dataset_key} {ckpt.default_split} ({len(test)} cells)",
        "sets": rows,
        "command": command,
    }
    write_card(ckpt.path, card)
    return card["benchmark"]
