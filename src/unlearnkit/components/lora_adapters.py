"""LoRA adapters (our own small implementation): wrap a classifier, train the adapters, merge them back.

``add_lora(model, rank=..., alpha=..., targets=...)`` puts LoRA on ``model``'s layers
*in place* (the object keeps its class) and returns a ``LoraAdapter`` handle::

    adapter = add_lora(model)              # every Conv2d / Linear but the head
    ...train model (only adapters + head have requires_grad)...
    model = adapter.merge(masks=pruning.masks)   # plain module, adapters folded in

A target layer computes ``W x + s * B A x`` with ``s = alpha / rank``, ``A`` (rank x
fan-in, Kaiming-uniform) and ``B`` (out x rank, zeros), as in LoRA (Hu et al. 2021,
arXiv 2106.09685) and peft. For a Conv2d, ``A`` is a conv with the base layer's kernel,
stride, padding and dilation to ``rank`` channels and ``B`` a 1x1 conv (peft's layout).
Defaults from PruneLoRA (arXiv 2411.11907) and its reference code.

Choices that are ours:

- Default targets: every ``nn.Conv2d`` and ``nn.Linear`` except the classifier
  head (``unlearnkit.models.classifier_head``), and the two projections of every
  ``nn.MultiheadAttention`` (``<name>.in_proj_weight`` and ``<name>.out_proj``).
  torch's attention reads those weights directly (its ``out_proj`` module is never
  called), so there the adapter is a parametrization of the weight
  (``W + s * B A`` recomputed at every use), which the fused and the plain
  attention paths both see.
- Default rank: 16 (alpha 32) for transformer-like models, 8 (alpha 16) for
  CNNs. A model is transformer-like when it has no ``Conv2d`` other than a patch
  embedding (a conv whose stride equals its kernel size, with no padding); so an
  MLP counts as transformer-like. ``alpha`` defaults to ``2 * rank``.
- Rank above a layer's width: a layer whose weight has rank at most
  ``min(out, fan_in)`` gets that rank instead (a higher one only adds parameters);
  the scaling stays ``alpha / rank`` of the requested rank. A rank above every
  target's limit is an error.
- Two ways to compute the same function, chosen per layer by their cost: the
  low-rank path (``base(x) + s * B(A(dropout(x)))``: no weight gradient for the
  frozen base) when ``3 r (fan_in + out) < out * fan_in`` multiply-adds per output
  position (for a Conv2d the left side is weighted by 4, the measured overhead of the
  adapter's narrow convolutions on CPU), else the merged-weight path (one layer call with ``W + s * B A``, whose
  weight gradient reaches A and B). The merged path has no dropout, so with
  ``dropout > 0`` every unmasked layer takes the low-rank path.
- The head is trained fully (``requires_grad=True``); everything else is frozen.
- A target string selects the layers whose full name equals it, ends with
  ``"." + target`` (peft's rule) or matches it as a shell pattern
  (``"blocks.*.attn.q"``). Every target must select at least one layer.
- ``merge(masks)`` folds the adapters in (a non-finite delta is an error), puts the
  original modules back (state-dict keys unchanged) and then restores, bit for bit,
  every entry a mask marks as pruned (False), so merging never un-prunes.
"""

from __future__ import annotations

import contextlib
import fnmatch
import math
from typing import Iterator, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils import parametrize

from ..errors import UnlearnkitError
from ..models.registry import classifier_head_name

LORA_LAYER_TYPES = (nn.Linear, nn.Conv2d)


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


class WeightSite:
    """One weight LoRA can adapt: ``owner.<param>`` (a Linear/Conv2d's ``weight`` or an attention projection)."""

    def __init__(self, owner: nn.Module, param: str, called: bool, plain_name: str = ""):
        self.owner, self.param = owner, param
        self.called = called  # False: the owner's forward is bypassed (attention), so parametrize the weight
        self.plain_name = plain_name  # the weight's name in the un-adapted model's named_parameters()
        self.param_order = list(owner._parameters)  # restored after a parametrization is removed

    @property
    def weight(self) -> torch.Tensor:
        return getattr(self.owner, self.param)

    def max_rank(self) -> int:
        w = self.weight
        return min(w.shape[0], w[0].numel())

    def describe(self) -> str:
        w = self.weight
        if isinstance(self.owner, nn.Conv2d):
            kh, kw = self.owner.kernel_size
            return f"Conv2d {w.shape[1]}->{w.shape[0]} {kh}x{kw}"
        return f"{type(self.owner).__name__} {w.shape[1]}->{w.shape[0]}"


