"""SCRUB: a student that stays close to the original (teacher) on retain data and moves away on forget data.

Kurmanji et al., "Towards Unbounded Machine Unlearning", NeurIPS 2023
(arXiv 2302.09880). The teacher is a frozen copy of the original model (eval
mode, no gradients); the student starts from the original. Each epoch runs a
max-phase (first ``max_epochs`` epochs only) that maximises KL(teacher || student)
on the forget set, then a min-phase that minimises ``kl_weight`` *
KL(teacher || student) + ``ce_weight`` * CE on the retain set. The KL is the
distillation loss with temperature T (scaled by T^2).

Two named presets reproduce the reference notebooks exactly (``preset``; the
fields left unset take the preset's values): ``"small"`` (small_scale_unlearning:
Adam, lr 5e-4, weight decay 0.1, 10 epochs, msteps 3, retain batch 32, forget
batch 64, T = 2, alpha 0.5, gamma 1, lr x0.1 after epochs 5, 8 and 9) and
``"large"`` (large_scale_unlearning: SGD, lr 5e-4, momentum 0.9, weight decay
5e-4, 3 epochs, msteps 2, retain batch 256, forget batch 512, T = 4,
alpha 0.001, gamma 0.99, lr x0.1 after epochs 3, 5 and 9, i.e. never within 3
epochs). The default is ``"small"``: on digits (class 3, the tiny CNN of the
tests) it is the preset that forgets (forget accuracy 100 -> 61.9, retain 100)
while ``"large"`` leaves the model as it was (100 / 99.9); see docs/methods/baselines.md.

Our choices: during the max-phase every BatchNorm module is in eval mode, so
forget-set batches never update running statistics (the reference code lets
them); both phases share one optimizer (its momentum carries over), each phase
is one ``fit`` call.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import Dataset

from ..config import Interval, Options, check_value, field
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


# The reference notebooks' settings (meghdadk/SCRUB: small_scale_unlearning.ipynb, large_scale_unlearning.ipynb).
SCRUB_PRESETS: dict[str, dict[str, Any]] = {
    "small": {"optimizer": "adam", "lr": 5e-4, "momentum": 0.9, "weight_decay": 0.1, "epochs": 10, "max_epochs": 3,
              "batch_size": 32, "forget_batch_size": 64, "temperature": 2.0, "kl_weight": 0.5, "ce_weight": 1.0,
              "lr_decay_epochs": (5, 8, 9), "lr_decay_rate": 0.1},
    "large": {"optimizer": "sgd", "lr": 5e-4, "momentum": 0.9, "weight_decay": 5e-4, "epochs": 3, "max_epochs": 2,
              "batch_size": 256, "forget_batch_size": 512, "temperature": 4.0, "kl_weight": 0.001,
              "ce_weight": 0.99, "lr_decay_epochs": (3, 5, 9), "lr_decay_rate": 0.1},
}
_FROM_PRESET = "None = the preset's value."


@dataclass(kw_only=True)
class SCRUBConfig(TrainingConfig):
    """Alternate max-phases on the forget set and min-phases on the retain set against a frozen teacher.

    Fields left at None take the value of ``preset`` (see ``SCRUB_PRESETS``).
    """

    preset: Literal["small", "large"] = field("small", "Reference notebook whose settings fill the unset fields: "
                                                       "'small' (small_scale_unlearning) or 'large' "
                                                       "(large_scale_unlearning).")
    epochs: int | None = field(None, f"SCRUB epochs; each ends with a min-phase over the retain set. {_FROM_PRESET}")
    max_epochs: int | None = field(None, "The first this many epochs start with a max-phase over the forget set "
                                         f"(msteps). {_FROM_PRESET}")
    lr: float | None = field(None, f"Learning rate. {_FROM_PRESET}")
    batch_size: int | None = field(None, f"Retain-set batch size (min-phase). {_FROM_PRESET}")
    forget_batch_size: int | None = field(None, f"Forget-set batch size (max-phase). {_FROM_PRESET}")
    optimizer: Literal["sgd", "adam", "adamw"] | None = field(None, f"Optimizer. {_FROM_PRESET}")
    momentum: float | None = field(None, f"SGD momentum (ignored by Adam). {_FROM_PRESET}")
    weight_decay: float | None = field(None, f"Weight decay. {_FROM_PRESET}")
    schedule: Literal["constant"] = field("constant", "Per-step LR schedule (only constant; see lr_decay_epochs).")
    temperature: float | None = field(None, f"Distillation temperature T. {_FROM_PRESET}")
    kl_weight: float | None = field(None, f"Weight of KL(teacher || student) on the retain set (alpha). {_FROM_PRESET}")
    ce_weight: float | None = field(None, f"Weight of the retain-set cross-entropy (gamma). {_FROM_PRESET}")
    lr_decay_epochs: tuple[int, ...] | None = field(None, "The lr is multiplied by lr_decay_rate once for each of "
                                                          "these epochs already completed (1-based, as the reference). "
                                                          f"{_FROM_PRESET}")
    lr_decay_rate: float | None = field(None, f"Factor of each lr decay. {_FROM_PRESET}")

    constraints = {
        "preset": [Options(*SCRUB_PRESETS)],
        "max_epochs": [Interval(int, 0, None)],
        "forget_batch_size": [Interval(int, 1, None)],
        "schedule": [Options("constant")],
        "temperature": [Interval(float, 0, None, closed="neither")],
        "kl_weight": [Interval(float, 0, None, closed="left")],
        "ce_weight": [Interval(float, 0, None, closed="left")],
        "lr_decay_epochs": [tuple, list],
        "lr_decay_rate": [Interval(float, 0, None, closed="neither")],
    }

    def __post_init__(self) -> None:
        check_value(type(self).__name__, "preset", self.preset, self.constraints["preset"])
        for name, value in SCRUB_PRESETS[self.preset].items():
            if getattr(self, name) is None:
                setattr(self, name, value)
        if isinstance(self.lr_decay_epochs, list):
            self.lr_decay_epochs = tuple(self.lr_decay_epochs)
        super().__post_init__()

    def replace(self, **changes):
        """A copy with ``changes``; a new ``preset`` also resets the fields not named in ``changes``."""
        if "preset" in changes and changes["preset"] != self.preset:
            changes = {**{name: None for name in SCRUB_PRESETS[self.preset]}, **changes}
        return super().replace(**changes)

    def _check_consistency(self) -> None:
        if self.max_epochs > self.epochs:
            raise InvalidConfigError(f"SCRUBConfig: 'max_epochs' ({self.max_epochs}) cannot exceed 'epochs' "
                                     f"({self.epochs}); lower max_epochs or raise epochs.")
        if not all(isinstance(e, int) and not isinstance(e, bool) and e >= 1 for e in self.lr_decay_epochs):
            raise InvalidConfigError("The 'lr_decay_epochs' parameter of SCRUBConfig must be a list of ints >= 1. "
                                     f"Got {self.lr_decay_epochs!r} instead.")


def decayed_lr(base_lr: float, epoch: int, decay_epochs: tuple[int, ...], rate: float) -> float:
    """The reference's step decay: ``base_lr * rate ** #{e in decay_epochs : epoch > e}`` (``epoch`` 1-based)."""
    return base_lr * rate ** sum(epoch > e for e in decay_epochs)


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
            for group in optimizer.param_groups:
                group["lr"] = decayed_lr(c.lr, epoch + 1, c.lr_decay_epochs, c.lr_decay_rate)
            if epoch < c.max_epochs:
                self._max_phase(model, forget, optimizer)
            self._min_phase(model, retain, optimizer)
        return model
