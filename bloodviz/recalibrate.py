"""Recalibrate a network's batch norm to another microscope (AdaBN: Li et al., 2016).

A batch-norm layer normalises with the mean and variance it saw in training; another lab's
stain, camera and scale shift them, and every layer after inherits the shift. Re-estimating
those statistics on the new lab's cells, without labels, removes much of it: measured with
the localiser on Kaggle's TEST cells (restricted to the four shared classes), re-estimated
on 64 cells, pbc-64 resnet50 went from 34% to 61% balanced accuracy, resnet18 from 23% to
56% (``generalise`` records it per model). Nothing else in the network changes, and the
statistics are held apart from it, so a network shared by every session of the app is never
altered.

Only PyTorch networks with batch norm can be recalibrated: an ONNX export has its statistics
folded in, and a network without batch norm has none to re-estimate.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

# fewer cells than this give a variance estimate too noisy to normalise with
MIN_CELLS = 16
BATCH_SIZE = 64


class RecalibrationError(ValueError):
    """The cells or the network cannot give batch-norm statistics (says which and why)."""


def batchnorm_layers(model) -> dict:
    """Name -> batch-norm layer (tracking running statistics) of ``model``."""
    import torch

    return {
        name: module
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm) and module.track_running_stats
    }


@dataclass(frozen=True)
class BatchNormStatistics:
    """Running mean and variance of each batch-norm layer, estimated on ``n_cells`` cells."""

    means: dict
    variances: dict
    n_cells: int


def estimate_statistics(
    model, prep, cells: np.ndarray, *, lock: threading.Lock | None = None
) -> BatchNormStatistics:
    """Batch-norm statistics of ``model`` re-estimated on ``cells`` (uint8 NHWC, framed as the
    checkpoint's preprocessing frames them): a cumulative average over batches of
    :data:`BATCH_SIZE`, each layer seeing the layers before it already recalibrated, as AdaBN
    does. ``model`` is left as it was; ``lock``: the one its other users hold for a pass."""
    import torch

    layers = batchnorm_layers(model)
    if not layers:
        raise RecalibrationError("the network has no batch norm: nothing to recalibrate")
    cells = np.asarray(cells)
    if len(cells) < MIN_CELLS:
        raise RecalibrationError(
            f"{len(cells)} cell(s) found: recalibration needs at least {MIN_CELLS} cells from "
            "the same microscope"
        )
    with lock or threading.Lock():
        saved = {
            name: (
                layer.running_mean.clone(),
                layer.running_var.clone(),
                layer.num_batches_tracked.clone(),
                layer.momentum,
                layer.training,
            )
            for name, layer in layers.items()
        }
        was_training = model.training
        try:
            model.eval()
            for layer in layers.values():
                layer.reset_running_stats()
                layer.momentum = None  # a cumulative average: every batch counts the same
                layer.train()
            # batches of equal size: the cumulative average weighs each batch the same
            with torch.no_grad():
                for batch in np.array_split(cells, -(-len(cells) // BATCH_SIZE)):
                    model(prep.normalize(batch))
            means = {name: layer.running_mean.clone() for name, layer in layers.items()}
            variances = {name: layer.running_var.clone() for name, layer in layers.items()}
        finally:
            for name, layer in layers.items():
                mean, var, tracked, momentum, training = saved[name]
                layer.running_mean.copy_(mean)
                layer.running_var.copy_(var)
                layer.num_batches_tracked.copy_(tracked)
                layer.momentum = momentum
                layer.train(training)
            model.train(was_training)
    return BatchNormStatistics(means, variances, len(cells))


@contextmanager
def recalibrated(model, statistics: BatchNormStatistics):
    """``model`` with ``statistics`` in its batch-norm layers for the ``with`` block, then its
    own again. The caller holds the model's lock: other passes must not see the swap."""
    layers = batchnorm_layers(model)
    if set(layers) != set(statistics.means):
        raise RecalibrationError("these statistics were estimated on another network")
    own = {
        name: (layer.running_mean.clone(), layer.running_var.clone())
        for name, layer in layers.items()
    }
    try:
        for name, layer in layers.items():
            layer.running_mean.copy_(statistics.means[name])
            layer.running_var.copy_(statistics.variances[name])
        yield model
    finally:
        for name, layer in layers.items():
            layer.running_mean.copy_(own[name][0])
            layer.running_var.copy_(own[name][1])
