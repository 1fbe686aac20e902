"""Saliency with pytorch-grad-cam: CAM methods, overlays and a faithfulness score.

Every registered model declares its ``target_layer`` (a dotted module path) in the registry;
:class:`Explainer` resolves it. Each map is computed by a CAM object made for that call whose
hooks are released after it, so no forward hook outlives the call: cached
CAM objects kept hooks on the model, and every later forward pass appended activations to all
of them (memory grew about 1.4 MB a call in the app). One lock per explainer serialises the
passes through its model, so sessions sharing a cached explainer never mix their activations.
Faithfulness uses the library's ROAD metrics (Rong et al. 2022): the change in the target's
softmax score when the most (MoRF) or least (LeRF) relevant pixels are imputed away. A telling
map drops confidence under MoRF and keeps it under LeRF, so ``LeRF - MoRF`` is higher for
maps that point at what the model really uses.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import numpy as np
import torch
from pytorch_grad_cam import (
    AblationCAM,
    EigenCAM,
    GradCAM,
    GradCAMPlusPlus,
    HiResCAM,
    LayerCAM,
    ScoreCAM,
    XGradCAM,
)
from pytorch_grad_cam.metrics.road import ROADLeastRelevantFirst, ROADMostRelevantFirst
from pytorch_grad_cam.utils.image import show_cam_on_image
from pytorch_grad_cam.utils.model_targets import (
    ClassifierOutputSoftmaxTarget,
    ClassifierOutputTarget,
)

from bloodviz.models import model_info
from bloodviz.preprocess import Preprocessing

CAM_METHODS = {
    "gradcam": ("Grad-CAM", GradCAM),
    "gradcam++": ("Grad-CAM++", GradCAMPlusPlus),
    "hirescam": ("HiResCAM", HiResCAM),
    "xgradcam": ("XGrad-CAM", XGradCAM),
    "layercam": ("LayerCAM", LayerCAM),
    "eigencam": ("EigenCAM", EigenCAM),
    "scorecam": ("Score-CAM", ScoreCAM),
    "ablationcam": ("Ablation-CAM", AblationCAM),
}
# one forward pass per channel of the target layer: seconds, not milliseconds, on CPU
SLOW_METHODS = frozenset({"scorecam", "ablationcam"})
ROAD_PERCENTILE = 50


@dataclass
class Explanation:
    method: str
    target: int
    probs: np.ndarray
    cam: np.ndarray
    overlay: np.ndarray
    seconds: float
    faithfulness: dict | None = None


def resolve_target_layer(model: torch.nn.Module, model_name: str) -> torch.nn.Module:
    name = model_info(model_name).target_layer
    if not name:
        raise ValueError(f"model {model_name!r} declares no target layer for CAM")
    return model.get_submodule(name)


def cam_reshape(model_name: str):
    """The ``reshape_transform`` a model's target layer needs (a transformer's tokens to a
    map), or None."""
    spec = model_info(model_name).cam_reshape
    if not spec.startswith("tokens:"):
        return None
    from functools import partial

    from bloodviz.models.timm_any import tokens_to_map

    return partial(tokens_to_map, prefix=int(spec.partition(":")[2]))


def _backward_starts_here(module, inputs, output):
    """The target layer's output as the leaf of the backward pass. The weights are frozen, so
    nothing before this layer needs a gradient: the backward pass runs through the layers after
    it only. Asking the gradient of the input instead ran it through the whole network, and
    each convolution's backward copied its weights (vgg16: 70 MB more at the peak of a call,
    and most of its time). Cloned, so that an in-place operation after the layer acts on a
    non-leaf."""
    if not isinstance(output, torch.Tensor) or not torch.is_grad_enabled():
        return None
    return output.detach().requires_grad_().clone()


class Explainer:
    """CAMs for one model; ``explain`` takes a prepared ``size x size x 3`` uint8 cell."""

    def __init__(self, model: torch.nn.Module, model_name: str, prep: Preprocessing):
        # CAMs need the gradient of the target layer's activations, not of the weights: with
        # frozen weights (and the backward pass starting at that layer) no call leaves a .grad
        # the size of the model on every parameter (resnet50: 90 MB an explainer)
        self.model = model.eval().requires_grad_(False)
        self.model_name = model_name
        self.prep = prep
        self.layer = resolve_target_layer(model, model_name)
        self.reshape = cam_reshape(model_name)
        self.lock = threading.Lock()  # one pass through the shared model at a time (Runner too)

    @classmethod
    def from_checkpoint(cls, ckpt) -> Explainer:
        """The explainer of a :class:`bloodviz.checkpoints.Checkpoint`'s trained network."""
        return cls(ckpt.load_model(), ckpt.model, ckpt.preprocessing)

    def _new_cam(self, method: str):
        """A CAM object for one call; release its hooks when the call is done."""
        if method not in CAM_METHODS:
            raise ValueError(f"unknown CAM method {method!r}; choose from {list(CAM_METHODS)}")
        # registered before the library's hooks, so they see the output it returns, and
        # released with them
        starts_here = self.layer.register_forward_hook(_backward_starts_here)
        cam = CAM_METHODS[method][1](
            model=self.model, target_layers=[self.layer], reshape_transform=self.reshape
        )
        cam.activations_and_grads.handles.insert(0, starts_here)
        if method in SLOW_METHODS:
            cam.batch_size = 64
        return cam

    def probabilities(self, image: np.ndarray) -> np.ndarray:
        with self.lock:
            return self._probabilities(self.prep.normalize(image))

    def _probabilities(self, tensor: torch.Tensor) -> np.ndarray:
        with torch.no_grad():
            logits = self.model(tensor)
        return torch.softmax(logits, 1)[0].double().numpy()

    def explain(
        self,
        image: np.ndarray,
        method: str = "gradcam",
        target: int | None = None,
        faithfulness: bool = False,
    ) -> Explanation:
        tensor = self.prep.normalize(image)
        with self.lock:
            probs = self._probabilities(tensor)
            target = int(np.argmax(probs)) if target is None else int(target)
            tick = time.perf_counter()
            cam_object = self._new_cam(method)
            try:
                grayscale = cam_object(
                    input_tensor=tensor, targets=[ClassifierOutputTarget(target)]
                )
            finally:
                # what the library's context manager does on exit, minus its swallowing of
                # IndexError (which would leave no map and hide why)
                cam_object.activations_and_grads.release()
            seconds = time.perf_counter() - tick
            cam = np.nan_to_num(grayscale[0].astype(np.float32))
            road = self._faithfulness(tensor, cam, target) if faithfulness else None
        overlay = show_cam_on_image(image.astype(np.float32) / 255.0, cam, use_rgb=True)
        return Explanation(method, target, probs, cam, overlay, seconds, road)

    def faithfulness(self, tensor: torch.Tensor, cam: np.ndarray, target: int) -> dict:
        with self.lock:
            return self._faithfulness(tensor, cam, target)

    def _faithfulness(self, tensor: torch.Tensor, cam: np.ndarray, target: int) -> dict:
        targets = [ClassifierOutputSoftmaxTarget(target)]
        cams = cam[None]
        morf = ROADMostRelevantFirst(percentile=ROAD_PERCENTILE)(tensor, cams, targets, self.model)
        lerf = ROADLeastRelevantFirst(percentile=ROAD_PERCENTILE)(tensor, cams, targets, self.model)
        morf, lerf = float(np.ravel(morf)[0]), float(np.ravel(lerf)[0])
        return {
            "road_morf": morf,
            "road_lerf": lerf,
            "road_score": (lerf - morf) / 2,
            "percentile": ROAD_PERCENTILE,
        }
