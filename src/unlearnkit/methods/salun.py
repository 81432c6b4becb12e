"""SalUn: saliency-masked random-label unlearning.

Fan et al., "SalUn: Empowering Machine Unlearning via Gradient-based Weight
Saliency in Both Image Classification and Generation", ICLR 2024
(arXiv 2310.12508). The saliency of a weight is |dL_f/dtheta|, the magnitude of
the forget-set cross-entropy gradient at the *original* model; the top
``mask_ratio`` fraction of all weights (one global ranking, 50% by default) may
change, then random-label unlearning (see ``random_label``; the same ``mode`` and
``labels`` options, by default the reference's CIFAR-10 path: per epoch a forget
pass with labels drawn from all classes, then a retain pass) runs on them only.

Weights outside the mask do not move at all: a ``ParamMask`` zeroes their
gradients before and restores their values after every optimizer step, so
weight decay, momentum and Adam state cannot shift them (bit for bit).

Our choices: the gradient is accumulated over the whole forget set in eval mode
(BatchNorm statistics untouched) and the ranking is exact (top-k, ties broken by
``torch.topk``). Defaults follow the SalUn CIFAR-10 scripts: SGD, lr 0.013,
10 epochs, batch 256, momentum 0.9, weight decay 5e-4, mask ratio 0.5.
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
from ..components.weight_masks import ParamMask
from ..models.outputs import forward
from ..training import Counter, cross_entropy_step
from ..utils import model_device
from .base import Method, register_method
from .random_label import RandomLabelConfig, train_random_labels


def forget_gradients(model: nn.Module, forget: Dataset, batch_size: int,
                     counter: Counter | None = None) -> dict[str, torch.Tensor]:
    """Gradient of the summed forget-set cross-entropy per trainable parameter (eval mode, no .grad side effects).

    Under a multi-process launcher each rank passes its shard of the forget set and the sums are all-reduced.
    """
    was_training = model.training
    model.eval()
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    grads = {n: torch.zeros_like(p) for n, p in named}
    for x, y in iterate_batches(dist.shard_dataset(forget), batch_size, device=model_device(model)):
        loss = F.cross_entropy(forward(model, x), y, reduction="sum")
        for (n, _), g in zip(named, torch.autograd.grad(loss, [p for _, p in named], allow_unused=True)):
            if g is not None:
                grads[n] += g
    model.train(was_training)
    if counter is not None:  # the whole forget set, split over the ranks or not (as ``fit`` counts the global batch)
        counter.sample_passes += len(forget)
    for g in grads.values():
        dist.all_reduce_sum(g)
    return grads


def saliency_mask(grads: dict[str, torch.Tensor], ratio: float) -> dict[str, torch.Tensor]:
    """Boolean masks marking the ``ratio`` fraction of entries with the largest |grad| (one global ranking)."""
    flat = torch.cat([g.abs().flatten() for g in grads.values()])
    k = int(round(ratio * flat.numel()))
    keep = torch.zeros(flat.numel(), dtype=torch.bool, device=flat.device)
    if k > 0:
        keep[torch.topk(flat, k, sorted=False).indices] = True
    masks, start = {}, 0
    for name, g in grads.items():
        masks[name] = keep[start:start + g.numel()].view_as(g)
        start += g.numel()
    return masks


@dataclass(kw_only=True)
class SalUnConfig(RandomLabelConfig):
    """Random-label unlearning restricted to the weights most salient for the forget loss."""

    lr: float = field(0.013, "Learning rate.")
    mask_ratio: float = field(0.5, "Fraction of weights (largest |dL_f/dtheta| on the original) that may change.")

    constraints = {"mask_ratio": [Interval(float, 0, 1, closed="right")]}


@register_method("salun", config=SalUnConfig,
                 description="Random-label unlearning on the weights with the largest forget-loss gradient (SalUn).")
class SalUn(Method):
    def _prepare(self, model, retain, forget):
        grads = forget_gradients(model, forget, self.config.batch_size, self.counter)
        self.masks = saliency_mask(grads, self.config.mask_ratio)

    def _unlearn(self, model, retain, forget):
        mask = ParamMask(model, self.masks)
        self.info["mask_fraction"] = mask.fraction_trainable()
        train_random_labels(self, model, retain, forget, mask=mask)
        return model
