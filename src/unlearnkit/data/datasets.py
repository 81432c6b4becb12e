"""Built-in datasets and the in-memory tensor dataset they share.

``ArrayDataset`` keeps the raw samples (uint8 for images) in memory, converts a
batch to normalised float on the fly, and lets the training loop index whole
batches at once instead of going through a DataLoader sample by sample.
"""

from __future__ import annotations

import inspect
import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import UnlearnkitError, unknown_name_error

DATA_ENV = "UNLEARNKIT_DATA"


class ArrayDataset(Dataset):
    """Samples ``x`` (N, C, H, W) or (N, F) and integer labels ``y``, normalised per batch.

    ``x`` may be uint8 (then divided by ``scale``) or float; ``mean``/``std`` are per channel.
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, *, scale: float = 1.0,
                 mean=None, std=None, classes: list[str] | None = None, name: str = "arrays"):
        x, y = torch.as_tensor(x), torch.as_tensor(y)
        if len(x) != len(y):
            raise UnlearnkitError(f"x has {len(x)} samples but y has {len(y)}.")
        check_layout(x)
        from .loading import as_class_labels

        self.x = x
        self.y = as_class_labels(y)
        self.scale = float(scale)
        shape = (1, -1) + (1,) * (x.dim() - 2) if x.dim() > 2 else (1, -1)
        self.mean = None if mean is None else torch.as_tensor(mean, dtype=torch.float32).view(*shape)
        self.std = None if std is None else torch.as_tensor(std, dtype=torch.float32).view(*shape)
        self.classes = classes
        self.name = name

    def __len__(self) -> int:
        return len(self.y)

    def normalize(self, xb: torch.Tensor) -> torch.Tensor:
        xb = xb.float()
        if self.scale != 1.0:
            xb = xb / self.scale
        if self.mean is not None:
            xb = (xb - self.mean.to(xb.device)) / self.std.to(xb.device)
        return xb

    def batch(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.normalize(self.x[indices]), self.y[indices]

    def __getitem__(self, i: int):
        x, y = self.batch(torch.as_tensor([i]))
        return x[0], int(y[0])

    @property
    def num_classes(self) -> int:
        if self.classes:
            return len(self.classes)
        if len(self.y) == 0:
            raise UnlearnkitError(f"Dataset {self.name!r} is empty; it has no classes.")
        return int(self.y.max()) + 1

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape[1:])


def check_layout(x: torch.Tensor) -> None:
    """Samples must be (N, C, H, W) images or (N, F) features: name the fix for (N, H, W) and channels-last."""
    shape = tuple(x.shape)
    if x.dim() == 3:
        raise UnlearnkitError(f"x has shape {shape}: images must be (N, C, H, W) and features (N, F); add the "
                              "channel axis of grayscale (N, H, W) images with x[:, None].")
    if x.dim() == 4 and shape[3] in (1, 3, 4) and shape[1] not in (1, 3, 4) and min(shape[1], shape[2]) > shape[3]:
        raise UnlearnkitError(f"x has shape {shape}, which looks channels-last (N, H, W, C); images must be "
                              "(N, C, H, W): use x.permute(0, 3, 1, 2).")


@dataclass
class DatasetSplits:
    """A training set (whose indices are the stable sample ids) and a test set."""

    train: Dataset
    test: Dataset
    name: str
    num_classes: int
    sample_shape: tuple[int, ...]

    @property
    def in_channels(self) -> int:
        return self.sample_shape[0] if len(self.sample_shape) == 3 else 1

    @property
    def image_size(self) -> int | None:
        return self.sample_shape[-1] if len(self.sample_shape) == 3 else None


_DATASETS: dict[str, Callable[..., DatasetSplits]] = {}


def register_dataset(name: str):
    def wrap(fn):
        if name in _DATASETS:
            raise KeyError(f"dataset {name!r} is already registered")
        _DATASETS[name] = fn
        return fn

    return wrap


def list_datasets() -> list[str]:
    return sorted(_DATASETS)


def load_dataset(name: str, root: str | os.PathLike | None = None, **kwargs) -> DatasetSplits:
    """Load a built-in dataset by name: ``digits`` (bundled), ``mnist``, ``cifar10``."""
    if name not in _DATASETS:
        raise unknown_name_error("dataset", name, _DATASETS)
    loader = _DATASETS[name]
    allowed = [p for p in inspect.signature(loader).parameters if p != "root"]
    unknown = sorted(set(kwargs) - set(allowed))
    if unknown:
        raise UnlearnkitError(f"Dataset {name!r} takes no argument(s) {', '.join(map(repr, unknown))}; "
                              f"allowed: {', '.join(allowed) or '(none)'}.")
    return loader(root=root, **kwargs)


def _split(x: np.ndarray, y: np.ndarray, test_fraction: float, seed: int):
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(y))
    n_test = int(round(len(y) * test_fraction))
    return order[n_test:], order[:n_test]


@register_dataset("digits")
def digits(root=None, test_fraction: float = 0.25, split_seed: int = 0, subset: int | None = None,
           subset_seed: int = 0, complement: bool = False) -> DatasetSplits:
    """scikit-learn's bundled 8x8 digits (1797 images, 10 classes); a fixed seeded 75/25 split.

    ``subset`` / ``complement`` select training images as for cifar10.
    """
    from sklearn.datasets import load_digits

    d = load_digits()
    x = d.images.astype(np.float32)[:, None]  # (N, 1, 8, 8), values 0..16
    y = d.target.astype(np.int64)
    tr, te = _split(x, y, test_fraction, split_seed)
    keep = training_ids(y[tr], subset, subset_seed, complement)
    if keep is not None:
        tr = tr[keep]
    kw = dict(scale=16.0, mean=[0.3], std=[0.4], classes=[str(i) for i in range(10)], name="digits")
    return DatasetSplits(ArrayDataset(torch.from_numpy(x[tr]), torch.from_numpy(y[tr]), **kw),
                         ArrayDataset(torch.from_numpy(x[te]), torch.from_numpy(y[te]), **kw),
                         "digits", 10, (1, 8, 8))


def find_data_file(filename: str, root=None) -> Path:
    """``filename`` in ``root`` if given, else in $UNLEARNKIT_DATA if set, else in ./data or ../shared/data.

    A location the user gave (``root`` or the environment variable) is the only place looked
    in: when it does not exist, is empty or lacks the file, that is an error, not a reason to
    use another copy found elsewhere.
    """
    if root is not None:
        return _in_given_location(Path(root), filename, "--data-root")
    if os.environ.get(DATA_ENV):
        return _in_given_location(Path(os.environ[DATA_ENV]), filename, f"${DATA_ENV}")
    candidates = [Path.cwd() / "data" / filename, Path.cwd().parent / "shared" / "data" / filename]
    for path in candidates:
        if path.is_file():
            return path
    where = ", ".join(str(c) for c in candidates)
    raise UnlearnkitError(
        f"Data file {filename!r} not found (looked in: {where}); pass --data-root or set ${DATA_ENV}."
    )


def _in_given_location(location: Path, filename: str, given_as: str) -> Path:
    if location.is_file():
        if location.suffix != Path(filename).suffix:
            raise UnlearnkitError(f"{given_as} {str(location)!r} is a {location.suffix or 'suffix-less'} file; "
                                  f"expected {filename!r} or the folder holding it.")
        return location
    if not location.exists():
        raise UnlearnkitError(f"Data file {filename!r} not found: {given_as} {str(location)!r} does not exist.")
    path = location / filename
    if path.is_file():
        return path
    state = "is an empty folder" if not any(location.iterdir()) else "has no such file"
    raise UnlearnkitError(f"Data file {filename!r} not found: {given_as} {str(location)!r} {state}; "
                          f"put {filename} there or point {given_as} at the folder that holds it.")


def _load_npz(path: Path, keys: tuple[str, ...], dataset: str) -> dict:
    """The arrays ``keys`` of an .npz file; a file of another dataset is a one-line error."""
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UnlearnkitError(f"Cannot read {str(path)!r} as an .npz file: {first}.") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise UnlearnkitError(f"{str(path)!r} holds a single array, not an .npz archive of the {dataset} dataset.")
    with archive:
        missing = [k for k in keys if k not in archive.files]
        if missing:
            raise UnlearnkitError(
                f"{str(path)!r} is not a {dataset} file: it lacks {', '.join(missing)} (it has "
                f"{', '.join(archive.files) or 'no arrays'}); expected the keys {', '.join(keys)}.")
        return {k: archive[k] for k in keys}


MNIST_MEAN, MNIST_STD = [0.1307], [0.3081]
CIFAR10_MEAN, CIFAR10_STD = [0.4914, 0.4822, 0.4465], [0.2470, 0.2435, 0.2616]
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def balanced_subset(labels: np.ndarray, subset: int | None, seed: int, num_classes: int = 10) -> np.ndarray | None:
    """Sorted ids of a seeded subset with ``subset // num_classes`` samples per class (None: keep all)."""
    if subset is None:
        return None
    if isinstance(subset, bool) or not isinstance(subset, (int, np.integer)) or not num_classes <= subset:
        raise UnlearnkitError(f"The 'subset' dataset argument must be an int >= {num_classes} (samples, split "
                              f"evenly over the classes); got {subset!r}.")
    if subset > len(labels):
        raise UnlearnkitError(f"The 'subset' dataset argument ({subset}) exceeds the {len(labels)} training samples.")
    rng = np.random.default_rng(seed)
    per_class = subset // num_classes
    return np.sort(np.concatenate([rng.permutation(np.flatnonzero(labels == c))[:per_class]
                                   for c in range(num_classes)]))


