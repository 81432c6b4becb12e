"""Selective Synaptic Dampening (SSD): dampen the weights far more important to the forget set than to the data.

Foster et al., "Fast Machine Unlearning Without Retraining Through Selective
Synaptic Dampening", AAAI 2024 (arXiv 2308.07707). With diagonal Fisher
importances I_D over the training data D = retain + forget and I_f over the
forget set, every parameter entry with I_f > alpha * I_D is multiplied by
min(lambda * I_D / I_f, 1); all other entries are left bit for bit. No training.

Importance, as in the reference code: the squared gradient of the mean
cross-entropy of a batch, averaged over the batches of one pass (``batch_size``
samples each; D is shuffled so its batches mix retain and forget samples). Our
choices: the passes run in eval mode (BatchNorm statistics untouched); every
trainable parameter is eligible; ``batch_size`` defaults to 64. Defaults are the paper's: alpha = 10,
lambda = 1. Work is one forward+backward pass over D and one over the forget
set, counted in ``sample_passes``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import Dataset

from .. import distributed as dist
from ..config import Interval, field
from ..data import iterate_batches
from ..models.outputs import forward
from ..training import Counter
from ..utils import model_device
from .base import Method, MethodConfig, register_method
from .random_label import concat_datasets


def fisher_diagonal(model: nn.Module, dataset: Dataset, batch_size: int, generator: torch.Generator,
                    counter: Counter | None = None) -> dict[str, torch.Tensor]:
    """Mean over one shuffled pass of the squared batch gradient of the cross-entropy, per trainable parameter.

    Under a multi-process launcher every rank draws the same batches and takes every
    world-size-th one; the sums and the batch count are all-reduced (same result as one process).
    """
    was_training = model.training
    model.eval()
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    importance = {n: torch.zeros_like(p) for n, p in named}
    rank, world = dist.rank(), dist.world_size()
    batches = 0
    for i, (x, y) in enumerate(iterate_batches(dataset, batch_size, shuffle=True, generator=generator,
                                                device=model_device(model))):
        if i % world != rank:
            continue
        loss = F.cross_entropy(forward(model, x), y)
        for (n, _), g in zip(named, torch.autograd.grad(loss, [p for _, p in named], allow_unused=True)):
            if g is not None:
                importance[n] += g.square()
        batches += 1
    model.train(was_training)
    if counter is not None:  # the whole pass, split over the ranks or not (as ``fit`` counts the global batch)
        counter.sample_passes += len(dataset)
    if world > 1:
        for imp in importance.values():
            dist.all_reduce_sum(imp)
        batches = int(dist.all_reduce_sum(torch.tensor([batches], dtype=torch.long,
                                                        device=model_device(model))).item())
    for imp in importance.values():
        imp /= max(batches, 1)
    return importance


@torch.no_grad()
def dampen(model: nn.Module, importance_data: dict[str, torch.Tensor], importance_forget: dict[str, torch.Tensor],
           alpha: float, dampening: float) -> int:
    """Scale entries with I_f > alpha * I_D by min(dampening * I_D / I_f, 1); returns how many were selected."""
    params = dict(model.named_parameters())
    selected = 0
    for name, imp_d in importance_data.items():
        imp_f = importance_forget[name]
        chosen = imp_f > alpha * imp_d
        factor = (dampening * imp_d / torch.where(chosen, imp_f, torch.ones_like(imp_f))).clamp(max=1.0)
        params[name].mul_(torch.where(chosen, factor, torch.ones_like(factor)))
        selected += int(chosen.sum())
    return selected


@dataclass(kw_only=True)
class SSDConfig(MethodConfig):
    """Training-free dampening of the parameters specialised to the forget set."""

    alpha: float = field(10.0, "Selection weighting: dampen entries with I_forget > alpha * I_data.")
    dampening: float = field(1.0, "Dampening constant lambda: scale selected entries by min(lambda * I_data / I_forget, 1).")
    batch_size: int = field(64, "Batch size of the importance passes.")

    constraints = {
        "alpha": [Interval(float, 0, None, closed="neither")],
        "dampening": [Interval(float, 0, None, closed="neither")],
        "batch_size": [Interval(int, 1, None)],
    }


@register_method("ssd", config=SSDConfig,
                 description="Selective Synaptic Dampening: shrink weights far more important to the forget set (no training).")
class SSD(Method):
    def _unlearn(self, model, retain, forget):
        c = self.config
        data = concat_datasets(retain, forget)
        imp_d = fisher_diagonal(model, data, c.batch_size, self.generator, self.counter)
        imp_f = fisher_diagonal(model, forget, c.batch_size, self.generator, self.counter)
        self.importances = {"data": imp_d, "forget": imp_f}
        selected = dampen(model, imp_d, imp_f, c.alpha, c.dampening)
        total = sum(v.numel() for v in imp_d.values())
        self.info["dampened_entries"] = selected
        self.info["dampened_fraction"] = selected / max(total, 1)
        return model
