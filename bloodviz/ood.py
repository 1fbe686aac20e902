"""Knowing when not to trust a prediction: an out-of-distribution score from the network's
features, fitted per checkpoint.

The score has two parts, each a Mahalanobis distance (Lee et al. 2018) to the nearest class
mean under one covariance shared by the classes, fitted on the checkpoint's training cells:

- ``head``: the penultimate features, the input of the network's last ``Linear`` layer that
  outputs the class logits;
- ``stem``: the per-channel mean and spread of the first convolution's output. A small
  network's head can map a blank or a photograph close to some class (measured: malaria
  cnn_baseline, AUROC 0.961 for blank images on the head alone); the first layer's colour
  and texture statistics cannot hide them.

Each part's features are first projected on their leading principal components (at most
:data:`COMPONENTS`, and only those with real variance), which keeps the stored statistics small
(2 MB in float64 for a 2048-wide ResNet-50 feature) and the covariance well conditioned. Each
part is put on its validation cells' scale (0 at the median, 1 at the 95th percentile) and the
larger is the score; the threshold is the validation cells' 95th percentile of that, so 95% of
in-distribution cells pass. The energy score (Liu et al. 2020; ``-logsumexp`` of the logits)
needs no fitting and is the baseline the benchmark compares with.

Both parts are read by forward hooks in the same pass as the prediction; the ONNX export
carries them as extra outputs, so ONNX Runtime scores uploads in that one pass too.

Stored beside the checkpoint: ``ood.safetensors`` (each part's projection, class means and
precision) and ``ood.json`` (the scales, threshold, method, the command that fitted it, and
per-set benchmark results once ``python -m bloodviz ood`` has run).
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
HEAD, STEM = "head", "stem"  # the parts of the score: the classifier's input, the first conv


def feature_layer(model, size: int, num_classes: int) -> str:
    """Name of the last ``Linear`` layer run in a forward pass that outputs ``num_classes``
    values: its input is the penultimate feature vector."""
    order = _run_order(model, size, lambda m: _is_linear(m) and m.out_features == num_classes)
    if not order:
        raise ValueError("the network has no final Linear layer to read features from")
    return order[-1]


def stem_layer(model, size: int) -> str | None:
    """Name of the first ``Conv2d`` run in a forward pass (None for a network without one)."""
    import torch

    order = _run_order(model, size, lambda m: isinstance(m, torch.nn.Conv2d))
    return order[0] if order else None


def detector_layers(model, size: int, num_classes: int) -> dict[str, str]:
    """The layers the score reads: ``head`` (the classifier's input) and, where the network
    has a convolution, ``stem`` (the first one's output)."""
    layers = {HEAD: feature_layer(model, size, num_classes)}
    stem = stem_layer(model, size)
    if stem:
        layers[STEM] = stem
    return layers


def _is_linear(module) -> bool:
    import torch

    return isinstance(module, torch.nn.Linear)


def _run_order(model, size: int, keep) -> list[str]:
    """Names of the modules ``keep`` selects, in the order one forward pass runs them."""
    import torch

    order: list[str] = []
    hooks = [
        module.register_forward_hook(lambda m, i, o, name=name: order.append(name))
        for name, module in model.named_modules()
        if keep(module)
    ]
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, 3, size, size))
    finally:
        for hook in hooks:
            hook.remove()
    return order


def pooled_statistics(activations):
    """Per-channel mean and standard deviation over the image of an NCHW tensor (N x 2C).
    Written out (no ``std``) so the ONNX export is the same arithmetic."""
    import torch

    flat = activations.flatten(2)
    mean = flat.mean(dim=2)
    spread = ((flat - mean.unsqueeze(2)) ** 2).mean(dim=2).clamp_min(0).sqrt()
    return torch.cat([mean, spread], dim=1)


class _StemOnly(Exception):
    """Raised by the stem hook to end a pass that only needs the stem's statistics."""


