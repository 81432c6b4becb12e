"""LoRA adapters through peft: wrap a classifier, train the adapters, merge them back.

``add_lora(model, rank=..., alpha=..., targets=...)`` injects peft LoRA layers
into ``model`` *in place* (no ``PeftModel`` wrapper: the object keeps its class)
and returns a ``LoraAdapter`` handle::

    adapter = add_lora(model)              # every Conv2d / Linear but the head
    ...train model (only adapters + head have requires_grad)...
    model = adapter.merge(masks=pruning.masks)   # plain module, adapters folded in

Choices that are ours (LoRA itself: Hu et al. 2021, arXiv 2106.09685; defaults
from PruneLoRA, arXiv 2411.11907):

- Default targets: every ``nn.Conv2d`` and ``nn.Linear`` except the classifier
  head (``unlearnkit.models.classifier_head``). For ``vit_tiny`` that is q, k, v,
  proj, fc1, fc2 of every block *and* the patch-embedding conv: one uniform rule
  for every model (the paper's ViT adapters sit on the attention projections only;
  pass ``targets=("q", "k", "v", "proj")`` for that).
- Default rank: 16 (alpha 32) for transformer-like models, 8 (alpha 16) for
  CNNs. A model is transformer-like when it has no ``Conv2d`` other than a patch
  embedding (a conv whose stride equals its kernel size, with no padding); so an
  MLP counts as transformer-like. ``alpha`` defaults to ``2 * rank``.
- The head is trained fully by keeping ``requires_grad=True`` on it, not with
  peft's ``modules_to_save`` (which would wrap it and change the state-dict keys).
- A target string selects the Conv2d/Linear layers whose full name equals it,
  ends with ``"." + target`` (peft's rule) or matches it as a shell pattern
  (``"blocks.*.attn.q"``). Every target must select at least one layer.
- ``merge(masks)`` folds the adapters in with peft's ``merge_and_unload``
  (safe merge: non-finite deltas are an error) and then puts back, bit for bit,
  every entry a mask marks as pruned (False), so merging a LoRA delta into a
  pruned layer never un-prunes it.
"""

from __future__ import annotations

import contextlib
import fnmatch
import functools
import re
from typing import Iterator, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .errors import UnlearnkitError
from .models.registry import classifier_head

LORA_LAYER_TYPES = (nn.Linear, nn.Conv2d)


def _import_peft():
    try:
        import peft
    except ImportError:  # pragma: no cover - peft is a core dependency
        raise UnlearnkitError("LoRA methods need peft; pip install 'peft>=0.13'.") from None
    return peft


def _head_name(model: nn.Module) -> str | None:
    try:
        return classifier_head(model)[0]
    except UnlearnkitError:
        return None


def is_patch_embedding(module: nn.Module) -> bool:
    """A non-overlapping patchify conv (stride == kernel size, no padding), as in ViTs."""
    if not isinstance(module, nn.Conv2d):
        return False
    padding = module.padding if isinstance(module.padding, tuple) else (module.padding,)
    return tuple(module.stride) == tuple(module.kernel_size) and all(p == 0 for p in padding) \
        and max(module.kernel_size) > 1


def is_transformer_like(model: nn.Module) -> bool:
    """True when the model has no Conv2d other than a patch embedding (ViTs, and MLPs)."""
    return not any(isinstance(m, nn.Conv2d) and not is_patch_embedding(m) for m in model.modules())


def default_rank(model: nn.Module) -> tuple[int, float]:
    """(rank, alpha): (16, 32) for transformer-like models, (8, 16) for CNNs (PruneLoRA's settings)."""
    return (16, 32.0) if is_transformer_like(model) else (8, 16.0)


