"""Weight pruning that stays pruned: structured L2 filter pruning and global magnitude pruning.

``prune(model, kind=..., ratio=...)`` zeroes weights of ``model`` in place and
returns a ``PruningResult`` whose ``masks`` (True = kept entry, keyed by
parameter name) plug straight into ``ParamMask``, which keeps every pruned entry
at exactly zero through any later training (weight decay, momentum and Adam
state included)::

    result = unlearnkit.prune(model, kind="l2_structured", ratio=0.5)
    mask = ParamMask(model, result.masks)      # pass as ``mask=`` to the training loop

No ``torch.nn.utils.prune`` re-parametrisation is used: the model stays a plain
module whose pruned weights are zero.

Two kinds:

- ``"l2_structured"`` (PruneLoRA, arXiv 2411.11907, after Li et al. 2017,
  "Pruning Filters for Efficient ConvNets"): per layer, the ``ratio`` fraction of
  output filters (Conv2d) or output rows (Linear) with the smallest L2 norm is
  zeroed, together with their bias entries. Default layers: every Conv2d and every
  Linear except the classifier head.
- ``"magnitude_global"`` (OMP in "Model Sparsity Can Simplify Machine Unlearning",
  Jia et al. 2023): the ``ratio`` fraction of all weight entries of the selected
  layers with the smallest magnitude, ranked globally across layers. Biases are
  not pruned.

Choices that are ours: the number pruned is ``round(ratio * n)`` (per layer for
structured, over all selected weights for global); structured pruning always keeps
at least one output per layer; ties are broken by position (lower index pruned
first); BatchNorm / LayerNorm parameters after a pruned channel are left as they
are (as in torch's ``ln_structured``), so a pruned conv channel can still carry
the BatchNorm shift; ``sparsity`` counts the weight tensors of the selected layers
only (biases excluded).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable

import torch
import torch.nn as nn

from ..config import Interval, Options, check_value
from ..errors import UnlearnkitError
from .weight_masks import ParamMask
from ..models.registry import classifier_head_name

KINDS = ("l2_structured", "magnitude_global")
PRUNABLE = (nn.Conv2d, nn.Linear)


@dataclass
class PruningResult:
    """What ``prune`` did: masks by parameter name (True = kept) and the sparsity it left."""

    kind: str
    ratio: float
    masks: dict[str, torch.Tensor]
    sparsity: dict[str, float]
    total_sparsity: float
    pruned: int = 0
    total: int = 0
    layers: list[str] = field(default_factory=list)

    def param_mask(self, model: nn.Module) -> ParamMask:
        """A ``ParamMask`` that keeps the pruned entries of ``model`` at zero during training."""
        return ParamMask(model, self.masks)

    def num_pruned(self, model: nn.Module | None = None, trainable_only: bool = False) -> int:
        """Number of masked-out entries (weights and biases); with a model, only its (trainable) parameters."""
        if model is None:
            return sum(int((~m).sum()) for m in self.masks.values())
        params = dict(model.named_parameters())
        return sum(int((~m).sum()) for n, m in self.masks.items()
                   if n in params and (params[n].requires_grad or not trainable_only))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (no tensors)."""
        return {"kind": self.kind, "ratio": self.ratio, "layers": list(self.layers),
                "sparsity": dict(self.sparsity), "total_sparsity": self.total_sparsity,
                "pruned_weights": self.pruned, "total_weights": self.total}


def prunable_layers(model: nn.Module) -> dict[str, nn.Module]:
    """The default selection: every Conv2d and Linear except the classifier head, by module name."""
    head = classifier_head_name(model)
    return {name: m for name, m in model.named_modules() if isinstance(m, PRUNABLE) and name != head}


def _select(model: nn.Module, layers: Iterable[str] | None) -> dict[str, nn.Module]:
    default = prunable_layers(model)
    if layers is None:
        if not default:
            raise UnlearnkitError(
                f"{type(model).__name__} has no prunable layer (Conv2d or Linear other than the classifier head).")
        return default
    if isinstance(layers, str):
        layers = [layers]
    names = list(dict.fromkeys(layers))
    if not names:
        raise UnlearnkitError("The 'layers' option of prune is empty; give module names or None for the default.")
    modules = dict(model.named_modules())
    head = classifier_head_name(model)
    unknown = [n for n in names if n not in modules]
    if unknown:
        raise UnlearnkitError(
            f"The 'layers' option of prune names unknown modules {unknown}; prunable: {sorted(default)}.")
    if head in names:
        raise UnlearnkitError(f"The 'layers' option of prune names the classifier head {head!r}, which is never pruned.")
    wrong = [n for n in names if not isinstance(modules[n], PRUNABLE)]
    if wrong:
        raise UnlearnkitError(
            f"The 'layers' option of prune names modules that are not Conv2d or Linear: {wrong}; "
            f"prunable: {sorted(default)}.")
    return {n: modules[n] for n in names}


