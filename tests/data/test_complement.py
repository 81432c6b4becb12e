"""`complement: true` keeps the training images outside the balanced subset: disjoint, together the full set."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import unlearnkit as uk
from unlearnkit.data.datasets import training_ids
from unlearnkit.errors import UnlearnkitError


def _rows(dataset) -> set[bytes]:
    return {row.numpy().tobytes() + bytes([int(y)]) for row, y in zip(dataset.x, dataset.y)}


def test_digits_subset_and_complement_partition_the_training_set():
    full = uk.load_dataset("digits").train
    subset = uk.load_dataset("digits", subset=600).train
    rest = uk.load_dataset("digits", subset=600, complement=True).train
    assert len(subset) == 600 and len(subset) + len(rest) == len(full)
    assert torch.bincount(subset.y, minlength=10).tolist() == [60] * 10  # class-balanced
    a, b = _rows(subset), _rows(rest)
    assert not a & b and a | b == _rows(full)


def test_training_ids_complement_on_synthetic_labels():
    labels = np.random.default_rng(3).integers(0, 10, size=5000)
    for seed in (0, 1):
        keep = training_ids(labels, 1000, seed)
        other = training_ids(labels, 1000, seed, complement=True)
        assert np.intersect1d(keep, other).size == 0
        assert np.array_equal(np.union1d(keep, other), np.arange(5000))
    assert not np.array_equal(training_ids(labels, 1000, 0, True), training_ids(labels, 1000, 1, True))
    assert training_ids(labels, None, 0) is None


@pytest.mark.parametrize("kwargs, message", [
    (dict(complement=True), "needs 'subset'"),
    (dict(subset=600, complement="yes"), "must be true or false"),
])
def test_complement_bad_input_is_one_line(kwargs, message):
    with pytest.raises(UnlearnkitError, match=message) as info:
        uk.load_dataset("digits", **kwargs)
    assert "\n" not in str(info.value)
