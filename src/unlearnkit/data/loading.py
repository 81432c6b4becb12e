"""Batch iteration: a fast path for in-memory datasets and a DataLoader for anything else.

Every loop gets its batches from ``iterate_batches``, which turns whatever a dataset
yields into ``(x, y)``: ``x`` a float tensor, or ``Inputs`` (keyword inputs such as
``input_ids`` + ``attention_mask``, passed to the model as ``model(**x)``), and ``y``
integer class labels. Accepted samples:

- ``(x, y)`` pairs and ``(x, y, index, ...)`` tuples (items after the label are ignored);
- dicts (Hugging Face style): the input is the first of ``INPUT_KEYS`` present (``input_ids``
  takes its companions ``attention_mask`` / ``token_type_ids`` along), the label the first
  of ``LABEL_KEYS``; other keys can be named with ``with_keys(dataset, inputs=..., label=...)``;
- one-hot (or soft) labels of shape (batch, classes): the argmax is used.

The first batches of every pass are checked for NaN / inf inputs.
"""

from __future__ import annotations

from typing import Any, Iterator, Sequence

import torch
from torch.utils.data import DataLoader, Dataset, Subset

from ..errors import UnlearnkitError
from ..performance import to_model_layout
from .datasets import ArrayDataset

INPUT_KEYS = ("pixel_values", "input_ids", "inputs_embeds", "x", "input", "inputs", "image", "img")
LABEL_KEYS = ("labels", "label", "y", "target", "targets", "class")
TOKEN_COMPANIONS = ("attention_mask", "token_type_ids")
CHECKED_BATCHES = 3  # batches per pass checked for non-finite inputs


class Inputs(dict):
    """Keyword inputs of one batch; ``len`` is the batch size, a slice or index slices every tensor."""

    def __len__(self) -> int:
        return len(next(iter(self.values())))

    def __getitem__(self, key):
        if isinstance(key, str):
            return dict.__getitem__(self, key)
        return Inputs({k: v[key] for k, v in self.items()})

    def to(self, *args, **kwargs) -> "Inputs":
        return Inputs({k: v.to(*args, **kwargs) for k, v in self.items()})


def cat_inputs(parts: Sequence[Any]):
    """Concatenate batches of inputs (tensors, or ``Inputs`` with the same keys) along the batch axis."""
    if isinstance(parts[0], Inputs):
        return Inputs({k: torch.cat([p[k] for p in parts]) for k in parts[0]})
    return torch.cat(list(parts))


class KeyedDataset(Dataset):
    """``dataset`` whose dict samples name their input and label keys (see ``with_keys``)."""

    def __init__(self, dataset: Dataset, inputs: Sequence[str] | str | None, label: str | None):
        self.dataset = dataset
        self.input_keys = (inputs,) if isinstance(inputs, str) else (tuple(inputs) if inputs else None)
        self.label_key = label

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i):
        return self.dataset[i]

    def __getattr__(self, name):  # targets / labels / column_names of the wrapped dataset
        if name in ("dataset", "input_keys", "label_key"):
            raise AttributeError(name)
        return getattr(self.dataset, name)


def with_keys(dataset: Dataset, *, inputs: Sequence[str] | str | None = None, label: str | None = None) -> Dataset:
    """Name the keys of a dict-yielding dataset: ``with_keys(ds, inputs=("input_ids", "attention_mask"), label="labels")``.

    Several input keys are passed to the model as keyword arguments; one is passed positionally.
    """
    if inputs is None and label is None:
        raise UnlearnkitError("with_keys needs inputs=KEY(S) and/or label=KEY.")
    return KeyedDataset(dataset, inputs, label)


def batch_keys(dataset: Dataset) -> tuple[tuple[str, ...] | None, str | None]:
    """The (input keys, label key) a dataset declares through ``with_keys`` (looking through Subsets)."""
    while dataset is not None:
        if isinstance(dataset, KeyedDataset):
            return dataset.input_keys, dataset.label_key
        dataset = getattr(dataset, "dataset", None)
    return None, None


def _first_key(keys: Sequence[str], candidates: Sequence[str]) -> str | None:
    return next((k for k in candidates if k in keys), None)


def split_dict(item: dict, input_keys=None, label_key=None) -> tuple[Any, Any]:
    """(inputs, label) of a dict sample or batch, by the declared or default keys."""
    keys = list(item.keys())
    label = label_key or _first_key(keys, LABEL_KEYS)
    if label is None or label not in item:
        raise UnlearnkitError(f"Dict samples need a label key: one of {', '.join(LABEL_KEYS)} (or name it with "
                              f"unlearnkit.data.with_keys(dataset, label=KEY)); got keys {', '.join(map(str, keys))}.")
    if input_keys:
        missing = [k for k in input_keys if k not in item]
        if missing:
            raise UnlearnkitError(f"Dict samples lack the input key(s) {', '.join(missing)}; got keys "
                                  f"{', '.join(map(str, keys))}.")
        names = list(input_keys)
    else:
        first = _first_key(keys, INPUT_KEYS)
        if first is None:
            raise UnlearnkitError(f"Dict samples need an input key: one of {', '.join(INPUT_KEYS)} (or name them "
                                  f"with unlearnkit.data.with_keys(dataset, inputs=KEYS)); got keys "
                                  f"{', '.join(map(str, keys))}.")
        names = [first] + ([k for k in TOKEN_COMPANIONS if k in item] if first == "input_ids" else [])
    x = item[names[0]] if len(names) == 1 else Inputs({k: item[k] for k in names})
    return x, item[label]


