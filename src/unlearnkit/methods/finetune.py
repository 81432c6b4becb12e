"""Fine-tuning on the retain set (FT): the simplest unlearning baseline.

The forget data is absent from D_r, so continued training overwrites it
(catastrophic forgetting). Defaults from the PruneLoRA paper (arXiv 2411.11907):
Adam, lr 1e-3, batch 128, 5 epochs.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..training import cross_entropy_step
from .base import Method, TrainingConfig, register_method


@dataclass(kw_only=True)
class FinetuneConfig(TrainingConfig):
    """Fine-tune every parameter on the retain set with cross-entropy."""


@register_method("finetune", config=FinetuneConfig,
                 description="Fine-tune all weights on the retain set (FT baseline).")
class Finetune(Method):
    needs_forget = False

    def _unlearn(self, model, retain, forget):
        self.train_epochs(model, retain, cross_entropy_step)
        return model
