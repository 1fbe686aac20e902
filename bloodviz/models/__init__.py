"""The model zoo. Importing this package registers every model."""

from bloodviz.models import (  # noqa: F401  (imports register the models)
    cnn,
    imagenet,
    resnet,
    study000,
    study002,
    study004,
    supcon,
)
from bloodviz.models.registry import (
    ModelInfo,
    create_model,
    list_models,
    model_info,
    register_model,
)

__all__ = [
    "ModelInfo",
    "create_model",
    "list_models",
    "model_info",
    "register_model",
]
