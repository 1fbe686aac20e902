"""Any timm architecture by name: ``timm:<name>`` trains through the same trainer and store.

``create_model("timm:convnext_atto", num_classes=8, in_size=64)`` builds timm's model with the
class count and the one small-input adaptation timm itself offers: architectures whose
constructor takes ``img_size`` (vision transformers and most hybrids) are built for the
cell's size, so their position embeddings fit its patches; convolutional networks need none
(they pool whatever is left). Either way a forward pass at the input size is tried first, and
an architecture that cannot take it is refused with timm's reason.

The Grad-CAM target layer is found the same way for every architecture: the last module, in
the order the forward pass runs them, whose output is still a spatial map (N x C x H x W with
H, W >= 2). A transformer's maps are tokens (N x T x C): its last block's first norm is used,
and :func:`tokens_to_map` reshapes the patch tokens (prefix tokens dropped) into a map, the
``reshape_transform`` pytorch-grad-cam's ViT recipe uses.
"""

from __future__ import annotations

import math
import threading
from functools import partial

import timm
import torch
from torch import nn

from bloodviz.models.pretrained import PretrainedUnavailable, timm_model
from bloodviz.models.registry import ModelInfo

PREFIX = "timm:"  # registry.model_info hands names with it here
_INFOS: dict[tuple[str, int], ModelInfo] = {}
_LOCK = threading.Lock()


def build_timm(
    arch: str, num_classes: int, in_size: int = 64, pretrained: bool | str = False
) -> nn.Module:
    try:
        model, _ = _create(arch, num_classes, in_size, pretrained)
        with torch.no_grad():
            out = model.eval()(torch.zeros(1, 3, in_size, in_size))
    except PretrainedUnavailable:
        raise  # its own message says how to get the weights
    except Exception as exc:  # timm raises assertion, value and shape errors alike
        raise ValueError(
            f"timm's {arch} cannot take {in_size} px cells ({type(exc).__name__}: "
            f"{str(exc)[:200]}); try another --size or another architecture"
        ) from exc
    if tuple(out.shape) != (1, num_classes):
        raise ValueError(f"timm's {arch} returned shape {tuple(out.shape)}, not (1, classes)")
    return model.train()


def _create(arch: str, num_classes: int, in_size: int, pretrained) -> tuple[nn.Module, bool]:
    """timm's model built for ``in_size`` where its constructor takes ``img_size``; whether
    it did."""
    try:
        return timm_model(arch, num_classes, pretrained, img_size=in_size), True
    except TypeError as exc:  # the architecture has no img_size: convolutional, size-free
        if "img_size" not in str(exc):
            raise
    return timm_model(arch, num_classes, pretrained), False


def find_target_layer(model: nn.Module, in_size: int) -> tuple[str, str]:
    """(dotted module name, reshape) of the layer Grad-CAM should read; reshape is ``""`` for a
    spatial map or ``"tokens:<prefix tokens>"`` for a transformer's token sequence."""
    order: list[tuple[str, tuple]] = []
    hooks = []
    for name, module in model.named_modules():
        if not name:
            continue
        hooks.append(
            module.register_forward_hook(
                lambda m, i, o, name=name: order.append(
                    (name, tuple(o.shape)) if isinstance(o, torch.Tensor) else (name, ())
                )
            )
        )
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, 3, in_size, in_size))
    finally:
        for hook in hooks:
            hook.remove()
    blocks = getattr(model, "blocks", None)
    prefix = int(getattr(model, "num_prefix_tokens", 0) or 0)
    token_layers = [n for n, s in order if len(s) == 3 and s[1] > 1]
    if isinstance(blocks, nn.Sequential) and token_layers and hasattr(blocks[-1], "norm1"):
        return f"blocks.{len(blocks) - 1}.norm1", f"tokens:{prefix}"
    spatial = [n for n, s in order if len(s) == 4 and s[2] >= 2 and s[3] >= 2]
    if spatial:
        return spatial[-1], ""
    if token_layers:
        return token_layers[-1], f"tokens:{prefix}"
    return "", ""


def tokens_to_map(tokens: torch.Tensor, prefix: int = 1) -> torch.Tensor:
    """N x T x C tokens (``prefix`` class / distillation tokens first) to an N x C x h x w map
    of the patch tokens (h = w = sqrt of their count)."""
    patches = tokens[:, prefix:, :]
    side = math.isqrt(patches.shape[1])
    if side * side != patches.shape[1]:
        raise ValueError(f"{patches.shape[1]} patch tokens do not form a square map")
    return patches.reshape(tokens.shape[0], side, side, tokens.shape[2]).permute(0, 3, 1, 2)


def timm_info(name: str, in_size: int = 64) -> ModelInfo:
    """The registry entry of ``timm:<arch>`` (built once a size, then cached)."""
    arch = name[len(PREFIX) :]
    if arch not in timm.list_models():
        close = timm.list_models(f"*{arch.split('_')[0]}*")[:8]
        raise KeyError(
            f"timm has no architecture {arch!r}"
            + (f"; similar: {', '.join(close)}" if close else "")
            + " (python -c \"import timm; print(timm.list_models('*convnext*'))\")"
        )
    with _LOCK:
        cached = _INFOS.get((arch, in_size))
        if cached is not None:
            return cached
    try:
        probe, sized = _create(arch, 2, in_size, False)
        target, reshape = find_target_layer(probe, in_size)
    except Exception:  # cannot take this size: building it at the run's size says why
        sized, target, reshape = False, "", ""
    adaptation = (
        f"timm's img_size={in_size}: position embeddings sized for the cell's patches"
        if sized
        else f"none needed: timm's {arch} as it is, pooling what {in_size} px leaves"
    )
    info = ModelInfo(
        name=name,
        builder=partial(build_timm, arch),
        display_name=f"{arch} (timm)",
        family="timm",
        default_size=64,
        target_layer=target,
        adaptation=adaptation,
        description=f"timm's {arch}, brought by name (timm {timm.__version__}).",
        pretrained_source=arch,
        cam_reshape=reshape,
    )
    with _LOCK:
        _INFOS[(arch, in_size)] = info
    return info