def training_ids(labels: np.ndarray, subset: int | None, seed: int, complement: bool = False,
                 num_classes: int = 10) -> np.ndarray | None:
    """Sorted ids of the training images kept: the balanced ``subset``, or with ``complement`` every
    image *not* in it (disjoint pretraining data for a benchmark on that subset); None: keep all."""
    if not isinstance(complement, bool):
        raise UnlearnkitError(f"The 'complement' dataset argument must be true or false; got {complement!r}.")
    if complement and subset is None:
        raise UnlearnkitError("The 'complement' dataset argument needs 'subset' (the subset whose other images "
                              "to keep), e.g. {subset: 10000, complement: true}.")
    keep = balanced_subset(labels, subset, seed, num_classes)
    if keep is None or not complement:
        return keep
    return np.setdiff1d(np.arange(len(labels)), keep)


MNIST_KEYS = ("x_train", "y_train", "x_test", "y_test")
CIFAR10_KEYS = ("train_bytes", "train_offsets", "train_labels", "test_bytes", "test_offsets", "test_labels")


@register_dataset("mnist")
def mnist(root=None, subset: int | None = None, subset_seed: int = 0, complement: bool = False) -> DatasetSplits:
    """MNIST from ``mnist.npz`` (keys x_train, y_train, x_test, y_test, uint8).

    ``subset`` keeps a seeded, class-balanced subset of that many training images;
    ``complement: true`` keeps the other training images instead.
    """
    d = _load_npz(find_data_file("mnist.npz", root), MNIST_KEYS, "mnist")
    kw = dict(scale=255.0, mean=MNIST_MEAN, std=MNIST_STD, classes=[str(i) for i in range(10)], name="mnist")
    keep = training_ids(d["y_train"], subset, subset_seed, complement)
    if keep is not None:
        d["x_train"], d["y_train"] = d["x_train"][keep], d["y_train"][keep]
    train = ArrayDataset(torch.from_numpy(d["x_train"][:, None]), torch.from_numpy(d["y_train"].astype(np.int64)), **kw)
    test = ArrayDataset(torch.from_numpy(d["x_test"][:, None]), torch.from_numpy(d["y_test"].astype(np.int64)), **kw)
    return DatasetSplits(train, test, "mnist", 10, (1, 28, 28))


