"""Model registry by name (timm-style): ``create_model("resnet20", num_classes=10, in_channels=3)``."""

from __future__ import annotations

import fnmatch
import inspect
import typing
from numbers import Integral, Real
from typing import Callable

import torch.nn as nn

from ..errors import UnlearnkitError, unknown_name_error

_MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    name = fn.__name__
    if name in _MODELS:
        raise KeyError(f"model {name!r} is already registered")
    _MODELS[name] = fn
    return fn


def list_models(pattern: str = "*") -> list[str]:
    return sorted(n for n in _MODELS if fnmatch.fnmatch(n, pattern))


def create_model(name: str, *, num_classes: int, in_channels: int = 3, image_size: int | None = 32,
                 input_dim: int | None = None, **kwargs) -> nn.Module:
    """Build a registered model; kwargs set to None fall back to the model's defaults.

    ``weights="file.safetensors"`` (or a ``.pt``/``.pth`` state dict, read with
    ``weights_only=True``) starts a built-in model from your own weights; tensors of
    another shape (a head for another number of classes) keep their fresh initialisation.
    """
    if ":" in name:
        from .external import create_external_model

        return create_external_model(name, num_classes=num_classes, in_channels=in_channels,
                                     image_size=image_size, **kwargs)
    if name not in _MODELS:
        raise unknown_name_error("model", name, _MODELS)
    fn = _MODELS[name]
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    weights = kwargs.pop("weights", None)
    if kwargs.pop("pretrained", False):
        raise UnlearnkitError(f"Built-in model {name!r} has no published pretrained weights; pass weights=FILE "
                              "(your own state dict) or use a timm:/torchvision: model.")
    accepted = inspect.signature(fn).parameters
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        allowed = [p for p in accepted if p not in ("num_classes", "in_channels", "image_size", "input_dim")]
        raise UnlearnkitError(f"Unknown argument(s) {', '.join(unknown)} for model {name!r}; allowed: {', '.join(allowed)}.")
    context = dict(num_classes=num_classes, in_channels=in_channels, image_size=image_size, input_dim=input_dim)
    kwargs.update({k: v for k, v in context.items() if k in accepted})
    check_model_arguments(name, fn, kwargs)
    try:
        model = fn(**kwargs)
    except (ValueError, TypeError, AssertionError, RuntimeError, ZeroDivisionError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        shown = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
        raise UnlearnkitError(f"Model {name!r} cannot be built with {shown}: {first}") from None
    if weights is not None:
        from .external import load_weights_file

        load_weights_file(model, weights)
    return model


def check_model_arguments(name: str, fn: Callable[..., nn.Module], kwargs: dict) -> None:
    """Sizes of a built-in model are ints >= 1 (floats > 0): one line naming the argument otherwise."""
    hints = typing.get_type_hints(fn)
    for key, value in kwargs.items():
        options = typing.get_args(hints.get(key)) or (hints.get(key),)
        kinds = [a for a in options if a is not type(None)]
        if value is None and type(None) in options:
            continue
        if int in kinds and (isinstance(value, bool) or not isinstance(value, Integral) or value < 1):
            allowed = "an int >= 1" if kinds == [int] else "an int >= 1 or None"
        elif float in kinds and (isinstance(value, bool) or not isinstance(value, Real) or not value > 0):
            allowed = "a number > 0"
        else:
            continue
        raise UnlearnkitError(f"The {key!r} argument of model {name!r} must be {allowed}; got {value!r}.")


# where torchvision and timm keep their classifiers (``head`` first: every built-in model has one);
# a ``ResizedInput`` wrapper holds the model as its ``backbone``
HEAD_NAMES = ("head", "fc", "heads.head", "classifier")
HEAD_PREFIXES = ("", "backbone.")


def classifier_head(model: nn.Module, *, guess: bool = True) -> tuple[str, nn.Linear]:
    """Name and module of the classifier head.

    ``guess=True`` (the layer a method leaves unpruned or unadapted): ``model.head`` if it is a
    Linear, else the last Linear of the model. ``guess=False`` (the head an init resets, where a
    wrong guess would keep a pretrained classifier): only a Linear at a known name, ``head``,
    ``fc``, ``heads.head`` or ``classifier`` (or the last layer of an ``nn.Sequential`` there),
    also under ``backbone.``, or timm's ``get_classifier()``; no guessing.
    """
    found = _guessed_head(model) if guess else _named_head(model)
    if found is not None:
        return found
    if guess:
        raise UnlearnkitError(f"{type(model).__name__} has no nn.Linear classifier head: looked for an nn.Linear "
                              "`head`, then for any nn.Linear layer.")
    names = ", ".join(f"`{n}`" for n in HEAD_NAMES)
    raise UnlearnkitError(f"Cannot find the classifier head of {type(model).__name__}: looked for an nn.Linear (or "
                          f"an nn.Sequential ending in one) named {names}, also under `backbone.`, and for timm's "
                          "get_classifier(); give the model a `head` attribute (its nn.Linear classifier).")


def classifier_head_name(model: nn.Module) -> str | None:
    """The name of ``classifier_head(model)``, or None for a model without any nn.Linear (no head to leave out)."""
    try:
        return classifier_head(model)[0]
    except UnlearnkitError:
        return None


def _guessed_head(model: nn.Module) -> tuple[str, nn.Linear] | None:
    head = getattr(model, "head", None)
    if isinstance(head, nn.Linear):
        return "head", head
    last = None
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            last = (name, module)
    return last


def _named_head(model: nn.Module) -> tuple[str, nn.Linear] | None:
    modules = dict(model.named_modules())
    for prefix in HEAD_PREFIXES:
        for name in HEAD_NAMES:
            layer = modules.get(prefix + name)
            if isinstance(layer, nn.Linear):
                return prefix + name, layer
            if isinstance(layer, nn.Sequential) and len(layer) and isinstance(layer[-1], nn.Linear):
                return f"{prefix}{name}.{len(layer) - 1}", layer[-1]
    getter = getattr(model, "get_classifier", None)
    if callable(getter):
        found = getter()
        names = [n for n, m in modules.items() if m is found and n]
        if names and isinstance(found, nn.Linear):
            return names[0], found
    return None
