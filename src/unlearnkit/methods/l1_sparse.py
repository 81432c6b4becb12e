"""l1-sparse unlearning: fine-tune on the retain set with a decaying l1 penalty on the weights.

Jia et al., "Model Sparsity Can Simplify Machine Unlearning", NeurIPS 2023
(arXiv 2304.04934), "sparsity-aware unlearning": minimise
CE(theta; D_r) + alpha_t * ||theta||_1 with alpha_t decaying linearly to 0.

Our choices: the penalty covers every trainable parameter (as in the reference
code); alpha_t decays linearly *per step*, alpha_t = alpha * (1 - t / T) over the T
steps of the run (the reference decays per epoch); alpha = 5e-4 (the paper's
range is 5e-5..1e-3). Other defaults follow the paper's CIFAR-10 scripts: SGD,
lr 0.01, 10 epochs, batch 256, momentum 0.9, weight decay 5e-4.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from ..config import Interval, field
from ..data import num_batches
from ..models.outputs import forward
from .base import Method, TrainingConfig, register_method


def l1_norm(params) -> torch.Tensor:
    return sum(p.abs().sum() for p in params)


@dataclass(kw_only=True)
class L1SparseConfig(TrainingConfig):
    """Fine-tune on the retain set with cross-entropy plus a linearly decaying l1 penalty."""

    alpha: float = field(5e-4, "Initial weight of the l1 penalty; decays linearly to 0 over the run.")
    epochs: int = field(10, "Passes over the retain set.")
    lr: float = field(0.01, "Learning rate.")
    batch_size: int = field(256, "Batch size.")
    optimizer: Literal["sgd", "adam", "adamw"] = field("sgd", "Optimizer.")
    weight_decay: float = field(5e-4, "Weight decay.")

    constraints = {"alpha": [Interval(float, 0, None, closed="left")]}


@register_method("l1_sparse", config=L1SparseConfig,
                 description="Fine-tune on the retain set with CE + a linearly decaying l1 penalty (l1-sparse).")
class L1Sparse(Method):
    needs_forget = False

    def _unlearn(self, model, retain, forget):
        c = self.config
        total = max(c.epochs * num_batches(retain, c.batch_size), 1)
        params = [p for p in model.parameters() if p.requires_grad]
        step = {"t": 0}

        def penalised_step(m, x, y):
            alpha_t = c.alpha * (1.0 - step["t"] / total)
            step["t"] += 1
            loss = F.cross_entropy(forward(m, x), y)
            return loss + alpha_t * l1_norm(params) if alpha_t > 0 else loss

        with torch.no_grad():
            self.info["l1_norm_before"] = float(l1_norm(params))
        self.train_epochs(model, retain, penalised_step)
        with torch.no_grad():
            self.info["l1_norm_after"] = float(l1_norm(params))
        return model