def _attention_sites(name: str, mha: nn.MultiheadAttention) -> dict[str, WeightSite]:
    if not mha._qkv_same_embed_dim:
        return {}  # separate q/k/v weights (kdim/vdim != embed_dim): not supported, see unsupported_attention
    prefix = f"{name}." if name else ""
    return {f"{prefix}in_proj_weight": WeightSite(mha, "in_proj_weight", False, f"{prefix}in_proj_weight"),
            f"{prefix}out_proj": WeightSite(mha.out_proj, "weight", False, f"{prefix}out_proj.weight")}


def weight_sites(model: nn.Module) -> dict[str, WeightSite]:
    """Every adaptable weight by name, except the classifier head (and anything inside it)."""
    head = classifier_head_name(model)
    attention_outputs = set()
    out: dict[str, WeightSite] = {}
    for name, module in model.named_modules():
        if head is not None and (name == head or name.startswith(head + ".")):
            continue
        if isinstance(module, nn.MultiheadAttention):
            sites = _attention_sites(name, module)
            attention_outputs.add(f"{name}.out_proj" if name else "out_proj")
            out.update(sites)
        elif isinstance(module, LORA_LAYER_TYPES) and name not in attention_outputs:
            if getattr(module, "groups", 1) != 1:
                continue  # a grouped conv's weight is not one matrix: no B A of its shape
            out[name] = WeightSite(module, "weight", True, f"{name}.weight")
    return out


def unsupported_attention(model: nn.Module) -> list[str]:
    """nn.MultiheadAttention modules with separate q/k/v weights, which LoRA does not adapt."""
    return [n for n, m in model.named_modules()
            if isinstance(m, nn.MultiheadAttention) and not m._qkv_same_embed_dim]


def candidate_layers(model: nn.Module) -> dict[str, nn.Module]:
    """The modules owning the adaptable weights, by target name."""
    return {n: s.owner for n, s in weight_sites(model).items()}


def _matches(name: str, target: str) -> bool:
    return name == target or name.endswith("." + target) or fnmatch.fnmatchcase(name, target)


def resolve_targets(model: nn.Module, targets: Sequence[str] | None = None) -> list[str]:
    """Full names of the weights LoRA goes on; an error when a target selects nothing."""
    layers = weight_sites(model)
    skipped = unsupported_attention(model) if targets is None else []
    if skipped:
        raise UnlearnkitError(
            f"LoRA cannot adapt the attention {skipped[0]!r}: an nn.MultiheadAttention with kdim/vdim other "
            "than embed_dim keeps separate q/k/v weights, which unlearnkit does not adapt; give 'targets' "
            "that leave it out.")
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
        head = classifier_head_name(model)
        note = f" (the classifier head {head!r} is always trained fully, not adapted)" if head else ""
        shown = ", ".join(list(layers)[:8]) + (", ..." if len(layers) > 8 else "")
        raise UnlearnkitError(
            f"LoRA targets {targets} include {unmatched}, which match no Conv2d/Linear layer of "
            f"{type(model).__name__}{note}; layers: {shown}.")
    return [n for n in layers if any(_matches(n, t) for t in targets)]


def layer_rank(site_or_layer, rank: int) -> int:
    """The rank a layer gets: the requested one, at most the rank its weight can have."""
    site = site_or_layer if isinstance(site_or_layer, WeightSite) else WeightSite(site_or_layer, "weight", True)
    return min(rank, site.max_rank())


