"""PGU's held-out data in the bench: carved from the test set before TA's images, disjoint, passed as check_data."""

from __future__ import annotations

import numpy as np
import pytest

from unlearnkit.bench import load_bench_config, load_records, run_benchmark
from unlearnkit.bench.runner import BenchRunner
from unlearnkit.checkpoint import load_checkpoint
from unlearnkit.errors import UnlearnkitError
from unlearnkit.training import accuracy

CONFIG = {
    "name": "heldout", "dataset": "digits", "model": "cnn", "model_kwargs": {"width": 8},
    "recipe": {"epochs": 2, "lr": 0.05, "batch_size": 64}, "scenarios": ["random:0.1"],
    "methods": {"retrain": {}, "pgu": {"max_steps": 6}}, "seeds": [0], "device": "cpu",
    "heldout": 100, "test_subset": 200,
}


def _base_indices(subset):
    """Indices of a (nested) Subset into the dataset at the bottom."""
    indices = np.arange(len(subset))
    while hasattr(subset, "indices"):
        indices = np.asarray(subset.indices)[indices]
        subset = subset.dataset
    return set(indices.tolist())


def test_heldout_is_disjoint_from_the_images_of_ta():
    runner = BenchRunner(load_bench_config(CONFIG), "unused")
    held, test = _base_indices(runner.heldout), _base_indices(runner.splits.test)
    assert len(held) == 100 and len(test) == 200 and not held & test
    whole = BenchRunner(load_bench_config({**CONFIG, "heldout": None, "test_subset": None}), "unused")
    assert held | test <= _base_indices(whole.splits.test)  # from the test set, never the training data
    assert whole.heldout is None


def test_heldout_larger_than_the_test_set_is_one_line():
    with pytest.raises(UnlearnkitError, match="heldout: 100000 images asked for") as info:
        BenchRunner(load_bench_config({**CONFIG, "heldout": 100000}), "unused").splits
    assert "\n" not in str(info.value)


def test_pgu_stops_on_the_originals_heldout_accuracy(tmp_path):
    summary = run_benchmark({**CONFIG, "methods": {"retrain": {}, "pgu": {"max_steps": 6}}}, tmp_path)
    assert not summary.errors, summary.errors
    info = {r["method"]: r for r in load_records(tmp_path)}["pgu"]["result"]["info"]
    runner = BenchRunner(load_bench_config(CONFIG), tmp_path)
    (path,) = (tmp_path / "cache" / "originals").iterdir()
    original, _ = load_checkpoint(path, num_classes=10)
    assert info["forgetting"] == "sample"
    assert info["forget_acc_target"] == pytest.approx(accuracy(original, runner.heldout))  # None without held-out


def test_a_bench_original_with_heldout_and_test_subset_loads_in_eval(tmp_path, capsys):
    """Its checkpoint records the dataset as loaded (before the carving), so `unlearnkit eval` accepts it."""
    from unlearnkit.cli import main

    summary = run_benchmark({**CONFIG, "methods": {"retrain": {}}}, tmp_path)
    assert not summary.errors, summary.errors
    (path,) = (tmp_path / "cache" / "originals").iterdir()
    assert main(["eval", "-c", str(path), "-f", "class:3", "-q"]) == 0, capsys.readouterr().err
