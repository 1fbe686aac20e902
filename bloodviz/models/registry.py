"""Model registry in the style of timm: ``@register_model`` and ``create_model(name, ...)``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from torch import nn


@dataclass(frozen=True)
class ModelInfo:
    name: str
    builder: Callable[..., nn.Module]
    display_name: str
    family: str
    default_size: int = 64
    target_layer: str = ""
    adaptation: str = ""
    description: str = ""
    # training settings this model needs instead of TrainConfig's defaults (e.g. a lower lr)
    recipe: dict = field(default_factory=dict)
    # the timm name whose ImageNet weights ``pretrained=True`` loads; "" = none exist
    pretrained_source: str = ""
    # "gradient": trained by bloodviz.train; "svm": a network's features + an SVM (bloodviz.svm)
    trainer: str = "gradient"
    # how Grad-CAM turns the target layer's output into a map: "" (it is one) or
    # "tokens:<n>" (a transformer's tokens, the first n of them class / distillation tokens)
    cam_reshape: str = ""


_REGISTRY: dict[str, ModelInfo] = {}


def register_model(
    name: str,
    *,
    display_name: str,
    family: str,
    default_size: int = 64,
    target_layer: str = "",
    adaptation: str = "",
    description: str = "",
    recipe: dict | None = None,
    pretrained_source: str = "",
    trainer: str = "gradient",
):
    """Register a builder ``fn(num_classes, in_size, pretrained) -> nn.Module`` under ``name``."""

    def decorator(builder):
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is registered twice")
        _REGISTRY[name] = ModelInfo(
            name=name,
            builder=builder,
            display_name=display_name,
            family=family,
            default_size=default_size,
            target_layer=target_layer,
            adaptation=adaptation,
            description=description,
            recipe=dict(recipe or {}),
            pretrained_source=pretrained_source,
            trainer=trainer,
        )
        return builder

    return decorator


def register_network(name: str, network: type[nn.Module], network_kwargs: dict, **metadata):
    """Register a study's own network class, built as ``network(num_classes, in_size,
    **network_kwargs)``; such networks have no ImageNet weights."""

    @register_model(name, **metadata)
    def build(num_classes: int, in_size: int = 64, pretrained: bool = False) -> nn.Module:
        if pretrained:
            raise ValueError(f"{name} is the study's own network; it has no pretrained weights")
        return network(num_classes, in_size, **network_kwargs)

    return build


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def model_info(name: str) -> ModelInfo:
    if name.startswith("timm:"):  # any timm architecture by name (bloodviz.models.timm_any)
        from bloodviz.models.timm_any import timm_info

        return timm_info(name)
    if name not in _REGISTRY:
        raise KeyError(f"unknown model {name!r}; registered: {', '.join(list_models())}")
    return _REGISTRY[name]


LAYOUT_ONLY = "layout"


def create_model(
    name: str,
    num_classes: int,
    in_size: int | None = None,
    pretrained: bool | str = False,
) -> nn.Module:
    """Build a registered model.

    ``pretrained=True`` loads ImageNet weights (see ``models.pretrained``). Some adaptations
    differ when ImageNet weights are kept (a pretrained 7x7 stem stays), so a checkpoint of a
    pretrained run is rebuilt with ``pretrained="layout"``: that architecture, no download.
    """
    info = model_info(name)
    if pretrained and not info.pretrained_source:
        raise ValueError(f"{name} has no ImageNet weights; train it without --pretrained")
    return info.builder(
        num_classes=num_classes,
        in_size=in_size or info.default_size,
        pretrained=pretrained,
    )