def _decode_jpegs(data: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    from PIL import Image

    out = np.empty((len(offsets) - 1, 32, 32, 3), dtype=np.uint8)
    for i in range(len(offsets) - 1):
        out[i] = np.asarray(Image.open(io.BytesIO(data[offsets[i]:offsets[i + 1]].tobytes())).convert("RGB"))
    return out


def _cifar10_from_torchvision(root: Path) -> tuple[np.ndarray, ...]:
    try:
        from torchvision.datasets import CIFAR10
    except ImportError:
        raise UnlearnkitError(
            f"{root} looks like a torchvision CIFAR-10 root but torchvision is not installed; "
            "pip install 'unlearnkit[vision]'."
        ) from None
    tr = CIFAR10(str(root), train=True, download=False)
    te = CIFAR10(str(root), train=False, download=False)
    return tr.data, np.asarray(tr.targets), te.data, np.asarray(te.targets)


@register_dataset("cifar10")
def cifar10(root=None, subset: int | None = None, subset_seed: int = 0, complement: bool = False) -> DatasetSplits:
    """CIFAR-10 from ``cifar10_jpeg.npz`` (decoded once, kept as uint8) or a torchvision root.

    ``subset`` keeps a seeded, class-balanced subset of that many training images;
    ``complement: true`` keeps the other training images instead (e.g. the 40,000 images
    outside a 10,000-image benchmark subset, to pretrain a backbone on disjoint data).
    """
    tv_dir = None if root is None else Path(root) / "cifar-10-batches-py"
    if tv_dir is not None and tv_dir.is_dir():
        xtr, ytr, xte, yte = _cifar10_from_torchvision(Path(root))
    else:
        d = _load_npz(find_data_file("cifar10_jpeg.npz", root), CIFAR10_KEYS, "cifar10")
        xtr, ytr = _decode_jpegs(d["train_bytes"], d["train_offsets"]), d["train_labels"].astype(np.int64)
        xte, yte = _decode_jpegs(d["test_bytes"], d["test_offsets"]), d["test_labels"].astype(np.int64)
        # the file is ordered by class; shuffle once with a fixed seed so ids are stable
        order = np.random.default_rng(1234).permutation(len(ytr))
        xtr, ytr = xtr[order], ytr[order]
    keep = training_ids(np.asarray(ytr), subset, subset_seed, complement)
    if keep is not None:
        xtr, ytr = xtr[keep], ytr[keep]
    kw = dict(scale=255.0, mean=CIFAR10_MEAN, std=CIFAR10_STD, classes=CIFAR10_CLASSES, name="cifar10")
    to_t = lambda a: torch.from_numpy(np.ascontiguousarray(a.transpose(0, 3, 1, 2)))  # noqa: E731
    train = ArrayDataset(to_t(xtr), torch.from_numpy(np.asarray(ytr, dtype=np.int64)), **kw)
    test = ArrayDataset(to_t(xte), torch.from_numpy(np.asarray(yte, dtype=np.int64)), **kw)
    return DatasetSplits(train, test, "cifar10", 10, (3, 32, 32))


def describe_dataset(dataset: Dataset) -> tuple[int, tuple[int, ...]]:
    """Number of classes and sample shape of any dataset ``iterate_batches`` accepts."""
    if isinstance(dataset, ArrayDataset):
        return dataset.num_classes, dataset.sample_shape
    from .loading import unpack_sample

    if len(dataset) == 0:
        raise UnlearnkitError("The dataset is empty.")
    labels = dataset_labels(dataset)
    x0, _ = unpack_sample(dataset[0], dataset)
    shape = tuple(next(iter(x0.values())).shape) if isinstance(x0, dict) else tuple(torch.as_tensor(x0).shape)
    return int(labels.max()) + 1, shape


def dataset_labels(dataset: Dataset) -> torch.Tensor:
    """All labels of a dataset, without loading inputs where the dataset allows it."""
    from torch.utils.data import Subset

    from .loading import as_class_labels, batch_keys, unpack_sample

    if isinstance(dataset, ArrayDataset):
        return dataset.y
    if isinstance(dataset, Subset):
        return dataset_labels(dataset.dataset)[torch.as_tensor(dataset.indices, dtype=torch.long)]
    for attr in ("targets", "labels"):
        values = getattr(dataset, attr, None)
        if values is not None and not callable(values) and len(values) == len(dataset):
            return as_class_labels(torch.as_tensor(np.asarray(values)))
    label_key = batch_keys(dataset)[1]
    columns = getattr(dataset, "column_names", None)  # a Hugging Face datasets.Dataset: read the column
    if isinstance(columns, list) and (label_key or next((k for k in ("labels", "label") if k in columns), None)):
        key = label_key or next(k for k in ("labels", "label") if k in columns)
        if key in columns:
            return as_class_labels(torch.as_tensor(np.asarray(dataset[key])))
    if len(dataset) == 0:
        return torch.zeros(0, dtype=torch.long)
    ys = [torch.as_tensor(unpack_sample(dataset[i], dataset)[1]) for i in range(len(dataset))]
    return as_class_labels(torch.stack(ys))
