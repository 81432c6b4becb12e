"""Mean, sample standard deviation and a 95% t-interval over seeds.

A single seed proves little (METHODS.md); ``run_seeds(fn, seeds)`` runs
``fn(seed)`` per seed and aggregates. NaN values (e.g. ``ta_forget_class@1`` of a
sample-forgetting run) are left out, and ``n`` says how many values were used.
With one value the std and the interval half-width are reported as 0 (there is
no spread to estimate; ``n == 1`` says so); with none, all three are NaN.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from ..errors import UnlearnkitError


def _t_quantile(dof: int) -> float:
    from scipy.stats import t

    return float(t.ppf(0.975, dof))


def aggregate(records: list[Mapping[str, float]]) -> dict[str, dict[str, float]]:
    """Per metric ``{"mean", "std" (ddof=1), "ci95" (half-width, t-distribution), "n"}``."""
    if isinstance(records, Mapping) or not isinstance(records, Iterable):
        raise UnlearnkitError(f"aggregate expects a list of {{metric: value}} dicts; got {type(records).__name__}.")
    keys: list[str] = []
    for i, rec in enumerate(records):
        if hasattr(rec, "metrics") and not isinstance(rec, Mapping):
            rec = rec.metrics
        if not isinstance(rec, Mapping):
            raise UnlearnkitError(f"aggregate: record {i} is a {type(rec).__name__}, not a {{metric: value}} dict.")
        keys.extend(k for k in rec if k not in keys)
    out: dict[str, dict[str, float]] = {}
    for key in keys:
        values = []
        for rec in records:
            rec = rec.metrics if hasattr(rec, "metrics") and not isinstance(rec, Mapping) else rec
            if key not in rec or rec[key] is None:
                continue
            try:
                v = float(rec[key])
            except (TypeError, ValueError):
                raise UnlearnkitError(f"aggregate: {key!r} has a non-numeric value {rec[key]!r}.") from None
            if not math.isnan(v):
                values.append(v)
        n = len(values)
        if n == 0:
            out[key] = {"mean": float("nan"), "std": float("nan"), "ci95": float("nan"), "n": 0}
            continue
        mean = math.fsum(values) / n
        if n == 1:
            std = ci = 0.0
        else:
            std = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))
            ci = _t_quantile(n - 1) * std / math.sqrt(n)
        out[key] = {"mean": mean, "std": std, "ci95": ci, "n": n}
    return out


def run_seeds(fn: Callable[[int], Any], seeds: Iterable[int]) -> dict[str, dict[str, float]]:
    """Call ``fn(seed)`` (returning ``{metric: value}`` or an ``Evaluation``) per seed; aggregate."""
    seeds = list(seeds)
    if not seeds:
        raise UnlearnkitError("run_seeds needs at least one seed.")
    records = []
    for seed in seeds:
        rec = fn(seed)
        records.append(rec.metrics if hasattr(rec, "metrics") and not isinstance(rec, Mapping) else rec)
    return aggregate(records)


def format_mean_std(stats: Mapping[str, float], digits: int = 2) -> str:
    """``"12.34 ± 0.56"`` (mean ± std) for a table cell."""
    if stats.get("n", 0) == 0:
        return "n/a"
    return f"{stats['mean']:.{digits}f} ± {stats['std']:.{digits}f}"
