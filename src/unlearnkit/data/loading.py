"""Batch iteration: a fast path for in-memory datasets and a DataLoader for anything else."""

from __future__ import annotations

from typing import Iterator

import torch
from torch.utils.data import DataLoader, Dataset, Subset

from ..performance import to_model_layout
from .datasets import ArrayDataset


def resolve_arrays(dataset: Dataset) -> tuple[ArrayDataset, torch.Tensor] | None:
    """(base ArrayDataset, indices into it) when ``dataset`` is one, or nested Subsets of one."""
    indices = None
    while isinstance(dataset, Subset):
        idx = torch.as_tensor(dataset.indices, dtype=torch.long)
        indices = idx if indices is None else idx[indices]
        dataset = dataset.dataset
    if isinstance(dataset, ArrayDataset):
        return dataset, (torch.arange(len(dataset)) if indices is None else indices)
    return None


def augment_batch(x: torch.Tensor, generator: torch.Generator, padding: int = 4) -> torch.Tensor:
    """Random crop (zero padding ``padding``) and horizontal flip, per sample, on a batch."""
    n, _, h, w = x.shape
    padded = torch.nn.functional.pad(x, (padding,) * 4)
    dx = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
    dy = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
    rows = (dy[:, None] + torch.arange(h)[None]).to(x.device)  # (n, h)
    cols = (dx[:, None] + torch.arange(w)[None]).to(x.device)  # (n, w)
    batch_idx = torch.arange(n, device=x.device)[:, None, None]
    out = padded.permute(0, 2, 3, 1)[batch_idx, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
    flip = (torch.rand(n, generator=generator) < 0.5).to(x.device)
    out = torch.where(flip[:, None, None, None], out.flip(3), out)
    return out.contiguous()


def iterate_batches(dataset: Dataset, batch_size: int, *, shuffle: bool = False,
                    generator: torch.Generator | None = None, augment: bool = False,
                    device: torch.device | str = "cpu", drop_last: bool = False,
                    num_workers: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield (x, y) batches on ``device``; in-memory datasets skip per-sample collation."""
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    arrays = resolve_arrays(dataset)
    if arrays is not None:
        base, indices = arrays
        order = indices[torch.randperm(len(indices), generator=generator)] if shuffle else indices
        stop = len(order) - (len(order) % batch_size if drop_last else 0)
        for start in range(0, stop, batch_size):
            idx = order[start:start + batch_size]
            x, y = base.x[idx], base.y[idx]
            x = base.normalize(x.to(device, non_blocking=True))
            if augment and x.dim() == 4:
                x = augment_batch(x, generator)
            yield to_model_layout(x), y.to(device, non_blocking=True)
        return
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=generator,
                        drop_last=drop_last, num_workers=num_workers)
    for x, y in loader:
        x = torch.as_tensor(x).float().to(device)
        if augment and x.dim() == 4:
            x = augment_batch(x, generator)
        yield to_model_layout(x), torch.as_tensor(y).long().to(device)


def num_batches(dataset: Dataset, batch_size: int, drop_last: bool = False) -> int:
    n = len(dataset)
    return n // batch_size if drop_last else (n + batch_size - 1) // batch_size
