"""Forget-set selection and the retain / forget / test splits of a deletion request.

A training sample's id is its index in the training set. A forget spec is one of
``class:K`` (``class:3,5`` for several), ``random:F`` (a seeded fraction F of the
training set) or ``ids:FILE`` (a .txt of integers or a .npy integer array).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, Subset

from ..errors import UnlearnkitError
from .datasets import dataset_labels

SPEC_HELP = "class:K[,K...], random:F (0 < F < 1) or ids:FILE (.txt or .npy)"


@dataclass
class ForgetRequest:
    """The parsed deletion request: which training ids to forget, and why."""

    kind: str  # "class", "random" or "ids"
    ids: np.ndarray  # sorted unique training ids
    classes: tuple[int, ...] = ()
    spec: str = ""

    def to_dict(self) -> dict:
        return {"kind": self.kind, "spec": self.spec, "classes": list(self.classes), "num_forget": int(len(self.ids))}


@dataclass
class UnlearningData:
    """Everything a method or a metric needs about one deletion request."""

    train: Dataset
    retain: Dataset
    forget: Dataset
    test: Dataset | None
    request: ForgetRequest
    num_classes: int
    test_retain: Dataset | None = None
    test_forget: Dataset | None = None
    retain_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    @property
    def forget_ids(self) -> np.ndarray:
        return self.request.ids

    @property
    def forget_classes(self) -> tuple[int, ...]:
        return self.request.classes


def _parse_int_list(text: str, what: str) -> list[int]:
    try:
        return [int(t) for t in text.split(",") if t.strip() != ""]
    except ValueError:
        raise UnlearnkitError(f"{what} must be comma-separated integers; got {text!r}.") from None


def read_ids_file(path: str | Path) -> np.ndarray:
    path = Path(path)
    if not path.is_file():
        raise UnlearnkitError(f"Forget ids file {str(path)!r} does not exist.")
    if path.suffix == ".npy":
        try:
            arr = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise UnlearnkitError(f"Cannot read ids file {str(path)!r}: {e}") from None
        if arr.dtype.kind not in "iu":
            raise UnlearnkitError(f"Ids in {str(path)!r} must be integers; got dtype {arr.dtype}.")
        return arr.astype(np.int64).ravel()
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise UnlearnkitError(f"Cannot read ids file {str(path)!r} as text: {type(e).__name__}.") from None
    return _parse_ids_text(text, path)


_DECIMAL = re.compile(r"-?[0-9]+", re.ASCII)


def _parse_ids_text(text: str, path: Path) -> np.ndarray:
    """Plain decimal integers separated by whitespace or commas; anything else (``1_0``, ``+3``, ``0x10``,
    ``1.0``) is refused with its line number, so the file means what ``sort -n`` reads in it.
    The offending text is not echoed: the file may be anything (``ids:/etc/passwd``)."""
    ids: list[int] = []
    for number, line in enumerate(text.splitlines(), start=1):
        for token in line.replace(",", " ").split():
            if not _DECIMAL.fullmatch(token):
                raise UnlearnkitError(f"Ids in {str(path)!r} must be plain decimal integers (one per line, or "
                                      f"separated by spaces or commas); line {number} is not.")
            ids.append(int(token))
    return np.array(ids, dtype=np.int64)


def select_forget(spec: str | ForgetRequest | np.ndarray | list, train: Dataset, *, seed: int = 0,
                  num_classes: int | None = None) -> ForgetRequest:
    """Resolve a forget spec against the training set into a ``ForgetRequest``."""
    if isinstance(spec, ForgetRequest):
        return spec
    n = len(train)
    labels = dataset_labels(train)
    num_classes = num_classes or int(labels.max()) + 1
    if isinstance(spec, (np.ndarray, list, tuple, torch.Tensor)):
        return _ids_request(np.asarray(spec), n, "ids:<array>")
    if not isinstance(spec, str) or ":" not in spec:
        raise UnlearnkitError(f"Forget spec must be {SPEC_HELP}; got {spec!r}.")
    kind, _, arg = spec.partition(":")
    if kind == "class":
        classes = _parse_int_list(arg, "class:K")
        if not classes:
            raise UnlearnkitError(f"Forget spec {spec!r} names no class; use {SPEC_HELP}.")
        bad = [c for c in classes if not 0 <= c < num_classes]
        if bad:
            raise UnlearnkitError(f"Forget class {bad[0]} is outside the label range 0..{num_classes - 1}.")
        mask = np.isin(labels.numpy(), classes)
        ids = np.flatnonzero(mask)
        req = ForgetRequest("class", ids, tuple(sorted(set(classes))), spec)
    elif kind == "random":
        try:
            frac = float(arg)
        except ValueError:
            raise UnlearnkitError(f"random:F needs a fraction 0 < F < 1; got {arg!r}.") from None
        if not 0 < frac < 1:
            raise UnlearnkitError(f"random:F needs a fraction 0 < F < 1; got {frac}.")
        k = int(round(frac * n))
        ids = np.sort(np.random.default_rng(seed).permutation(n)[:k])
        req = ForgetRequest("random", ids, (), spec)
    elif kind == "ids":
        req = _ids_request(read_ids_file(arg), n, spec)
    else:
        raise UnlearnkitError(f"Unknown forget spec kind {kind!r}; use {SPEC_HELP}.")
    _check_nonempty_and_partial(req, n)
    return req


def _ids_request(ids: np.ndarray, n: int, spec: str) -> ForgetRequest:
    if ids.dtype.kind not in "iu":
        raise UnlearnkitError(f"Forget ids must be integers; got dtype {ids.dtype}.")
    ids = ids.astype(np.int64).ravel()
    bad = ids[(ids < 0) | (ids >= n)]
    if len(bad):
        raise UnlearnkitError(f"Forget id {int(bad[0])} is out of range; training ids are 0..{n - 1}.")
    req = ForgetRequest("ids", np.unique(ids), (), spec)
    _check_nonempty_and_partial(req, n)
    return req


def _check_nonempty_and_partial(req: ForgetRequest, n: int) -> None:
    if len(req.ids) == 0:
        raise UnlearnkitError(f"The forget set {req.spec!r} is empty.")
    if len(req.ids) >= n:
        raise UnlearnkitError(
            f"The forget set {req.spec!r} is the whole training set ({n} samples); nothing would be retained."
        )


def make_unlearning_data(train: Dataset, test: Dataset | None, spec, *, seed: int = 0,
                         num_classes: int | None = None, already_forgotten=None,
                         forgotten_classes: tuple[int, ...] = ()) -> UnlearningData:
    """Split ``train`` into retain and forget sets (and ``test`` by forgotten class).

    ``already_forgotten`` are ids an earlier request removed from the model (a derived
    checkpoint's history): they are never part of the retain set, and test samples of
    ``forgotten_classes`` are never part of the test-retain set.
    """
    labels = dataset_labels(train)
    num_classes = num_classes or int(labels.max()) + 1
    req = select_forget(spec, train, seed=seed, num_classes=num_classes)
    keep = np.ones(len(train), dtype=bool)
    keep[req.ids] = False
    if already_forgotten is not None and len(already_forgotten):
        keep[np.asarray(already_forgotten, dtype=np.int64)] = False
        if not keep.any():
            raise UnlearnkitError(f"The forget set {req.spec!r} and the {len(already_forgotten)} ids forgotten "
                                  "earlier cover the whole training set; nothing would be retained.")
    retain_ids = np.flatnonzero(keep)
    data = UnlearningData(train=train, retain=Subset(train, retain_ids.tolist()),
                          forget=Subset(train, req.ids.tolist()), test=test, request=req,
                          num_classes=num_classes, retain_ids=retain_ids)
    if test is not None and req.classes:
        test_labels = dataset_labels(test).numpy()
        in_forget = np.isin(test_labels, req.classes)
        gone = np.isin(test_labels, tuple(req.classes) + tuple(forgotten_classes))
        data.test_retain = Subset(test, np.flatnonzero(~gone).tolist())
        data.test_forget = Subset(test, np.flatnonzero(in_forget).tolist())
    return data