def _norm_masks(model: nn.Module, selected: dict[str, nn.Module], masks: dict[str, torch.Tensor]):
    """Masks of the BatchNorm affine entries that normalise the pruned output channels of ``selected``."""
    from .compaction import channel_chains

    out: dict[str, torch.Tensor] = {}
    for chain in channel_chains(model):
        if chain.producer not in selected:
            continue
        weight_mask = masks[_param_name(chain.producer, "weight")]
        keep_rows = weight_mask.reshape(weight_mask.shape[0], -1).any(dim=1)
        for norm_name in chain.norms:
            norm = model.get_submodule(norm_name)
            if not getattr(norm, "affine", False):
                continue
            for attr in ("weight", "bias"):
                key = _param_name(norm_name, attr)
                out[key] = keep_rows.clone() if key not in out else out[key] & keep_rows
    return out


def _param_name(layer: str, attr: str) -> str:
    return f"{layer}.{attr}" if layer else attr


@torch.no_grad()
def prune(model: nn.Module, *, kind: str = "l2_structured", ratio: float = 0.5,
          layers: Iterable[str] | None = None, prune_norms: bool = False) -> PruningResult:
    """Zero weights of ``model`` in place and return the masks (True = kept) and the sparsity.

    ``kind``: ``"l2_structured"`` (per layer, the ``ratio`` fraction of output
    filters/rows with the smallest L2 norm, and their biases) or
    ``"magnitude_global"`` (the ``ratio`` fraction of all selected weight entries
    with the smallest magnitude). ``ratio`` is in [0, 1). ``layers``: module
    names to prune; None = every Conv2d and Linear except the classifier head.
    ``prune_norms`` (structured only): also zero (and mask) the weight and bias of
    the BatchNorm that normalises each pruned channel, so the channel is exactly
    zero downstream and ``unlearnkit.compact`` can remove it physically.
    """
    if not isinstance(model, nn.Module):
        raise UnlearnkitError(f"prune needs a torch.nn.Module; got {type(model).__name__}.")
    check_value("prune", "kind", kind, [Options(*KINDS)])
    check_value("prune", "ratio", ratio, [Interval(float, 0, 1, closed="left")])
    check_value("prune", "prune_norms", prune_norms, [bool])
    if prune_norms and kind != "l2_structured":
        raise UnlearnkitError("The 'prune_norms' option of prune needs kind='l2_structured' (whole channels).")
    ratio = float(ratio)
    selected = _select(model, layers)
    masks: dict[str, torch.Tensor] = {}
    if kind == "l2_structured":
        for name, module in selected.items():
            weight = module.weight
            n_out = weight.shape[0]
            k = min(int(round(ratio * n_out)), n_out - 1)
            keep_rows = torch.ones(n_out, dtype=torch.bool, device=weight.device)
            if k > 0:
                norms = weight.detach().reshape(n_out, -1).float().norm(dim=1)
                keep_rows[torch.argsort(norms, stable=True)[:k]] = False
            shape = (n_out,) + (1,) * (weight.dim() - 1)
            masks[_param_name(name, "weight")] = keep_rows.view(shape).expand_as(weight).clone()
            if module.bias is not None:
                masks[_param_name(name, "bias")] = keep_rows.clone()
    else:
        weights = {name: m.weight for name, m in selected.items()}
        flat = torch.cat([w.detach().abs().flatten().float().cpu() for w in weights.values()])
        k = int(round(ratio * flat.numel()))
        keep = torch.ones(flat.numel(), dtype=torch.bool)
        if k > 0:
            keep[torch.argsort(flat, stable=True)[:k]] = False
        offset = 0
        for name, w in weights.items():
            n = w.numel()
            masks[_param_name(name, "weight")] = keep[offset:offset + n].view_as(w).to(w.device)
            offset += n
    if prune_norms:
        masks.update(_norm_masks(model, selected, masks))
    params = dict(model.named_parameters())
    for pname, mask in masks.items():
        params[pname].masked_fill_(~mask, 0)
    sparsity, pruned, total = {}, 0, 0
    for name in selected:
        m = masks[_param_name(name, "weight")]
        p = int((~m).sum())
        sparsity[name] = p / m.numel()
        pruned += p
        total += m.numel()
    return PruningResult(kind=kind, ratio=ratio, masks=masks, sparsity=sparsity,
                         total_sparsity=pruned / max(total, 1), pruned=pruned, total=total, layers=list(selected))


@torch.no_grad()
def pruning_from_zeros(model: nn.Module, layers: Iterable[str] | None = None,
                       kind: str = "magnitude_global") -> PruningResult:
    """The ``PruningResult`` of an already pruned model: its exactly-zero weights in the selected layers are pruned.

    Used to unlearn on a prebuilt sparse model (e.g. OMP's cached sparse original) with the same mask.
    """
    selected = _select(model, layers)
    masks, sparsity, pruned, total = {}, {}, 0, 0
    for name, module in selected.items():
        keep = module.weight.detach() != 0
        masks[_param_name(name, "weight")] = keep
        p = int((~keep).sum())
        sparsity[name] = p / keep.numel()
        pruned += p
        total += keep.numel()
    ratio = pruned / max(total, 1)
    return PruningResult(kind=kind, ratio=ratio, masks=masks, sparsity=sparsity, total_sparsity=ratio,
                         pruned=pruned, total=total, layers=list(selected))
