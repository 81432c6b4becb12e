"""Seed aggregation on known numbers."""

from __future__ import annotations

import math

import pytest

from unlearnkit import UnlearnkitError
from unlearnkit.metrics import Evaluation, aggregate, format_mean_std, run_seeds

T975 = {1: 12.706204736, 2: 4.302652730, 3: 3.182446305}  # Student t 97.5% quantiles (tables)


def test_aggregate_known_numbers():
    out = aggregate([{"a": 1.0, "b": 10.0}, {"a": 2.0, "b": 10.0}, {"a": 3.0, "b": 10.0}, {"a": 4.0, "b": 10.0}])
    std = math.sqrt(5 / 3)  # sum of squares 5 over n - 1 = 3
    assert out["a"] == pytest.approx({"mean": 2.5, "std": std, "ci95": T975[3] * std / 2, "n": 4})
    assert out["b"] == {"mean": 10.0, "std": 0.0, "ci95": 0.0, "n": 4}


def test_aggregate_ignores_nan_and_handles_one_and_zero_values():
    out = aggregate([{"a": 1.0, "c": float("nan"), "d": 5.0}, {"a": float("nan"), "c": float("nan")}, {"a": 3.0}])
    assert out["a"] == pytest.approx({"mean": 2.0, "std": math.sqrt(2), "ci95": T975[1], "n": 2})
    assert out["d"] == {"mean": 5.0, "std": 0.0, "ci95": 0.0, "n": 1}
    assert out["c"]["n"] == 0 and math.isnan(out["c"]["mean"])
    assert list(out) == ["a", "c", "d"]


def test_run_seeds_calls_each_seed_and_aggregates():
    seen = []

    def fn(seed):
        seen.append(seed)
        return {"x": float(seed)} if seed != 2 else Evaluation(metrics={"x": 2.0}, environment={})

    out = run_seeds(fn, [1, 2, 3])
    assert seen == [1, 2, 3]
    assert out["x"] == pytest.approx({"mean": 2.0, "std": 1.0, "ci95": T975[2] / math.sqrt(3), "n": 3})
    assert format_mean_std(out["x"]) == "2.00 ± 1.00"


def test_aggregate_bad_input():
    with pytest.raises(UnlearnkitError, match="list of"):
        aggregate({"a": 1.0})
    with pytest.raises(UnlearnkitError, match="record 1"):
        aggregate([{"a": 1.0}, 3.0])
    with pytest.raises(UnlearnkitError, match="non-numeric"):
        aggregate([{"a": "x"}])
    with pytest.raises(UnlearnkitError, match="at least one seed"):
        run_seeds(lambda s: {}, [])
