"""Random labels (RL): fine-tune on the forget set relabelled at random, mixed with the retain set.

Golatkar et al., "Eternal Sunshine of the Spotless Net: Selective Forgetting in
Deep Networks", CVPR 2020 (as the "random labels" baseline), in the form used by
Jia et al., "Model Sparsity Can Simplify Machine Unlearning", NeurIPS 2023, and
Fan et al., "SalUn", ICLR 2024: the forget samples get random labels once, are
concatenated with the retain set, and the model is trained with cross-entropy.

Our choices: the random labels are always *wrong* (``(y + U{1..K-1}) mod K``;
the reference code draws from all K classes) and are drawn once, from the
method's seeded generator; ``include_retain=False`` trains on the relabelled
forget set alone. Defaults (SGD, lr 0.01, 10 epochs, batch 256, momentum 0.9,
weight decay 5e-4) follow the Unlearn-Sparse / SalUn CIFAR-10 scripts.

The dataset helpers here (``random_wrong_labels``, ``random_label_dataset``,
``concat_datasets``, ``num_classes_of``) are shared with SalUn and SSD.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn as nn
from torch.utils.data import ConcatDataset, Dataset, Subset

from ..config import field
from ..data import ArrayDataset, dataset_labels
from ..data.loading import resolve_arrays, with_label
from ..errors import UnlearnkitError
from ..models import classifier_head
from ..training import cross_entropy_step
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
                         retain: Dataset | None = None) -> Dataset:
    """The forget set with random wrong labels (drawn once), followed by ``retain`` if given."""
    parts = [forget] + ([retain] if retain is not None else [])
    same = _same_base(*parts)
    if same is not None:
        base, indices = same
        labels = base.y.clone()
        labels[indices[0]] = random_wrong_labels(base.y[indices[0]], num_classes, generator)
        # x is shared with the base (no copy); only the label vector is new
        relabelled = ArrayDataset(base.x, labels, scale=base.scale, mean=base.mean, std=base.std,
                                  classes=base.classes, name=f"{base.name}+random_labels")
        return Subset(relabelled, torch.cat(indices).tolist())
    noisy = _Relabelled(forget, random_wrong_labels(dataset_labels(forget), num_classes, generator))
    return ConcatDataset([noisy] + parts[1:])


# ---- the method --------------------------------------------------------------------------------
@dataclass(kw_only=True)
class RandomLabelConfig(TrainingConfig):
    """Cross-entropy on forget samples with random wrong labels, mixed with the retain set."""

    epochs: int = field(10, "Passes over the (forget + retain) training set.")
    lr: float = field(0.01, "Learning rate.")
    batch_size: int = field(256, "Batch size.")
    optimizer: Literal["sgd", "adam", "adamw"] = field("sgd", "Optimizer.")
    weight_decay: float = field(5e-4, "Weight decay.")
    include_retain: bool = field(True, "Mix the retain set into training (False: relabelled forget set only).")

    constraints = {"include_retain": [bool]}


@register_method("random_label", config=RandomLabelConfig,
                 description="Fine-tune on the forget set with random wrong labels, mixed with the retain set (RL).")
class RandomLabel(Method):
    def _unlearn(self, model, retain, forget):
        data = random_label_dataset(forget, num_classes_of(model, retain, forget), self.generator,
                                    retain if self.config.include_retain else None)
        self.train_epochs(model, data, cross_entropy_step)
        return model
