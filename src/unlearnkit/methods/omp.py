"""OMP: global unstructured magnitude pruning, then unlearning by fine-tuning on D_r.

From "Model Sparsity Can Simplify Machine Unlearning" (Jia et al., NeurIPS 2023):
"prune first, then unlearn". One-shot magnitude pruning (OMP) removes the 95% of
weights with the smallest magnitude, ranked globally across layers; unlearning then
runs on the sparse model. The paper's unlearning step varies; here it is
fine-tuning on the retain set (Adam, lr 1e-3, batch 128, 5 epochs, the FT
defaults of this library), with the pruning mask enforced exactly so that pruned
weights are still zero in the returned plain module.

Choices that are ours: the pool is the weights (not biases) of every Conv2d and
Linear except the classifier head, which is never pruned; the count pruned is
``round(ratio * n)``; the trainable-parameter count is the unpruned entries.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..config import Interval, field
from .base import TrainingConfig, register_method
from .prune_finetune import PrunedMethod


@dataclass(kw_only=True)
class OMPConfig(TrainingConfig):
    """Global magnitude pruning of ``ratio`` of the weights, then fine-tuning on the retain set."""

    ratio: float = field(0.95, "Fraction of all selected weights pruned (smallest magnitude, global); in [0, 1).")
    layers: tuple[str, ...] | None = field(None, "Module names in the pruning pool; None = every Conv2d and "
                                                 "Linear except the classifier head.")

    constraints = {
        "ratio": [Interval(float, 0, 1, closed="left")],
        "layers": [None, tuple, list],
    }


@register_method("omp", config=OMPConfig,
                 description="Global magnitude pruning (95%), then fine-tune on retain with the mask kept.")
class OMP(PrunedMethod):
    def _pruning_options(self) -> dict:
        return {"kind": "magnitude_global", "ratio": self.config.ratio, "layers": self.config.layers}