def lora_parameter_count(layers: dict[str, nn.Module], rank: int) -> int:
    """Adapter parameters for these layers: r*(in+out) per Linear, r*(in*kh*kw + out) per Conv2d (r clamped)."""
    total = 0
    for m in layers.values():
        site = m if isinstance(m, WeightSite) else WeightSite(m, "weight", True)
        w = site.weight
        total += layer_rank(site, rank) * (w[0].numel() + w.shape[0])
    return total


class LowRankDelta(nn.Module):
    """The factors of ``s * B A`` for one weight of shape (out, in, *kernel), optionally masked."""

    def __init__(self, weight: torch.Tensor, rank: int, scaling: float):
        super().__init__()
        out, rest = weight.shape[0], tuple(weight.shape[1:])
        kw = dict(device=weight.device, dtype=weight.dtype)
        self.lora_A = nn.Parameter(torch.empty((rank,) + rest, **kw))
        self.lora_B = nn.Parameter(torch.zeros((out, rank) + (1,) * (len(rest) - 1), **kw))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.scaling = scaling
        self.enabled = True
        self.keep: torch.Tensor | None = None  # weight-shaped bool mask, or None
        self.keep_rows: torch.Tensor | None = None  # (out,) float 0/1 when the mask prunes whole output rows

    @property
    def shape(self) -> torch.Size:
        return torch.Size((self.lora_B.shape[0],) + tuple(self.lora_A.shape[1:]))

    def delta(self) -> torch.Tensor:
        """``s * B A`` (masked) in the weight's shape."""
        d = (self.lora_B.flatten(1) @ self.lora_A.flatten(1)).view(self.shape) * self.scaling
        return d if self.keep is None else d * self.keep

    def set_mask(self, keep: torch.Tensor) -> None:
        keep = keep.to(device=self.lora_A.device, dtype=torch.bool)
        rows = keep.flatten(1)
        self.keep = keep
        whole_rows = bool((rows.all(1) == rows.any(1)).all())
        self.keep_rows = rows[:, 0].to(self.lora_A.dtype) if whole_rows else None


