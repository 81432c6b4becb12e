"""SCRUB: a student that stays close to the original (teacher) on retain data and moves away on forget data.

Kurmanji et al., "Towards Unbounded Machine Unlearning", NeurIPS 2023
(arXiv 2302.09880). The teacher is a frozen copy of the original model (eval
mode, no gradients); the student starts from the original. Each epoch runs a
max-phase (first ``max_epochs`` epochs only) that maximises KL(teacher || student)
on the forget set, then a min-phase that minimises ``kl_weight`` *
KL(teacher || student) + ``ce_weight`` * CE on the retain set. The KL is the
distillation loss with temperature T (scaled by T^2).

Our choices: during the max-phase every BatchNorm module is in eval mode, so
forget-set batches never update running statistics (the reference code lets
them); both phases share one optimizer (its momentum carries over), each phase
is one ``fit`` call; the learning rate is constant (the reference decays it at
fixed epochs). Defaults follow the reference small-scale CIFAR setting: SGD,
lr 5e-4, momentum 0.9, weight decay 5e-4, 5 epochs, 3 max-epochs, retain batch
128, forget batch 32, T = 4, CE weight 1, KL weight 0.5.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import Dataset

from ..config import Interval, Options, field
from ..errors import InvalidConfigError
from ..models.outputs import forward
from ..training import fit, make_optimizer
from .base import Method, TrainingConfig, register_method


def distill_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(teacher || student) of the temperature-softened distributions, times T^2, averaged over the batch."""
    t = temperature
    return F.kl_div(F.log_softmax(student_logits / t, dim=1), F.softmax(teacher_logits / t, dim=1),
                    reduction="batchmean") * t * t


def batchnorm_eval(model: nn.Module) -> None:
    """Put every BatchNorm module in eval mode: it normalises with, and never updates, its running statistics."""
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eval()


def frozen_copy(model: nn.Module) -> nn.Module:
    teacher = copy.deepcopy(model).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


@dataclass(kw_only=True)
class SCRUBConfig(TrainingConfig):
    """Alternate max-phases on the forget set and min-phases on the retain set against a frozen teacher."""

    epochs: int = field(5, "SCRUB epochs; each ends with a min-phase over the retain set.")
    max_epochs: int = field(3, "The first this many epochs start with a max-phase over the forget set (msteps).")
    lr: float = field(5e-4, "Learning rate.")
    batch_size: int = field(128, "Retain-set batch size (min-phase).")
    forget_batch_size: int = field(32, "Forget-set batch size (max-phase).")
    optimizer: Literal["sgd", "adam", "adamw"] = field("sgd", "Optimizer.")
    weight_decay: float = field(5e-4, "Weight decay.")
    schedule: Literal["constant"] = field("constant", "Per-step LR schedule (only constant).")
    temperature: float = field(4.0, "Distillation temperature T.")
    kl_weight: float = field(0.5, "Weight of KL(teacher || student) on the retain set (alpha).")
    ce_weight: float = field(1.0, "Weight of the retain-set cross-entropy (gamma).")

    constraints = {
        "max_epochs": [Interval(int, 0, None)],
        "forget_batch_size": [Interval(int, 1, None)],
        "schedule": [Options("constant")],
        "temperature": [Interval(float, 0, None, closed="neither")],
        "kl_weight": [Interval(float, 0, None, closed="left")],
        "ce_weight": [Interval(float, 0, None, closed="left")],
    }

    def _check_consistency(self) -> None:
        if self.max_epochs > self.epochs:
            raise InvalidConfigError(f"SCRUBConfig: 'max_epochs' ({self.max_epochs}) cannot exceed 'epochs' "
                                     f"({self.epochs}); lower max_epochs or raise epochs.")


@register_method("scrub", config=SCRUBConfig,
                 description="Student-teacher unlearning: max KL to the original on forget, min KL + CE on retain.")
class SCRUB(Method):
    def _prepare(self, model, retain, forget):
        self.teacher = frozen_copy(model)

    def _max_phase(self, model: nn.Module, forget: Dataset, optimizer: torch.optim.Optimizer) -> None:
        teacher, t = self.teacher, self.config.temperature

        def max_step(m, x, y):
            batchnorm_eval(m)  # forget batches must not touch the running statistics
            with torch.no_grad():
                target = forward(teacher, x)
            return -distill_kl(forward(m, x), target, t)

        fit(model, forget, max_step, optimizer, epochs=1, batch_size=self.config.forget_batch_size,
            generator=self.generator, augment=self.config.augment, counter=self.counter,
            description=f"{self.name} max")

    def _min_phase(self, model: nn.Module, retain: Dataset, optimizer: torch.optim.Optimizer) -> None:
        c, teacher = self.config, self.teacher

        def min_step(m, x, y):
            with torch.no_grad():
                target = forward(teacher, x)
            logits = forward(m, x)
            return c.ce_weight * F.cross_entropy(logits, y) + c.kl_weight * distill_kl(logits, target, c.temperature)

        fit(model, retain, min_step, optimizer, epochs=1, batch_size=c.batch_size, generator=self.generator,
            augment=c.augment, counter=self.counter, description=f"{self.name} min")

    def _unlearn(self, model, retain, forget):
        c = self.config
        optimizer = make_optimizer(model.parameters(), c.optimizer, c.lr, c.momentum, c.weight_decay)
        for epoch in range(c.epochs):
            if epoch < c.max_epochs:
                self._max_phase(model, forget, optimizer)
            self._min_phase(model, retain, optimizer)
        return model
