"""Gradient ascent (GA): maximise the cross-entropy on the forget set for a few small steps.

Thudi et al., "Unrolling SGD: Understanding Factors Influencing Machine
Unlearning", EuroS&P 2022; Graves et al., "Amnesiac Machine Learning", AAAI 2021.
Defaults follow the GA baseline of Jia et al., "Model Sparsity Can Simplify
Machine Unlearning", NeurIPS 2023 (SGD, lr 1e-4, 5 epochs, batch 256, momentum
0.9, weight decay 5e-4).

Gradient ascent is unbounded: the loss -CE runs to -inf once the forget samples
are misclassified with growing confidence. A non-finite loss stops the run with a
``DivergenceError`` (raised by the shared loop); a run whose last step leaves a
non-finite weight raises it as well. Either way the caller's model is untouched:
the method trains a private copy. Only the forget set is used.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import field
from ..models.outputs import forward
from .base import Method, TrainingConfig, register_method


def ascent_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Loss whose minimisation maximises the cross-entropy of (x, y)."""
    return -F.cross_entropy(forward(model, x), y)


@dataclass(kw_only=True)
class GradientAscentConfig(TrainingConfig):
    """Ascend the forget-set cross-entropy for a few epochs with a small learning rate."""

    epochs: int = field(5, "Passes over the forget set.")
    lr: float = field(1e-4, "Learning rate (keep small: ascent diverges).")
    batch_size: int = field(256, "Batch size.")
    optimizer: Literal["sgd", "adam", "adamw"] = field("sgd", "Optimizer.")
    weight_decay: float = field(5e-4, "Weight decay.")


@register_method("gradient_ascent", config=GradientAscentConfig,
                 description="Maximise the cross-entropy on the forget set for a few small steps (GA).")
class GradientAscent(Method):
    needs_retain = False

    def _unlearn(self, model, retain, forget):
        self.train_epochs(model, forget, ascent_step)  # the base class refuses non-finite weights
        return model
