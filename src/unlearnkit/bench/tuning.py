"""Defaults *and* tuned: a small grid per method, chosen on validation seeds and a validation forget set.

Config (``tuning`` of a benchmark)::

    tuning:
      seeds: [100]                        # validation seeds: never among the reported ``seeds``
      scenarios: {"class:3": "class:5"}   # optional; default class:K -> class:(K+1) mod C, random:F -> random:F
      grid:                               # method -> field -> values (the cartesian product is run)
        finetune: {lr: [0.01, 0.1], epochs: [1, 3]}
        salun: {lr: [0.01, 0.03], mask_ratio: [0.3, 0.5]}

On each validation seed a random forget set is its own draw (the draw is seeded by the seed), so
a validation random:F request is another draw than any reported one. Every grid point runs on
every validation seed and validation scenario into ``OUT/tuning/`` (cached and resumable like
the reported runs); per reported scenario and method the point with the lowest mean Avg.Gap to
its validation seed's retrain oracle wins, ties (equal to the table's two decimals) by the lower
mean cost ÷ retrain, then by grid order. The chosen configs then run on the reported seeds into
``OUT/tuned/``; ``OUT/tuning.json`` stores the grid, every point's scores and the choice.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

from ..errors import InvalidConfigError
from ..utils import stable_hash

CRITERION = ("mean Avg.Gap over the validation seeds, each against its own retrain oracle (lower wins); ties at "
             "two decimals broken by the lower mean cost ÷ retrain, then by grid order")


def grid_points(grid: dict[str, list]) -> list[dict[str, Any]]:
    """The cartesian product of a method's grid, in the order the fields and values are written."""
    fields = list(grid)
    return [dict(zip(fields, values)) for values in itertools.product(*(grid[f] for f in fields))]


def point_label(method: str, point: dict[str, Any]) -> str:
    """The record name of a grid point: stable under reordering of the grid."""
    return f"{method}~{stable_hash(point)[:10]}"


def check_tuning(config) -> None:
    """One-line errors for a malformed ``tuning`` section of a ``BenchConfig``."""
    tuning = config.tuning
    if not tuning:
        return
    unknown = sorted(set(tuning) - {"seeds", "scenarios", "grid"})
    if unknown:
        raise InvalidConfigError(f"Unknown field(s) {', '.join(map(repr, unknown))} in 'tuning'; allowed: seeds, "
                                 "scenarios, grid.")
    seeds = tuning.get("seeds")
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0
                                                           for s in seeds):
        raise InvalidConfigError(f"'tuning.seeds' must be a non-empty list of ints >= 0; got {seeds!r}.")
    reported = sorted(set(seeds) & set(config.seeds))
    if reported:
        raise InvalidConfigError(f"'tuning.seeds' {reported} are also reported seeds; validation seeds must be "
                                 "others (the reported seeds are never used for tuning).")
    scenarios = tuning.get("scenarios", {})
    if not isinstance(scenarios, dict):
        raise InvalidConfigError(f"'tuning.scenarios' must map a reported scenario to its validation scenario; "
                                 f"got {scenarios!r}.")
    from .config import valid_scenario

    for reported_spec, spec in scenarios.items():
        if reported_spec not in config.scenarios:
            raise InvalidConfigError(f"'tuning.scenarios' names {reported_spec!r}, which is not among the "
                                     f"scenarios {config.scenarios}.")
        if not valid_scenario(spec) or spec.split(":")[0] != reported_spec.split(":")[0]:
            raise InvalidConfigError(f"'tuning.scenarios': {reported_spec!r} -> {spec!r} must be a forget spec of "
                                     "the same kind (class:K or random:F).")
    grid = tuning.get("grid")
    if not isinstance(grid, dict) or not grid:
        raise InvalidConfigError(f"'tuning.grid' must map methods to {{field: [values]}}; got {grid!r}.")
    for method, fields in grid.items():
        if method not in config.methods or method == "retrain":
            raise InvalidConfigError(f"'tuning.grid' names {method!r}: only methods of 'methods' other than retrain "
                                     "(the oracle) can be tuned.")
        if not isinstance(fields, dict) or not fields or not all(isinstance(v, list) and v for v in fields.values()):
            raise InvalidConfigError(f"'tuning.grid.{method}' must map fields to non-empty lists of values; "
                                     f"got {fields!r}.")
        for point in grid_points(fields):  # every point is a valid config of the method
            config.method_config(method, overrides={**config.methods[method], **point})


