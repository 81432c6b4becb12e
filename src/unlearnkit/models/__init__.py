"""Model registry (mlp, cnn, resnet20, resnet56, vit_tiny); any user nn.Module classifier works too."""

from . import zoo  # noqa: F401  (registers the built-in models)
from .registry import classifier_head, create_model, list_models, register_model
from .zoo import fresh_copy

__all__ = ["classifier_head", "create_model", "fresh_copy", "list_models", "register_model"]
