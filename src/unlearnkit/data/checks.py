"""Checks on the data a method is given: retain and forget disjoint, labels within the model's outputs.

Cheap by design: ids are compared where both sets index one dataset, inputs are compared
by a fingerprint where both are in-memory arrays, and labels are read in full only where
the dataset keeps them apart from its inputs (else the first batch is checked).
"""

from __future__ import annotations

import threading
import warnings

import torch
import torch.nn as nn
from torch.utils.data import Dataset, Subset

from ..errors import UnlearnkitError
from .datasets import ArrayDataset, dataset_labels
from .loading import iterate_batches, resolve_arrays


def _base_and_ids(dataset: Dataset) -> tuple[Dataset, torch.Tensor] | None:
    """(base dataset, ids into it) for nested Subsets of one dataset."""
    if not isinstance(dataset, Subset):
        return None
    indices = None
    while isinstance(dataset, Subset):
        idx = torch.as_tensor(list(dataset.indices), dtype=torch.long)
        indices = idx if indices is None else idx[indices]
        dataset = dataset.dataset
    return dataset, indices


def _row_fingerprints(x: torch.Tensor, chunk: int = 1024) -> set[float]:
    """One number per sample (a fixed weighted sum of its values): equal inputs, equal numbers."""
    flat = x.reshape(len(x), -1)
    weights = torch.linspace(1.0, 2.0, flat.shape[1], dtype=torch.float64)
    return {v for i in range(0, len(flat), chunk) for v in (flat[i:i + chunk].double() @ weights).tolist()}


def check_disjoint(retain: Dataset | None, forget: Dataset | None) -> None:
    """Retain and forget must not share samples: an error where ids are known, a warning for equal inputs."""
    if retain is None or forget is None:
        return
    if retain is forget:
        raise UnlearnkitError("The retain and forget sets are the same dataset; pass the samples to keep and "
                              "the samples to forget separately (e.g. unlearnkit.make_unlearning_data).")
    r, f = _base_and_ids(retain), _base_and_ids(forget)
    if r is not None and f is not None and r[0] is f[0]:
        shared = set(r[1].tolist()) & set(f[1].tolist())
        if shared:
            raise UnlearnkitError(f"{len(shared)} sample(s) are in both the retain and the forget set (e.g. id "
                                  f"{min(shared)}); a sample is either retained or forgotten.")
        return
    ra, fa = resolve_arrays(retain), resolve_arrays(forget)
    if ra is not None and fa is not None and len(fa[1]) and len(ra[1]):
        forget_rows = _row_fingerprints(fa[0].x[fa[1]])
        shared = len(forget_rows & _row_fingerprints(ra[0].x[ra[1]]))
        if shared:
            warnings.warn(f"{shared} forget sample(s) have the same inputs as retain samples; unlearning cannot "
                          "remove what the retain set teaches again.", UserWarning, stacklevel=4)


def _cheap_labels(dataset: Dataset) -> torch.Tensor:
    """All labels where they are stored apart from the inputs, else those of the first batch."""
    base = _base_and_ids(dataset)
    root = base[0] if base is not None else dataset
    if isinstance(root, ArrayDataset) or hasattr(root, "targets"):
        return dataset_labels(dataset)
    return next(iter(iterate_batches(dataset, 64)))[1]


_probe_state = threading.local()


def in_output_probe() -> bool:
    """True while :func:`model_outputs` runs its one-sample probe: a check on the data, not a method's work."""
    return getattr(_probe_state, "active", False)


@torch.no_grad()
def model_outputs(model: nn.Module, dataset: Dataset) -> int:
    """The number of logits ``model`` returns, from one sample of ``dataset``."""
    from ..models.outputs import forward
    from ..utils import model_device

    x, _ = next(iter(iterate_batches(dataset, 1, device=model_device(model))))
    was_training = model.training
    model.eval()
    _probe_state.active = True
    try:
        return int(forward(model, x).shape[1])
    finally:
        _probe_state.active = False
        model.train(was_training)


def check_labels(model: nn.Module, *datasets: tuple[str, Dataset | None]) -> None:
    from ..training import check_labels_in_range

    present = [(what, d) for what, d in datasets if d is not None and len(d)]
    if not present:
        return
    outputs = model_outputs(model, present[0][1])
    for what, data in present:
        check_labels_in_range(_cheap_labels(data), outputs, f"The {what} set")


def check_unlearning_data(model: nn.Module, retain: Dataset | None, forget: Dataset | None) -> None:
    """The checks every method runs on its data before any work (see the module docstring)."""
    check_disjoint(retain, forget)
    check_labels(model, ("retain", retain), ("forget", forget))