def unpack_sample(item: Any, dataset: Dataset | None = None) -> tuple[Any, Any]:
    """(x, y) of one sample or one collated batch: a pair, a longer tuple or a dict."""
    if isinstance(item, dict) and not isinstance(item, Inputs):
        return split_dict(item, *batch_keys(dataset))
    if isinstance(item, (tuple, list)) and len(item) >= 2:
        x, y = item[0], item[1]
        if isinstance(x, dict) and not isinstance(x, Inputs):
            x = Inputs(x)
        return x, y
    raise UnlearnkitError(f"Dataset items must be (x, y) pairs, (x, y, ...) tuples or dicts with input and label "
                          f"keys; got {type(item).__name__}.")


def with_label(item: Any, label: int, dataset: Dataset | None = None) -> Any:
    """The sample ``item`` with its label replaced, in the form of its own label (int, tensor or one-hot)
    so that it collates with unchanged samples."""
    x, old = unpack_sample(item, dataset)
    if isinstance(old, torch.Tensor):
        new = torch.as_tensor(label, dtype=torch.long)
        if old.dim() == 1 and old.numel() > 1:
            new = torch.nn.functional.one_hot(new, old.numel())
        new = new.to(old.dtype)
    else:
        new = int(label)
    if isinstance(item, dict) and not isinstance(item, Inputs):
        return {**item, batch_keys(dataset)[1] or _first_key(list(item.keys()), LABEL_KEYS): new}
    return (item[0], new, *item[2:])


def as_class_labels(y: Any) -> torch.Tensor:
    """Integer labels (batch,) from integer labels or one-hot / soft labels (batch, classes)."""
    y = torch.as_tensor(y)
    if y.dim() == 2 and y.shape[1] > 1:
        return y.argmax(1)
    if y.dim() == 2:
        y = y[:, 0]
    if y.dim() != 1:
        raise UnlearnkitError(f"Labels must be class indices (batch,) or one-hot (batch, classes); got shape "
                              f"{tuple(y.shape)}.")
    if y.is_floating_point() and not torch.equal(y, y.round()):
        raise UnlearnkitError("Labels must be integer class indices (or one-hot rows); got fractional values.")
    return y.long()


def _as_inputs(x: Any) -> Any:
    if isinstance(x, Inputs):  # token ids and masks keep their dtype
        return Inputs({k: torch.as_tensor(v) for k, v in x.items()})
    return torch.as_tensor(x).float()


def check_finite_inputs(x: Any, where: str = "the dataset") -> None:
    tensors = x.values() if isinstance(x, Inputs) else [x]
    for t in tensors:
        if t.is_floating_point() and not torch.isfinite(t).all():
            bad = "NaN" if torch.isnan(t).any() else "inf"
            raise UnlearnkitError(f"The inputs of {where} contain {bad} values; clean or impute the data "
                                  "(unlearnkit does not train on non-finite inputs).")


def _check_array_dataset(base: ArrayDataset) -> None:
    """Once per in-memory dataset: its inputs are finite."""
    if not getattr(base, "_inputs_checked", False):
        check_finite_inputs(base.x, f"dataset {base.name!r}")
        base._inputs_checked = True


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


def _maybe_augment(x, augment: bool, generator: torch.Generator):
    if augment and isinstance(x, torch.Tensor) and x.dim() == 4:
        return augment_batch(x, generator)
    return x


def iterate_batches(dataset: Dataset, batch_size: int, *, shuffle: bool = False,
                    generator: torch.Generator | None = None, augment: bool = False,
                    device: torch.device | str = "cpu", drop_last: bool = False,
                    num_workers: int = 0) -> Iterator[tuple[Any, torch.Tensor]]:
    """Yield (x, y) batches on ``device``; in-memory datasets skip per-sample collation."""
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    arrays = resolve_arrays(dataset)
    if arrays is not None:
        base, indices = arrays
        _check_array_dataset(base)
        order = indices[torch.randperm(len(indices), generator=generator)] if shuffle else indices
        stop = len(order) - (len(order) % batch_size if drop_last else 0)
        for start in range(0, stop, batch_size):
            idx = order[start:start + batch_size]
            x, y = base.x[idx], base.y[idx]
            x = base.normalize(x.to(device, non_blocking=True))
            yield to_model_layout(_maybe_augment(x, augment, generator)), y.to(device, non_blocking=True)
        return
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=generator,
                        drop_last=drop_last, num_workers=num_workers)
    for i, batch in enumerate(loader):
        x, y = unpack_sample(batch, dataset)
        x, y = _as_inputs(x), as_class_labels(y)
        if i < CHECKED_BATCHES:
            check_finite_inputs(x)
        x = _maybe_augment(x.to(device), augment, generator)
        yield to_model_layout(x), y.to(device)


def num_batches(dataset: Dataset, batch_size: int, drop_last: bool = False) -> int:
    n = len(dataset)
    return n // batch_size if drop_last else (n + batch_size - 1) // batch_size
