"""Prune, then fine-tune on the retain set with the pruning mask enforced (Pruned+FT).

From "LoRA Unlearns More and Retains More" (PruneLoRA, arXiv 2411.11907): structured
L2 pruning of 50% of the output filters of every conv layer, per layer (smallest L2
norm), then fine-tuning on D_r with Adam, lr 1e-3, batch 128, 5 epochs.

Unlike the paper's reference code, the mask stays enforced through fine-tuning
(``ParamMask``: gradients masked before each step and pruned entries restored to
zero after it, so momentum, Adam state and weight decay cannot regrow them), and the
returned model is a plain module whose pruned weights are exactly zero.

Choices that are ours: hidden Linear layers are pruned too by default (every
Conv2d and Linear except the classifier head, so MLPs and ViTs are covered; pass
``layers`` to restrict it); pruning runs in ``prepare`` (timed as preparation);
the trainable-parameter count excludes the pruned entries.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..config import Interval, Options, field
from ..errors import InvalidConfigError
from ..components.weight_masks import ParamMask
from ..components.pruning import KINDS, PruningResult, prune
from ..training import cross_entropy_step
from ..utils import count_parameters
from .base import Method, TrainingConfig, register_method


@dataclass(kw_only=True)
class PruneFinetuneConfig(TrainingConfig):
    """Prune (structured L2 by default), then fine-tune the unpruned weights on the retain set."""

    ratio: float = field(0.5, "Fraction pruned: of each layer's output filters/rows (l2_structured) "
                              "or of all selected weights (magnitude_global); in [0, 1).")
    kind: Literal["l2_structured", "magnitude_global"] = field("l2_structured", "Pruning kind.")
    layers: tuple[str, ...] | None = field(None, "Module names to prune; None = every Conv2d and Linear "
                                                 "except the classifier head.")
    prune_norms: bool = field(False, "Also zero the BatchNorm weight and bias of pruned channels (l2_structured), "
                                     "so unlearnkit.compact can remove them physically.")

    constraints = {
        "ratio": [Interval(float, 0, 1, closed="left")],
        "kind": [Options(*KINDS)],
        "layers": [None, tuple, list],
        "prune_norms": [bool],
    }

    def _check_consistency(self) -> None:
        if self.prune_norms and self.kind != "l2_structured":
            raise InvalidConfigError("The 'prune_norms' parameter of PruneFinetuneConfig needs kind='l2_structured'; "
                                     f"got kind={self.kind!r}.")


class PrunedMethod(Method):
    """Shared by prune_finetune and omp: prune in ``prepare``, fine-tune on D_r under the mask."""

    needs_forget = False
    pruning: PruningResult | None = None

    def _pruning_options(self) -> dict:
        c = self.config
        return {"kind": c.kind, "ratio": c.ratio, "layers": c.layers, "prune_norms": c.prune_norms}

    def _prepare(self, model, retain, forget):
        self.pruning = prune(model, **self._pruning_options())
        self.info["pruning"] = self.pruning.to_dict()
        self.info["sparsity"] = self.pruning.total_sparsity

    def _trainable_parameters(self, model):
        return count_parameters(model, trainable_only=True) - self.pruning.num_pruned(model, trainable_only=True)

    def _unlearn(self, model, retain, forget):
        mask = ParamMask(model, self.pruning.masks)
        self.train_epochs(model, retain, cross_entropy_step, mask=mask)
        return model


@register_method("prune_finetune", config=PruneFinetuneConfig,
                 description="Structured L2 pruning (50% of filters), then fine-tune on retain with the mask kept.")
class PruneFinetune(PrunedMethod):
    pass