class LoraLayer(nn.Module):
    """A Linear or Conv2d (``base_layer``) plus a low-rank update (``lora``)."""

    def __init__(self, base: nn.Module, rank: int, scaling: float, dropout: float):
        super().__init__()
        self.base_layer = base
        self.lora = LowRankDelta(base.weight, rank, scaling)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.conv = isinstance(base, nn.Conv2d)
        zero_padding = not self.conv or base.padding_mode == "zeros"
        self.low_rank = zero_padding and (dropout > 0 or _low_rank_is_cheaper(base.weight, rank))

    @property
    def weight(self) -> torch.Tensor:
        """The adapted weight, for code that reads a layer's weight instead of calling it (torch's fused
        TransformerEncoderLayer path reads ``linear1.weight``)."""
        return self.base_layer.weight + self.lora.delta() if self.lora.enabled else self.base_layer.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.base_layer.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d, base = self.lora, self.base_layer
        if not d.enabled:
            return base(x)
        if not self.low_rank or (d.keep is not None and d.keep_rows is None):
            return self._call_with_weight(x, base.weight + d.delta())
        update = self._low_rank_update(self.dropout(x))
        if d.keep_rows is not None:
            update = update * (d.keep_rows.view(-1, 1, 1) if self.conv else d.keep_rows)
        return base(x) + update

    def _low_rank_update(self, x: torch.Tensor) -> torch.Tensor:
        d, base = self.lora, self.base_layer
        if self.conv:
            z = F.conv2d(x, d.lora_A, None, base.stride, base.padding, base.dilation)
            return F.conv2d(z, d.lora_B) * d.scaling
        return F.linear(F.linear(x, d.lora_A), d.lora_B) * d.scaling

    def _call_with_weight(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        base = self.base_layer
        if self.conv:
            return base._conv_forward(x, weight, base.bias)
        return F.linear(x, weight, base.bias)


CONV_LOW_RANK_OVERHEAD = 4  # a rank-r conv and a 1x1 conv cost ~4x their multiply-adds (measured, CPU)


def _low_rank_is_cheaper(weight: torch.Tensor, rank: int) -> bool:
    """Multiply-adds per output position: A and B forward + both backward passes vs the base weight gradient.
    For a conv the adapter's two extra narrow convolutions are weighted by ``CONV_LOW_RANK_OVERHEAD``: on
    ResNet-20 (rank 8, widest conv 64 channels) the low-rank path on its 32/64-channel convs made a LoRA step
    8-11% slower than the merged weight everywhere (docs/methods/lora.md, "Cost")."""
    out, fan_in = weight.shape[0], weight[0].numel()
    overhead = CONV_LOW_RANK_OVERHEAD if weight.dim() == 4 else 1
    return overhead * 3 * rank * (fan_in + out) < out * fan_in


class WeightPlusDelta(nn.Module):
    """Parametrization ``W -> W + s * B A`` for weights the owner's forward reads directly (attention)."""

    def __init__(self, delta: LowRankDelta):
        super().__init__()
        self.lora = delta

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight + self.lora.delta() if self.lora.enabled else weight


class LoraAdapter:
    """Handle on a model with LoRA put on in place."""

    def __init__(self, model: nn.Module, targets: list[str], rank: int, alpha: float, dropout: float,
                 params: dict[str, nn.Parameter], sites: dict[str, WeightSite], deltas: dict[str, LowRankDelta]):
        self.model = model
        self.targets = targets
        self.rank = rank
        self.alpha = alpha
        self.dropout = dropout
        self._plain_params = params  # parameter objects by their plain (unwrapped) names
        self._sites = sites
        self.deltas = deltas
        self.merged = False

    def lora_parameters(self) -> list[nn.Parameter]:
        return [p for d in self.deltas.values() for p in (d.lora_A, d.lora_B)]

    def trainable_parameters(self) -> int:
        """Parameters with requires_grad while the adapter is on (adapters + head)."""
        return sum(p.numel() for p in self.model.parameters() if p.requires_grad)

    def expected_trainable_parameters(self) -> int:
        """What rank and targets imply: the LoRA factors of every target plus the whole head."""
        head = classifier_head_name(self.model)
        head_params = sum(p.numel() for p in self.model.get_submodule(head).parameters()) if head else 0
        return lora_parameter_count(self._sites, self.rank) + head_params

    def clamped_layers(self) -> dict[str, int]:
        """Targets whose rank was lowered to their weight's rank: name -> rank used."""
        return {n: d.lora_A.shape[0] for n, d in self.deltas.items() if d.lora_A.shape[0] < self.rank}

    def base_layers(self) -> dict[str, nn.Module]:
        """The modules owning the adapted weights, by target name."""
        return {n: s.owner for n, s in self._sites.items()}

    def enforce_masks(self, masks: dict[str, torch.Tensor]) -> int:
        """Train the adapter as it will be merged: in a masked target, the weight used in the forward pass is
        ``W + mask * delta`` (so pruned entries get no update through the adapter). Returns the number of
        targets affected."""
        count = 0
        for name, site in self._sites.items():
            keep = masks.get(site.plain_name)
            if keep is None or bool(keep.all()):
                continue
            self.deltas[name].set_mask(keep)
            count += 1
        return count

    def remove_hooks(self) -> None:
        """Kept for callers of the earlier peft-based adapter: there are no hooks to remove."""

    @contextlib.contextmanager
    def disabled(self) -> Iterator[nn.Module]:
        """Inside, the model computes the original (un-adapted) function."""
        for d in self.deltas.values():
            d.enabled = False
        try:
            yield self.model
        finally:
            for d in self.deltas.values():
                d.enabled = True

    @torch.no_grad()
    def merge(self, masks: dict[str, torch.Tensor] | None = None) -> nn.Module:
        """Fold the adapters into the weights, keep masked-out entries bit for bit, return the plain model."""
        if self.merged:
            raise UnlearnkitError("This LoRA adapter was already merged.")
        masks = masks or {}
        unknown = sorted(set(masks) - set(self._plain_params))
        if unknown:
            raise UnlearnkitError(f"Masks name parameters the model does not have: {unknown[:3]}.")
        bad = [n for n, d in self.deltas.items() if not torch.isfinite(d.delta()).all()]
        if bad:
            raise UnlearnkitError(f"Cannot merge the LoRA adapter: non-finite update in {bad[:3]}.")
        frozen = {n: self._plain_params[n].detach().clone() for n in masks}
        for name, site in self._sites.items():
            self._fold(name, site)
        self.merged = True
        params = dict(self.model.named_parameters())
        for name, keep in masks.items():
            p = params[name]
            p.copy_(torch.where(keep.to(device=p.device, dtype=torch.bool), p, frozen[name].to(p.device)))
        for p in self.model.parameters():
            p.requires_grad_(True)
        return self.model

    def _fold(self, name: str, site: WeightSite) -> None:
        delta = self.deltas[name].delta()
        if site.called:
            parent, _, child = name.rpartition(".")
            owner = self.model.get_submodule(parent) if parent else self.model
            setattr(owner, child, site.owner)  # the LoraLayer wrapper goes, the original module comes back
            site.weight.add_(delta)
        else:
            order = site.param_order
            parametrize.remove_parametrizations(site.owner, site.param, leave_parametrized=False)
            site.weight.add_(delta)
            params = site.owner._parameters  # removal re-adds the weight last: put it back where it was
            for key in sorted(params, key=lambda k: order.index(k) if k in order else len(order)):
                params[key] = params.pop(key)


def _check_rank(rank, sites: dict[str, WeightSite]) -> None:
    if rank is not None and (isinstance(rank, bool) or not isinstance(rank, int) or rank < 1):
        raise UnlearnkitError(f"The 'rank' parameter must be an int >= 1 (or None for auto). Got {rank!r} instead.")
    if rank is None:
        return
    widest = max(sites.items(), key=lambda kv: kv[1].max_rank())
    if rank > widest[1].max_rank():
        raise UnlearnkitError(
            f"The 'rank' parameter ({rank}) is above the rank of every target weight: the largest is "
            f"{widest[1].max_rank()} ({widest[0]!r}, {widest[1].describe()}); use a rank <= {widest[1].max_rank()}.")


def add_lora(model: nn.Module, *, rank: int | None = None, alpha: float | None = None, dropout: float = 0.0,
             targets: Sequence[str] | None = None, train_head: bool = True) -> LoraAdapter:
    """Put LoRA on ``model`` in place; freeze everything but the adapters (and the head)."""
    if any(isinstance(m, (LoraLayer, WeightPlusDelta)) for m in model.modules()):
        raise UnlearnkitError(f"{type(model).__name__} already carries LoRA adapters; merge them first.")
    if not 0 <= dropout < 1:
        raise UnlearnkitError(f"The 'dropout' parameter must be a float in [0, 1). Got {dropout!r} instead.")
    names = resolve_targets(model, targets)
    all_sites = weight_sites(model)
    sites = {n: all_sites[n] for n in names}
    _check_rank(rank, sites)
    rank = default_rank(model)[0] if rank is None else rank
    alpha = 2.0 * rank if alpha is None else float(alpha)
    plain = dict(model.named_parameters())
    for p in model.parameters():
        p.requires_grad_(False)
    deltas = {name: _attach(model, name, site, rank, alpha / rank, dropout) for name, site in sites.items()}
    head = classifier_head_name(model)
    if train_head and head is not None:
        for p in model.get_submodule(head).parameters():
            p.requires_grad_(True)
    return LoraAdapter(model, names, rank, alpha, dropout, plain, sites, deltas)


def _attach(model: nn.Module, name: str, site: WeightSite, rank: int, scaling: float,
            dropout: float) -> LowRankDelta:
    r = layer_rank(site, rank)
    if site.called:
        wrapper = LoraLayer(site.owner, r, scaling, dropout)
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, wrapper)
        return wrapper.lora
    delta = LowRankDelta(site.weight, r, scaling)
    parametrize.register_parametrization(site.owner, site.param, WeightPlusDelta(delta))
    return delta
