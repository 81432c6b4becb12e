"""The metric registry: decorated plain functions with versioned names.

A metric is ``fn(ctx) -> float | MetricResult`` where ``ctx`` is the
``EvalContext`` of one evaluation (cached logits per split, the reference, the
run's cost). ``@register_metric("ua", version=1, higher_is_better=True)`` stores
it under the key ``"ua@1"``. A definition that changes gets a new version, so a
stored figure never silently changes meaning.

A superseded version stays registered (``superseded_by="name@newer"``) so stored
records keep their definition, but ``evaluate`` computes it only when asked for by
its full key, and ``list_metrics`` leaves it out unless ``superseded=True``.

``requires`` names the optional ingredients a metric needs beyond the model and
the data: ``"reference"`` (a reference model or its ``Evaluation``),
``"reference_model"`` (the reference module itself) and ``"result"`` (an
``UnlearnResult``). ``evaluate`` skips a metric whose ingredients are missing.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Any, Callable

from ..errors import UnlearnkitError, close_matches

REQUIREMENTS = ("reference", "reference_model", "result")


@dataclass
class MetricResult:
    """A metric's value, optionally with per-sample values (kept in memory, not in JSON)."""

    value: float
    per_sample: Any = None


@dataclass(frozen=True)
class MetricSpec:
    name: str
    version: int
    fn: Callable[..., Any]
    higher_is_better: bool | None
    requires: tuple[str, ...]
    description: str
    display: str | None
    unit: str
    superseded_by: str | None = None

    @property
    def key(self) -> str:
        return f"{self.name}@{self.version}"


_METRICS: dict[str, MetricSpec] = {}


def register_metric(name: str, version: int = 1, *, higher_is_better: bool | None, requires: tuple[str, ...] = (),
                    description: str = "", display: str | None = None, unit: str = "%",
                    superseded_by: str | None = None):
    """Function decorator: register ``fn(ctx)`` as metric ``name@version``.

    ``higher_is_better`` is ``None`` for figures with no preferred direction (costs are
    ``False``). ``display`` is the short column name used by ``Evaluation.summary``.
    ``superseded_by`` marks an old version (computed only on request, see the module docstring).
    """
    if not name.replace("_", "").isalnum() or name.lower() != name:
        raise ValueError(f"metric names are lowercase snake_case; got {name!r}")
    if not isinstance(version, int) or version < 1:
        raise ValueError(f"metric versions are integers >= 1; got {version!r}")
    bad = [r for r in requires if r not in REQUIREMENTS]
    if bad:
        raise ValueError(f"unknown requirement {bad[0]!r}; allowed: {', '.join(REQUIREMENTS)}")

    def wrap(fn):
        spec = MetricSpec(name, version, fn, higher_is_better, tuple(requires),
                          description or ((fn.__doc__ or "").strip().splitlines() or [""])[0], display, unit,
                          superseded_by)
        if spec.key in _METRICS:
            raise KeyError(f"metric {spec.key!r} is already registered")
        _METRICS[spec.key] = spec
        return fn

    return wrap


def list_metrics(pattern: str = "*", superseded: bool = False) -> list[str]:
    """Registered metric keys (``name@version``) matching a shell pattern, in registration order.

    Superseded versions are left out unless ``superseded`` is true.
    """
    return [k for k, spec in _METRICS.items()
            if fnmatch.fnmatch(k, pattern) and (superseded or spec.superseded_by is None)]


def get_metric(key: str) -> MetricSpec:
    """The spec of ``"name@version"``, or of the newest version of ``"name"``."""
    if key in _METRICS:
        return _METRICS[key]
    versions = [s for s in _METRICS.values() if s.name == key and s.superseded_by is None]
    if versions:
        return max(versions, key=lambda s: s.version)
    names = {s.name: s.key for s in _METRICS.values()}
    hint = close_matches(key, list(names) + list(_METRICS))
    for name, full in names.items():  # suggest the versioned key
        hint = hint.replace(f"{name!r}", f"{full!r}")
    raise UnlearnkitError(f"Unknown metric {key!r}; available: {', '.join(_METRICS)}.{hint}")
