"""Random labels (RL): train on the forget set with random labels and on the retain set.

Golatkar et al., "Eternal Sunshine of the Spotless Net: Selective Forgetting in
Deep Networks", CVPR 2020 (as the "random labels" baseline), in the form used by
Jia et al., "Model Sparsity Can Simplify Machine Unlearning", NeurIPS 2023, and
Fan et al., "SalUn", ICLR 2024. Their code (``unlearn/RL.py``) has two paths,
both offered here as ``mode``:

- ``"alternate"`` (their CIFAR-10 / SVHN path, the default): each epoch is one
  pass over the forget set with labels drawn afresh for every batch, then one
  pass over the retain set with the true labels (one optimizer throughout).
- ``"concat"`` (their CIFAR-100 / TinyImageNet path): each epoch the forget set
  is relabelled afresh, concatenated with the retain set and shuffled.

``labels="any"`` draws uniformly from all K classes, as the reference does (a
drawn label equals the true one with probability 1/K); ``labels="wrong"`` draws
uniformly from the K - 1 other classes. Defaults (SGD, lr 0.01, 10 epochs,
batch 256, momentum 0.9, weight decay 5e-4) follow the Unlearn-Sparse / SalUn
CIFAR-10 scripts.

Our choices: the labels come from a generator of their own, seeded from the
method's seed (so the batch order is unaffected by them); ``include_retain=False``
skips the retain part; a ``schedule`` other than constant is applied per epoch
(the lr of epoch e is the schedule's value at e / epochs).

The dataset helpers here (``random_wrong_labels``, ``random_label_dataset``,
``concat_datasets``, ``num_classes_of``) are shared with SalUn and SSD.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import ConcatDataset, Dataset, Subset

from ..config import Options, field
from ..data import ArrayDataset, dataset_labels
from ..data.loading import resolve_arrays, with_label
from ..errors import UnlearnkitError
from ..models import classifier_head
from ..models.outputs import forward
from ..components.weight_masks import ParamMask
from ..training import cross_entropy_step, fit, make_optimizer
from .base import Method, TrainingConfig, register_method


# ---- helpers shared by random_label, salun and ssd ---------------------------------------------
def num_classes_of(model: nn.Module, *datasets: Dataset | None) -> int:
    """Number of classes: the classifier head's outputs, else the largest label + 1."""
    try:
        return int(classifier_head(model)[1].out_features)
    except UnlearnkitError:
        return max(int(dataset_labels(d).max()) + 1 for d in datasets if d is not None and len(d))


def random_wrong_labels(labels: torch.Tensor, num_classes: int, generator: torch.Generator) -> torch.Tensor:
    """A label different from each given one, uniform over the other ``num_classes - 1`` classes."""
    if num_classes < 2:
        raise UnlearnkitError(f"Random labels need at least 2 classes; the model has {num_classes}.")
    shift = torch.randint(1, num_classes, (len(labels),), generator=generator)
    return (labels.long().cpu() + shift) % num_classes


def random_labels(labels: torch.Tensor, num_classes: int, generator: torch.Generator, kind: str = "any") -> torch.Tensor:
    """Random labels for ``labels``: uniform over all classes (``"any"``) or over the other ones (``"wrong"``)."""
    if kind == "wrong":
        return random_wrong_labels(labels, num_classes, generator)
    if num_classes < 2:
        raise UnlearnkitError(f"Random labels need at least 2 classes; the model has {num_classes}.")
    return torch.randint(0, num_classes, (len(labels),), generator=generator)


class _Relabelled(Dataset):
    """``dataset`` with its labels replaced (fallback for datasets that are not in-memory arrays)."""

    def __init__(self, dataset: Dataset, labels: torch.Tensor):
        self.dataset, self.labels = dataset, labels

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        return with_label(self.dataset[i], int(self.labels[i]), self.dataset)


def _same_base(*datasets: Dataset):
    """(base ArrayDataset, [indices per dataset]) when all datasets index one ArrayDataset, else None."""
    resolved = [resolve_arrays(d) for d in datasets]
    if any(r is None for r in resolved) or any(r[0] is not resolved[0][0] for r in resolved):
        return None
    return resolved[0][0], [r[1] for r in resolved]


def concat_datasets(*datasets: Dataset) -> Dataset:
    """One dataset of all samples; stays on the in-memory fast path when they share a base array."""
    same = _same_base(*datasets)
    if same is not None:
        base, indices = same
        return Subset(base, torch.cat(indices).tolist())
    return ConcatDataset(list(datasets))


