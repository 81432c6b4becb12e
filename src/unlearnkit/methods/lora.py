"""LoRA unlearning: train low-rank adapters (and the head) on the retain set, then merge them.

From "LoRA Unlearns More and Retains More" (Kumar et al., arXiv 2411.11907):
LoRA adapters on the backbone (rank 8 / alpha 16 on the convs of a ResNet, rank 16
/ alpha 32 on a ViT), the classifier head fully trainable, everything else frozen,
then fine-tuning on D_r (Adam, lr 1e-3, batch 128, 5 epochs). Adapters from
``unlearnkit.lora``. LoRA dropout defaults to 0.0 where the reference code uses 0.1:
on CPU the dropout mask over every adapted layer's input doubled the step time of
ResNet-20 (docs/methods/lora.md, "Cost"); ``dropout=0.1`` gives the reference setting. Unlike the paper's reference code, the adapter is always
merged at the end: the returned model is a plain module of the input's class
whose state-dict keys equal the input's.

Choices that are ours: the default targets and the transformer detection (see
``unlearnkit.lora``); the optional forget term for sample forgetting, where
retain-only fine-tuning forgets slowly (each retain batch is paired with a forget
batch, cycling through the forget set):

- ``forget_loss="random_label"``: ``+ forget_weight * CE(f(x_f), y')`` with
  ``y'`` drawn uniformly from the classes other than the true one;
- ``forget_loss="gradient_ascent"``: ``- forget_weight * min(CE(f(x_f), y_f),
  2 ln C)``; the cap (ours) stops the ascent once the forget loss is twice the
  chance-level loss, so the term cannot diverge.

BatchNorm running statistics keep updating during training (``model.train()``,
as in the paper's code); the affine parameters stay frozen.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator, Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import Interval, NameList, Options, field
from ..data.loading import cat_inputs, iterate_batches
from ..errors import UnlearnkitError
from ..components.lora_adapters import LoraAdapter, add_lora
from ..components.weight_masks import ParamMask
from ..models.outputs import forward
from ..models.registry import classifier_head
from ..training import cross_entropy_step
from .base import Method, TrainingConfig, register_method


@dataclass(kw_only=True)
class LoraAdapterConfig(TrainingConfig):
    """The LoRA fields shared by ``lora``, ``prune_lora`` and ``rfa_lora``."""

    rank: int | None = field(None, "LoRA rank; None = 8 for CNNs, 16 for transformer-like models.")
    alpha: float | None = field(None, "LoRA alpha (the update is scaled by alpha / rank); None = 2 x rank.")
    dropout: float = field(0.0, "Dropout on the LoRA input (the PruneLoRA reference uses 0.1; see docs for the cost).")
    targets: tuple[str, ...] | None = field(
        None, "Layer names (or suffixes, or shell patterns) to adapt; None = every Conv2d/Linear but the head.")

    constraints = {
        "rank": [Interval(int, 1, None), None],
        "alpha": [Interval(float, 0, None, closed="neither"), None],
        "dropout": [Interval(float, 0, 1, closed="left")],
        "targets": [NameList("layer names"), None],
    }


@dataclass(kw_only=True)
class LoraConfig(LoraAdapterConfig):
    """LoRA fine-tuning on the retain set, with an optional forget-set term."""

    forget_loss: Literal["none", "random_label", "gradient_ascent"] = field(
        "none", "Extra forget-set term (for sample forgetting): none, random_label or gradient_ascent.")
    forget_weight: float = field(1.0, "Weight of the forget-set term.")

    constraints = {
        "forget_loss": [Options("none", "random_label", "gradient_ascent")],
        "forget_weight": [Interval(float, 0, None, closed="left")],
    }


def cycle_batches(dataset, batch_size: int, generator: torch.Generator, device) -> Iterator:
    """Endless shuffled batches of ``dataset`` (a new order each pass)."""
    while True:
        yielded = False
        for batch in iterate_batches(dataset, batch_size, shuffle=True, generator=generator, device=device):
            yielded = True
            yield batch
        if not yielded:
            return


class LoraMethod(Method):
    """Shared machinery: wrap in ``_prepare``, train, merge with the masks in ``_unlearn``."""

    adapter: LoraAdapter | None = None
    masks: dict[str, torch.Tensor] | None = None

    def _add_adapter(self, model: nn.Module) -> LoraAdapter:
        c = self.config
        adapter = add_lora(model, rank=c.rank, alpha=c.alpha, dropout=c.dropout, targets=c.targets)
        masked_layers = adapter.enforce_masks(self.masks) if self.masks else 0
        # frozen base weights need no guard; a mask on a trainable parameter (the head) still does
        params = dict(model.named_parameters())
        guarded = {n: m for n, m in (self.masks or {}).items() if n in params and params[n].requires_grad}
        self.adapter, self.param_mask = adapter, (ParamMask(model, guarded) if guarded else None)
        self.info.update({
            "lora_rank": adapter.rank, "lora_alpha": adapter.alpha, "lora_targets": len(adapter.targets),
            "lora_trainable_parameters": adapter.trainable_parameters(),
            "lora_masked_layers": masked_layers, "lora_clamped_layers": adapter.clamped_layers(),
        })
        return adapter

    def _prepare(self, model, retain, forget):
        self._check_forget_term(forget)
        self._add_adapter(model)

    def _check_forget_term(self, forget) -> None:
        kind = getattr(self.config, "forget_loss", "none")
        if kind != "none" and (forget is None or len(forget) == 0):
            raise UnlearnkitError(f"forget_loss={kind!r} needs a non-empty forget set; got none.")

    def _trainable_parameters(self, model: nn.Module) -> int:
        return self.adapter.trainable_parameters() if self.adapter is not None else super()._trainable_parameters(model)

    def _merge(self) -> nn.Module:
        model = self.adapter.merge(self.masks)
        self.adapter = None
        return model

    def _unlearn(self, model, retain, forget):
        self.train_epochs(model, retain, self._step_fn(model, forget), mask=self.param_mask)
        return self._merge()

    def _step_fn(self, model: nn.Module, forget):
        c = self.config
        kind = getattr(c, "forget_loss", "none")
        if kind == "none" or forget is None or len(forget) == 0:
            return cross_entropy_step
        num_classes = classifier_head(model)[1].out_features
        device = next(model.parameters()).device
        batches = cycle_batches(forget, c.batch_size, self.generator, device)
        cap = 2.0 * math.log(num_classes)
        counter = self.counter

        def step(m, x, y):
            xf, yf = next(batches)
            counter.sample_passes += len(xf)
            logits = forward(m, cat_inputs([x, xf]))
            loss = F.cross_entropy(logits[:len(x)], y)
            forget_logits = logits[len(x):]
            if kind == "random_label":
                shift = torch.randint(1, num_classes, yf.shape, generator=self.generator).to(yf.device)
                term = F.cross_entropy(forget_logits, (yf + shift) % num_classes)
            else:
                term = -torch.clamp(F.cross_entropy(forget_logits, yf), max=cap)
            return loss + c.forget_weight * term

        return step


@register_method("lora", config=LoraConfig,
                 description="LoRA adapters + head fine-tuned on the retain set, then merged (arXiv 2411.11907).")
class Lora(LoraMethod):
    needs_forget = False
