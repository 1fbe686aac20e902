"""ImageNet weights for timm models, online or from a local file, never silently missing.

``pretrained=True`` loads ImageNet weights through timm's own mechanism (the Hugging Face hub
when online). Offline, put the file timm would download in ``$BLOODVIZ_PRETRAINED_DIR``
as ``<timm name>.safetensors`` (or ``.pth`` / ``.bin``); without either, building fails with
:class:`PretrainedUnavailable` and nothing is trained from scratch in its place.
"""

from __future__ import annotations

import os
from pathlib import Path

import timm
import torch.nn as nn


class PretrainedUnavailable(RuntimeError):
    pass


def local_pretrained_file(timm_name: str) -> Path | None:
    folder = os.environ.get("BLOODVIZ_PRETRAINED_DIR")
    if not folder:
        return None
    for suffix in (".safetensors", ".pth", ".bin"):
        path = Path(folder) / f"{timm_name}{suffix}"
        if path.is_file():
            return path
    return None


def timm_model(timm_name: str, num_classes: int, pretrained: bool | str, **kwargs) -> nn.Module:
    """``timm.create_model`` whose ImageNet weights come from a local file or the hub.

    ``pretrained="layout"`` builds the pretrained run's architecture without any weights."""
    if not pretrained or pretrained == "layout":
        return timm.create_model(timm_name, pretrained=False, num_classes=num_classes, **kwargs)
    local = local_pretrained_file(timm_name)
    overlay = {"file": str(local)} if local else None
    try:
        return timm.create_model(
            timm_name,
            pretrained=True,
            num_classes=num_classes,
            pretrained_cfg_overlay=overlay,
            **kwargs,
        )
    except Exception as exc:  # timm raises hub, HTTP and OS errors alike when offline
        raise PretrainedUnavailable(
            f"ImageNet weights for {timm_name} could not be loaded ({type(exc).__name__}: "
            f"{str(exc)[:160]}). Go online once, or put {timm_name}.safetensors in "
            "$BLOODVIZ_PRETRAINED_DIR; or train without --pretrained (labelled 'from scratch')."
        ) from exc