def random_label_dataset(forget: Dataset, num_classes: int, generator: torch.Generator,
                         retain: Dataset | None = None, labels: str = "wrong") -> Dataset:
    """The forget set with random labels (drawn once, of ``labels`` kind), followed by ``retain`` if given."""
    parts = [forget] + ([retain] if retain is not None else [])
    same = _same_base(*parts)
    if same is not None:
        base, indices = same
        new_labels = base.y.clone()
        new_labels[indices[0]] = random_labels(base.y[indices[0]], num_classes, generator, labels)
        # x is shared with the base (no copy); only the label vector is new
        relabelled = ArrayDataset(base.x, new_labels, scale=base.scale, mean=base.mean, std=base.std,
                                  classes=base.classes, name=f"{base.name}+random_labels")
        return Subset(relabelled, torch.cat(indices).tolist())
    noisy = _Relabelled(forget, random_labels(dataset_labels(forget), num_classes, generator, labels))
    return ConcatDataset([noisy] + parts[1:])


# ---- the training loop shared by random_label and salun ----------------------------------------
def epoch_lr(base_lr: float, schedule: str, epoch: int, epochs: int) -> float:
    """The learning rate of ``epoch`` (0-based) under a per-epoch version of ``make_schedule``'s schedules."""
    if schedule == "cosine":
        return base_lr * 0.5 * (1 + math.cos(math.pi * epoch / max(epochs, 1)))
    if schedule == "step":
        return base_lr * 0.1 ** ((epoch >= 0.5 * epochs) + (epoch >= 0.75 * epochs))
    return base_lr


def train_random_labels(method: Method, model: nn.Module, retain: Dataset | None, forget: Dataset,
                        mask: ParamMask | None = None) -> None:
    """Random-label training of ``model`` with ``method.config`` (a ``RandomLabelConfig``): see the module doc."""
    c = method.config
    num_classes = num_classes_of(model, retain, forget)
    labels = torch.Generator().manual_seed(method.seed + 7919)  # apart from the shuffling generator
    retain = retain if c.include_retain and retain is not None and len(retain) else None
    optimizer = make_optimizer(model.parameters(), c.optimizer, c.lr, c.momentum, c.weight_decay)
    common = dict(batch_size=c.batch_size, generator=method.generator, augment=c.augment, mask=mask,
                  counter=method.counter)

    def relabelled_step(m, x, y):
        return F.cross_entropy(forward(m, x), random_labels(y, num_classes, labels, c.labels).to(y.device))

    for epoch in range(c.epochs):
        for group in optimizer.param_groups:
            group["lr"] = epoch_lr(c.lr, c.schedule, epoch, c.epochs)
        if c.mode == "alternate":
            fit(model, forget, relabelled_step, optimizer, epochs=1, description=f"{method.name} forget", **common)
            if retain is not None:
                fit(model, retain, cross_entropy_step, optimizer, epochs=1, description=f"{method.name} retain",
                    **common)
        else:
            data = random_label_dataset(forget, num_classes, labels, retain, labels=c.labels)
            fit(model, data, cross_entropy_step, optimizer, epochs=1, description=method.name, **common)


# ---- the method --------------------------------------------------------------------------------
@dataclass(kw_only=True)
class RandomLabelConfig(TrainingConfig):
    """Cross-entropy on forget samples with random labels, and on the retain set (alternating or mixed)."""

    epochs: int = field(10, "Epochs; each passes once over the forget set and once over the retain set.")
    lr: float = field(0.01, "Learning rate.")
    batch_size: int = field(256, "Batch size.")
    optimizer: Literal["sgd", "adam", "adamw"] = field("sgd", "Optimizer.")
    weight_decay: float = field(5e-4, "Weight decay.")
    mode: Literal["alternate", "concat"] = field("alternate", "'alternate': each epoch a forget pass with fresh "
                                                              "random labels per batch, then a retain pass (the "
                                                              "reference's CIFAR-10 path); 'concat': each epoch the "
                                                              "relabelled forget set mixed into the retain set "
                                                              "(its CIFAR-100 path).")
    labels: Literal["any", "wrong"] = field("any", "Random labels drawn from all classes ('any', the reference) "
                                                   "or from the classes other than the true one ('wrong').")
    include_retain: bool = field(True, "Train on the retain set too (False: the relabelled forget set only).")

    constraints = {
        "mode": [Options("alternate", "concat")],
        "labels": [Options("any", "wrong")],
        "include_retain": [bool],
    }


@register_method("random_label", config=RandomLabelConfig,
                 description="Forget set with random labels, then the retain set, each epoch (RL).")
class RandomLabel(Method):
    def _unlearn(self, model, retain, forget):
        train_random_labels(self, model, retain, forget)
        return model
