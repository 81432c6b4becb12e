"""The one-call API: ``unlearnkit.unlearn(model, retain, forget, method="finetune", **config)``."""

from __future__ import annotations

import torch.nn as nn
from torch.utils.data import Dataset

from .methods import MethodConfig, UnlearnResult, create_method


def unlearn(model: nn.Module, retain: Dataset | None, forget: Dataset | None, method: str = "finetune", *,
            config: MethodConfig | dict | None = None, device: str = "auto", seed: int = 0,
            inplace: bool = False, **overrides) -> UnlearnResult:
    """Remove ``forget``'s influence from ``model`` with a registered method.

    ``overrides`` set fields of the method's config (unknown names are an error).
    Each method's parameters, with defaults, allowed values and help, are listed by
    ``unlearnkit methods NAME`` on the command line, or in Python by
    ``unlearnkit.get_method(NAME).config_class.describe()``; the methods by
    ``unlearnkit.list_methods()``.

    ``retain`` and ``forget`` are torch Datasets of ``(x, y)`` pairs, ``(x, y, index)``
    tuples or dicts (Hugging Face style; see ``unlearnkit.data.loading``); the model may
    return logits, a tuple or an object with ``.logits``.

    The input model is left unchanged unless ``inplace=True``; ``result.model``
    is a plain module of the input's class.
    """
    runner = create_method(method, model, config, device=device, seed=seed, inplace=inplace, **overrides)
    return runner.fit(retain, forget)