class FeatureTap:
    """Forward hooks keeping what the score reads during a pass: the classifier layer's input
    (``head``) and the pooled statistics of the first convolution's output (``stem``).
    ``stem_only`` ends each pass at the stem (a fraction of the network's cost)."""

    def __init__(self, model, layers: dict[str, str], stem_only: bool = False):
        self.features: dict = {}
        self._stem_only = stem_only
        self._hooks = []
        if HEAD in layers and not stem_only:
            head = model.get_submodule(layers[HEAD])
            self._hooks.append(head.register_forward_hook(self._keep_head))
        if STEM in layers:
            stem = model.get_submodule(layers[STEM])
            self._hooks.append(stem.register_forward_hook(self._keep_stem))

    def _keep_head(self, module, inputs, output) -> None:
        self.features[HEAD] = inputs[0].flatten(1)

    def _keep_stem(self, module, inputs, output) -> None:
        self.features[STEM] = pooled_statistics(output)
        if self._stem_only:
            raise _StemOnly

    def remove(self) -> None:
        for hook in self._hooks:
            hook.remove()


def logits_and_features(
    model,
    prep,
    images: np.ndarray,
    batch_size: int = 256,
    progress=False,
    layers: dict[str, str] | None = None,
    stem_only: bool = False,
) -> tuple[np.ndarray | None, dict[str, np.ndarray]]:
    """Logits (float64) and the tapped features (float32, by part) of uint8 NHWC cells, one
    pass. ``stem_only``: the stem's statistics alone, no logits (the pass stops there)."""
    import torch
    from tqdm.auto import tqdm

    layers = layers or detector_layers(model, prep.size, prep.num_classes)
    tap = FeatureTap(model, layers, stem_only=stem_only)
    logits: list[np.ndarray] = []
    parts: dict[str, list[np.ndarray]] = {}
    try:
        with torch.no_grad():
            starts = range(0, len(images), batch_size)
            for start in tqdm(starts, desc="features", disable=not progress, leave=False):
                tap.features = {}
                try:
                    out = model(prep.normalize(images[start : start + batch_size]))
                    logits.append(out.double().numpy())
                except _StemOnly:
                    pass
                for name, value in tap.features.items():
                    parts.setdefault(name, []).append(value.float().numpy())
    finally:
        tap.remove()
    features = {name: np.concatenate(chunks) for name, chunks in parts.items()}
    return (np.concatenate(logits) if logits else None), features


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

    FIELDS = ("center", "components", "means", "precision")

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

    def to_tensors(self, prefix: str = "") -> dict[str, np.ndarray]:
        # float64: the precision amplifies rounding of the projection (fp32 moved scores 50x)
        # contiguous copies: safetensors writes an array's memory as it lies, and the
        # components are a transposed (Fortran-ordered) view
        return {
            prefix + name: np.ascontiguousarray(getattr(self, name), dtype=np.float64)
            for name in self.FIELDS
        }

    @classmethod
    def from_tensors(cls, tensors: dict, prefix: str = "") -> Mahalanobis:
        return cls(*(np.asarray(tensors[prefix + k], dtype=np.float64) for k in cls.FIELDS))


