"""PruneLoRA: prune, then LoRA, then fine-tune on the retain set, then a masked merge.

The best method of "LoRA Unlearns More and Retains More" (Kumar et al., arXiv
2411.11907): structured L2 filter pruning (50% of the output filters of every
layer by default, ``unlearnkit.prune``), LoRA adapters + a fully trainable head
fine-tuned on D_r, and -- unlike the paper's reference code -- a merge that
keeps every pruned weight exactly zero.

Choices that are ours:

- Pruning covers every Conv2d and Linear except the head (``unlearnkit.components.pruning``
  defaults), the same layers LoRA adapts by default.
- The mask is applied to the LoRA update *during training* as well: a pruned target
  computes ``W + mask * (B A) * alpha/r`` (``unlearnkit.components.lora_adapters.LowRankDelta.set_mask``;
  for whole pruned filters as a mask on the adapter's output channels), so the adapter
  is trained for exactly the function that the merged model computes; the merge then
  restores every pruned entry bit for bit. Base weights are frozen; a ``ParamMask``
  guards only a trainable parameter that carries a mask.
- The forget term options of ``lora`` (``forget_loss``) are available too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..config import Interval, NameList, Options, field
from ..errors import InvalidConfigError, UnlearnkitError
from ..components.pruning import prune
from .base import register_method
from .lora import LoraConfig, LoraMethod


@dataclass(kw_only=True)
class PruneLoraConfig(LoraConfig):
    """Prune, then LoRA fine-tuning on the retain set, then a masked merge."""

    kind: Literal["l2_structured", "magnitude_global"] = field(
        "l2_structured", "Pruning: per-layer L2 filter pruning or global magnitude pruning.")
    ratio: float = field(0.5, "Fraction pruned (of filters per layer, or of all weights for global); in [0, 1).")
    layers: tuple[str, ...] | None = field(None, "Modules to prune; None = every Conv2d/Linear but the head.")
    prune_norms: bool = field(False, "Also zero the BatchNorm weight and bias of pruned channels (l2_structured), "
                                     "so unlearnkit.compact can remove them physically.")

    constraints = {
        "kind": [Options("l2_structured", "magnitude_global")],
        "ratio": [Interval(float, 0, 1, closed="left")],
        "layers": [NameList("module names"), None],
        "prune_norms": [bool],
    }
    # the names prune_finetune, omp and unlearnkit.prune use; the old ones still work
    deprecated_names = {"prune_kind": "kind", "prune_ratio": "ratio", "prune_layers": "layers"}

    def _check_consistency(self) -> None:
        super()._check_consistency()
        if self.prune_norms and self.kind != "l2_structured":
            raise InvalidConfigError("The 'prune_norms' parameter of PruneLoraConfig needs kind='l2_structured'; "
                                     f"got kind={self.kind!r}.")


@register_method("prune_lora", config=PruneLoraConfig,
                 description="Prune (L2 filters), LoRA fine-tune on the retain set, masked merge (arXiv 2411.11907).")
class PruneLora(LoraMethod):
    needs_forget = False

    def _prepare(self, model, retain, forget):
        c = self.config
        self._check_forget_term(forget)
        try:
            result = prune(model, kind=c.kind, ratio=c.ratio, layers=c.layers, prune_norms=c.prune_norms)
        except UnlearnkitError as exc:
            raise UnlearnkitError(f"prune_lora ('layers' / 'ratio', formerly 'prune_layers' / 'prune_ratio'): "
                                  f"{exc}") from None
        self.masks = result.masks
        self.info["pruning"] = result.to_dict()
        self._add_adapter(model)