def validation_scenarios(config, num_classes: int) -> dict[str, str]:
    """Reported scenario -> its validation scenario."""
    given = (config.tuning or {}).get("scenarios", {})
    out = {}
    for spec in config.scenarios:
        if spec in given:
            out[spec] = given[spec]
        elif spec.startswith("class:"):
            classes = [(int(k) + 1) % num_classes for k in spec.split(":")[1].split(",")]
            out[spec] = "class:" + ",".join(map(str, classes))
        else:
            out[spec] = spec  # another draw: the validation seed draws it
    return out


def grid_rows(config, val_scenarios: list[str]) -> dict[str, dict[str, tuple[str, dict]]]:
    """Per validation scenario: label -> (method, overrides) of retrain and every grid point."""
    rows: dict[str, tuple[str, dict]] = {"retrain": ("retrain", config.methods.get("retrain", {}))}
    for method, fields in config.tuning["grid"].items():
        for point in grid_points(fields):
            rows[point_label(method, point)] = (method, {**config.methods[method], **point})
    return {s: dict(rows) for s in val_scenarios}


def _metric(record: dict, name: str) -> float | None:
    for key, value in (record.get("metrics") or {}).items():
        if key.split("@", 1)[0] == name and value is not None:
            return float(value)
    return None


def _mean(values: list[float]) -> float:
    return math.fsum(values) / len(values)


def choose(config, records: list[dict], val_map: dict[str, str]) -> dict[str, Any]:
    """The tuning record: every point's validation scores and, per reported scenario and method, the choice."""
    from .report import cost_fractions, run_cost

    seeds = config.tuning["seeds"]
    ok = {(r["scenario"], r["method"], r["seed"]): r for r in records if r.get("status") == "ok"}
    retrain = {(s, seed): run_cost(r) for (s, m, seed), r in ok.items() if m == "retrain"}
    points, choice = [], {}
    for scenario, val in val_map.items():
        choice[scenario] = {}
        for method, fields in config.tuning["grid"].items():
            scored = []
            for order, point in enumerate(grid_points(fields)):
                label = point_label(method, point)
                runs = [ok.get((val, label, seed)) for seed in seeds]
                entry = {"scenario": scenario, "validation_scenario": val, "method": method, "label": label,
                         "point": point, "seeds_ok": sum(r is not None for r in runs), "avg_gap": None,
                         "cost_fraction": None}
                gaps = [_metric(r, "avg_gap") for r in runs if r is not None]
                if all(r is not None for r in runs) and all(g is not None for g in gaps):
                    costs = [cost_fractions(run_cost(r), retrain.get((val, r["seed"]))).get("cost_fraction",
                                                                                          math.inf) for r in runs]
                    entry.update(avg_gap=_mean(gaps), cost_fraction=_mean(costs))
                    scored.append((round(entry["avg_gap"], 2), entry["cost_fraction"], order, entry))
                points.append(entry)
            base = config.methods[method]
            if scored:
                best = min(scored, key=lambda t: t[:3])[3]
                choice[scenario][method] = {"point": best["point"], "label": best["label"],
                                            "overrides": {**base, **best["point"]}, "avg_gap": best["avg_gap"],
                                            "cost_fraction": best["cost_fraction"]}
            else:
                choice[scenario][method] = {"point": None, "label": None, "overrides": base,
                                            "fallback": "no grid point completed on every validation seed: defaults"}
    return {"criterion": CRITERION, "seeds": seeds, "scenarios": val_map, "grid": config.tuning["grid"],
            "points": points, "choice": choice}


def tuned_rows(config, tuning: dict[str, Any]) -> dict[str, dict[str, tuple[str, dict]]]:
    """Per reported scenario: retrain and each tuned method with its chosen overrides."""
    rows = {}
    for scenario, chosen in tuning["choice"].items():
        rows[scenario] = {"retrain": ("retrain", config.methods.get("retrain", {}))}
        rows[scenario].update({m: (m, c["overrides"]) for m, c in chosen.items()})
    return rows