@dataclass
class OodDetector:
    """A checkpoint's fitted score and threshold; ``flag`` says what to distrust.

    Each part (``head``, ``stem``) is a Mahalanobis distance on its own features, put on one
    scale by its validation cells (0 at their median, 1 at their 95th percentile); the score
    is the larger of the two, so an image is distrusted when either layer finds it unusual.
    The head sees what the classes look like; the stem sees colour and texture, which the
    head of a small network can map anywhere (a blank image is no class, yet its penultimate
    features may sit near one). A detector fitted before the stem part reads the head's raw
    distance, as it was thresholded."""

    parts: dict[str, Mahalanobis]
    scales: dict[str, tuple[float, float]]  # part -> (median, 95th percentile) on validation
    threshold: float
    card: dict

    def part_scores(self, features: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        missing = set(self.parts) - set(features)
        if missing:
            raise ValueError(f"the pass did not tap {sorted(missing)} for the OOD score")
        return {name: part.score(features[name]) for name, part in self.parts.items()}

    def combine(self, part_scores: dict[str, np.ndarray]) -> np.ndarray:
        if not self.scales:  # a head-only detector from before the stem part
            return part_scores[HEAD]
        scaled = [
            (part_scores[name] - median) / max(top - median, 1e-12)
            for name, (median, top) in self.scales.items()
        ]
        return np.max(scaled, axis=0)

    def score(self, features: dict[str, np.ndarray]) -> np.ndarray:
        return self.combine(self.part_scores(features))

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
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    weights, card = ckpt.path / OOD_WEIGHTS, ckpt.path / OOD_CARD
    if not (weights.exists() and card.exists()):
        return None
    try:
        info = json.loads(card.read_text())
        tensors = load_file(str(weights))
        if "parts" not in info:  # fitted before the stem part: the head alone, unprefixed
            return OodDetector(
                {HEAD: Mahalanobis.from_tensors(tensors)}, {}, info["threshold"], info
            )
        parts = {name: Mahalanobis.from_tensors(tensors, f"{name}.") for name in info["parts"]}
        scales = {
            name: (float(part["val_median"]), float(part["val_95th"]))
            for name, part in info["parts"].items()
        }
        return OodDetector(parts, scales, info["threshold"], info)
    except (OSError, ValueError, KeyError, TypeError, SafetensorError):
        return None


def detector_layers_of(detector: OodDetector) -> dict[str, str]:
    """The layers a fitted detector reads, as its card names them."""
    card = detector.card
    if "parts" in card:
        return {name: part["layer"] for name, part in card["parts"].items()}
    return {HEAD: card["feature_layer"]}


def fit_detector(
    ckpt, data_root=None, progress: bool = True, command: str = "", reuse_head: bool = True
) -> OodDetector:
    """Fit the score on the training cells, threshold it on validation, score the evaluation
    splits, and store it all beside the checkpoint.

    ``reuse_head``: where the checkpoint already has a head-only detector and its stored
    scores, keep them and fit only the stem part, whose passes stop at the first convolution
    (minutes instead of an hour for a ResNet-50 on 20,000 malaria cells on one core)."""
    import time

    from safetensors.numpy import save_file

    from bloodviz.data import get_dataset
    from bloodviz.inference import hardware_info, versions

    if not ckpt.has_weights:
        raise ValueError(f"{ckpt.name} ships predictions only: no network to read features from")
    model = ckpt.load_model()
    data = get_dataset(ckpt.dataset, ckpt.size, data_root)
    tick = time.perf_counter()
    layers = detector_layers(model, ckpt.size, ckpt.preprocessing.num_classes)
    splits = ["val", *ckpt.evaluation_splits]
    previous = load_detector(ckpt) if reuse_head else None
    stored = {split: stored_scores(ckpt, split) for split in splits} if previous else {}
    reuse = (
        previous is not None
        and STEM in layers
        and detector_layers_of(previous).get(HEAD) == layers[HEAD]
        and all(frame is not None for frame in stored.values())
    )
    train = data.load_split("train", progress=progress)
    if reuse:
        parts = {HEAD: previous.parts[HEAD]}
        _, train_feats = logits_and_features(
            model,
            ckpt.preprocessing,
            train.images,
            progress=progress,
            layers=layers,
            stem_only=True,
        )
    else:
        _, train_feats = logits_and_features(
            model, ckpt.preprocessing, train.images, progress=progress, layers=layers
        )
        parts = {HEAD: Mahalanobis.fit(train_feats[HEAD], train.labels)}
    if STEM in train_feats:
        parts[STEM] = Mahalanobis.fit(train_feats[STEM], train.labels)
    # what is scored below is what the stored file gives back
    parts = {name: Mahalanobis.from_tensors(part.to_tensors()) for name, part in parts.items()}

    scored = {}  # split -> (ids, {part: scores}, energy)
    for split in splits:
        arrays = data.load_split(split, progress=progress)
        logits, feats = logits_and_features(
            model, ckpt.preprocessing, arrays.images, layers=layers, stem_only=reuse
        )
        part_scores = {
            name: part.score(feats[name]) for name, part in parts.items() if name in feats
        }
        if reuse:
            old = stored[split].set_index("sample_id").reindex(arrays.ids)
            column = HEAD if HEAD in old else "ood_score"
            if old[column].isna().any():
                raise ValueError(f"{ckpt.name}: the stored {split} scores miss some cells; refit")
            part_scores[HEAD] = old[column].to_numpy()
            energy = old["energy"].to_numpy()
        else:
            energy = energy_score(logits)
        scored[split] = (arrays.ids, part_scores, energy)

    val_parts = scored["val"][1]
    scales = (
        {
            name: (
                float(np.median(val_parts[name])),
                float(np.quantile(val_parts[name], PASS_RATE)),
            )
            for name in parts
        }
        if len(parts) > 1
        else {}
    )
    detector = OodDetector(parts, scales, 0.0, {})
    combined = {split: detector.combine(p) for split, (_, p, _) in scored.items()}
    detector.threshold = float(np.quantile(combined["val"], PASS_RATE))
    part_cards = {
        name: {
            "layer": layers[name],
            "feature_dim": int(part.center.shape[0]),
            "components": int(part.components.shape[1]),
            "val_median": scales.get(name, (None, None))[0],
            "val_95th": scales.get(name, (None, None))[1],
        }
        for name, part in parts.items()
    }
    head = parts[HEAD]
    described = {
        HEAD: f"the penultimate features ({layers[HEAD]}, first {head.components.shape[1]} "
        "principal components)",
        STEM: "the per-channel mean and spread of the first convolution's output "
        f"({layers.get(STEM)})",
    }
    detector.card = {
        "method": "mahalanobis" + (" (head + stem)" if STEM in parts else ""),
        "description": "Mahalanobis distance to the nearest class mean (shared covariance, "
        "Ledoit-Wolf shrinkage) of "
        + " and of ".join(described[name] for name in parts)
        + (
            "; each put on its validation scale (0 at the median, 1 at the 95th percentile) and "
            "the larger taken"
            if len(parts) > 1
            else ""
        )
        + f"; fitted on the {len(train.ids)} training cells",
        "feature_layer": layers[HEAD],
        "feature_dim": int(head.center.shape[0]),
        "components": int(head.components.shape[1]),
        "parts": part_cards,
        "threshold": detector.threshold,
        "pass_rate_on_val": PASS_RATE,
        "fitted_on": {"train": int(len(train.ids)), "val": int(len(scored["val"][0]))},
        "head_reused_from": previous.card.get("command", "") if reuse else None,
        "command": command,
        "seconds": round(time.perf_counter() - tick, 1),
        "hardware": hardware_info(),
        "versions": versions(),
        "benchmark": {},
    }
    tensors = {}
    for name, part in parts.items():
        tensors.update(part.to_tensors(f"{name}."))
    tmp = ckpt.path / f".{OOD_WEIGHTS}.tmp{os.getpid()}"
    save_file(tensors, str(tmp))
    for split, (ids, part_scores, energy) in scored.items():
        path = ckpt.path / OOD_SCORES.format(split=split)
        _write_scores(path, ids, combined[split], energy, part_scores)
    os.replace(tmp, ckpt.path / OOD_WEIGHTS)
    write_card(ckpt.path, detector.card)
    return detector


def _write_scores(path: Path, ids, scores, energy, parts: dict[str, np.ndarray]) -> None:
    import pandas as pd

    frame = pd.DataFrame({"sample_id": ids, "ood_score": scores, "energy": energy, **parts})
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
    layers = detector_layers_of(detector)
    stored = stored_scores(ckpt, split)
    if stored is not None and set(test.ids) <= set(stored["sample_id"]):
        # the fit scored these very cells: read them back instead of a second pass
        stored = stored.set_index("sample_id").loc[test.ids]
        inside = {
            "mahalanobis": stored["ood_score"].to_numpy(),
            "energy": stored["energy"].to_numpy(),
        }
        if len(detector.parts) > 1:
            inside.update({name: stored[name].to_numpy() for name in detector.parts})
    else:
        logits, feats = logits_and_features(model, ckpt.preprocessing, test.images, layers=layers)
        inside = _bench_scores(detector, logits, feats)
    rows = {}
    for name, images in ood_sets(ckpt, test.images, data_root).items():
        logits, feats = logits_and_features(model, ckpt.preprocessing, images, layers=layers)
        outside = _bench_scores(detector, logits, feats)
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


def _bench_scores(detector: OodDetector, logits, feats) -> dict[str, np.ndarray]:
    """The detector's score, the energy baseline and (where there are two) each part's."""
    parts = detector.part_scores(feats)
    scores = {"mahalanobis": detector.combine(parts), "energy": energy_score(logits)}
    if len(parts) > 1:
        scores.update(parts)
    return scores