def candidate_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Every Linear / ungrouped Conv2d by name, except the classifier head (and anything inside it)."""
    head = _head_name(model)
    out = {}
    for name, module in model.named_modules():
        if not isinstance(module, LORA_LAYER_TYPES) or getattr(module, "groups", 1) != 1:
            continue  # peft cannot merge LoRA into grouped convs
        if head is not None and (name == head or name.startswith(head + ".")):
            continue
        out[name] = module
    return out


def _matches(name: str, target: str) -> bool:
    return name == target or name.endswith("." + target) or fnmatch.fnmatchcase(name, target)


def resolve_targets(model: nn.Module, targets: Sequence[str] | None = None) -> list[str]:
    """Full names of the layers LoRA goes on; an error when a target selects nothing."""
    layers = candidate_layers(model)
    if not layers:
        raise UnlearnkitError(
            f"{type(model).__name__} has no Conv2d or Linear layer besides the classifier head to put LoRA on.")
    if targets is None:
        return list(layers)
    if isinstance(targets, str):
        targets = [targets]
    targets = list(targets)
    if not targets:
        raise UnlearnkitError("The 'targets' parameter is empty; give layer names or None for every layer.")
    unmatched = [t for t in targets if not any(_matches(n, t) for n in layers)]
    if unmatched:
        head = _head_name(model)
        note = f" (the classifier head {head!r} is always trained fully, not adapted)" if head else ""
        shown = ", ".join(list(layers)[:8]) + (", ..." if len(layers) > 8 else "")
        raise UnlearnkitError(
            f"LoRA targets {targets} include {unmatched}, which match no Conv2d/Linear layer of "
            f"{type(model).__name__}{note}; layers: {shown}.")
    return [n for n in layers if any(_matches(n, t) for t in targets)]


def lora_parameter_count(layers: dict[str, nn.Module], rank: int) -> int:
    """Adapter parameters peft creates for these layers: r*(in+out) per Linear, r*(in*kh*kw + out) per Conv2d."""
    total = 0
    for m in layers.values():
        if isinstance(m, nn.Linear):
            total += rank * (m.in_features + m.out_features)
        else:  # lora_A = Conv2d(in, r, k, stride, padding), lora_B = 1x1 Conv2d(r, out)
            kh, kw = m.kernel_size
            total += rank * (m.in_channels * kh * kw + m.out_channels)
    return total


class LoraAdapter:
    """Handle on a model with peft LoRA layers injected in place."""

    def __init__(self, model: nn.Module, tuner, targets: list[str], rank: int, alpha: float, dropout: float,
                 params: dict[str, nn.Parameter]):
        self.model = model
        self.tuner = tuner
        self.targets = targets
        self.rank = rank
        self.alpha = alpha
        self.dropout = dropout
        self._plain_params = params  # parameter objects by their plain (unwrapped) names
        self._hooks: list = []
        self.merged = False

    def lora_parameters(self) -> list[nn.Parameter]:
        return [p for n, p in self.model.named_parameters() if ".lora_" in n]

    def trainable_parameters(self) -> int:
        """Parameters with requires_grad while the adapter is on (adapters + head)."""
        return sum(p.numel() for p in self.model.parameters() if p.requires_grad)

    def expected_trainable_parameters(self) -> int:
        """What rank and targets imply: the LoRA factors of every target plus the whole head."""
        head = _head_name(self.model)
        head_params = sum(p.numel() for p in self.model.get_submodule(head).parameters()) if head else 0
        return lora_parameter_count(self.base_layers(), self.rank) + head_params

    def base_layers(self) -> dict[str, nn.Module]:
        """The adapted layers (the original modules peft wraps), by name."""
        return {n: self.model.get_submodule(n).get_base_layer() for n in self.targets}

    def enforce_masks(self, masks: dict[str, torch.Tensor]) -> int:
        """Train the adapter as it will be merged: in a masked target layer, the weight used in the
        forward pass is ``W + mask * delta`` (so pruned entries get no update through the adapter).
        Returns the number of layers affected. LoRA dropout is not applied in those layers."""
        count = 0
        for name in self.targets:
            keep = masks.get(f"{name}.weight")
            if keep is None or bool(keep.all()):
                continue
            layer = self.model.get_submodule(name)
            keep = keep.to(device=layer.get_base_layer().weight.device, dtype=torch.bool)
            self._hooks.append(layer.register_forward_hook(functools.partial(_masked_delta_forward, keep=keep)))
            count += 1
        return count

    def remove_hooks(self) -> None:
        for handle in self._hooks:
            handle.remove()
        self._hooks.clear()

    @contextlib.contextmanager
    def disabled(self) -> Iterator[nn.Module]:
        """Inside, the model computes the original (un-adapted) function."""
        self.tuner.disable_adapter_layers()
        try:
            yield self.model
        finally:
            self.tuner.enable_adapter_layers()

    @torch.no_grad()
    def merge(self, masks: dict[str, torch.Tensor] | None = None) -> nn.Module:
        """Fold the adapters into the weights, keep masked-out entries bit for bit, return the plain model."""
        if self.merged:
            raise UnlearnkitError("This LoRA adapter was already merged.")
        masks = masks or {}
        unknown = sorted(set(masks) - set(self._plain_params))
        if unknown:
            raise UnlearnkitError(f"Masks name parameters the model does not have: {unknown[:3]}.")
        self.remove_hooks()
        frozen = {n: self._plain_params[n].detach().clone() for n in masks}
        try:
            model = self.tuner.merge_and_unload(safe_merge=True)
        except ValueError as exc:  # peft: NaNs detected in the merged weights
            raise UnlearnkitError(f"Cannot merge the LoRA adapter: {exc}".splitlines()[0]) from None
        self.merged = True
        params = dict(model.named_parameters())
        for name, keep in masks.items():
            p = params[name]
            p.copy_(torch.where(keep.to(device=p.device, dtype=torch.bool), p, frozen[name].to(p.device)))
        for p in model.parameters():
            p.requires_grad_(True)
        return model


def _masked_delta_forward(layer, inputs, output, *, keep: torch.Tensor):
    if layer.disable_adapters or layer.merged:
        return output
    base = layer.get_base_layer()
    delta = sum(layer.get_delta_weight(a) for a in layer.active_adapters)
    weight = base.weight + delta * keep
    if isinstance(base, nn.Conv2d):
        return base._conv_forward(inputs[0], weight, base.bias)
    return F.linear(inputs[0], weight, base.bias)


def add_lora(model: nn.Module, *, rank: int | None = None, alpha: float | None = None, dropout: float = 0.0,
             targets: Sequence[str] | None = None, train_head: bool = True) -> LoraAdapter:
    """Inject LoRA into ``model`` in place; freeze everything but the adapters (and the head)."""
    if rank is not None and (isinstance(rank, bool) or not isinstance(rank, int) or rank < 1):
        raise UnlearnkitError(f"The 'rank' parameter must be an int >= 1 (or None for auto). Got {rank!r} instead.")
    if getattr(model, "peft_config", None) is not None:
        raise UnlearnkitError(f"{type(model).__name__} already carries peft adapters; merge them first.")
    auto_rank, _ = default_rank(model)
    rank = auto_rank if rank is None else rank
    alpha = 2.0 * rank if alpha is None else float(alpha)
    names = resolve_targets(model, targets)
    peft = _import_peft()
    plain = dict(model.named_parameters())
    for p in model.parameters():
        p.requires_grad_(False)
    config = peft.LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, bias="none",
                             target_modules="^(" + "|".join(re.escape(n) for n in names) + ")$")
    tuner = peft.LoraModel(model, config, "default")
    head = _head_name(model)
    if train_head and head is not None:
        for p in model.get_submodule(head).parameters():
            p.requires_grad_(True)
    return LoraAdapter(model, tuner, names, rank, alpha, dropout, plain)
