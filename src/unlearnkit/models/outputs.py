"""The one place a model's output becomes logits, and a batch of inputs becomes a model call.

Every loop calls ``forward(model, x)``: ``x`` is a tensor (``model(x)``) or keyword
``Inputs`` such as ``input_ids`` + ``attention_mask`` (``model(**x)``), and the output
may be a logits tensor, a tuple or list whose first item is the logits, a dict with a
``"logits"`` entry, or an object with ``.logits`` (a ``transformers`` ``ModelOutput``).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from ..data.loading import Inputs
from ..errors import UnlearnkitError


def as_logits(output: Any) -> torch.Tensor:
    """The (batch, classes) logits in a model's output."""
    logits = output
    if not isinstance(logits, torch.Tensor):
        if isinstance(output, dict) and "logits" in output:
            logits = output["logits"]
        elif isinstance(getattr(output, "logits", None), torch.Tensor):
            logits = output.logits
        elif isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
            logits = output[0]
        else:
            raise UnlearnkitError(
                f"The model returned a {type(output).__name__}; expected logits: a (batch, classes) tensor, a "
                "tuple whose first item is the logits, a dict with 'logits' or an object with .logits.")
    if logits.dim() != 2:
        raise UnlearnkitError(f"The model's logits have shape {tuple(logits.shape)}; a classifier returns "
                              "(batch, classes).")
    return logits


def _layout_hint(x: Any) -> str | None:
    if not isinstance(x, torch.Tensor):
        return None
    if x.dim() == 3:
        return (f"the batch has shape {tuple(x.shape)}, (N, H, W) without a channel axis; images must be "
                "(N, C, H, W): add the channel axis (x[:, None] or x.unsqueeze(0) per sample)")
    if x.dim() == 4 and x.shape[3] in (1, 3, 4) and x.shape[1] not in (1, 3, 4):
        return (f"the batch has shape {tuple(x.shape)}, which looks channels-last (N, H, W, C); images must be "
                "(N, C, H, W): permute each sample with x.permute(2, 0, 1)")
    return None


def forward(model: nn.Module, x: Any) -> torch.Tensor:
    """``model``'s logits for one batch of inputs (see the module docstring)."""
    return as_logits(call_model(model, x))


def call_model(model: nn.Module, x: Any) -> Any:
    """``model``'s raw output for one batch (keyword inputs spread), e.g. for passes that only run hooks."""
    try:
        return model(**x) if isinstance(x, Inputs) else model(x)
    except RuntimeError as e:
        hint = _layout_hint(x)
        if hint is None:
            raise
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UnlearnkitError(f"The model failed on the inputs: {hint} (torch said: {first[:160]}).") from None
