"""Evaluation of unlearned models: versioned metrics, ``evaluate`` and seed aggregation.

Metrics register themselves with ``@register_metric(name, version, higher_is_better=...)``
under ``name@version``; see docs/metrics.md for every definition. Modules are imported
in a fixed order, which is the order of the metrics in an ``Evaluation``.
"""

from .registry import MetricResult, MetricSpec, get_metric, list_metrics, register_metric
from . import accuracy, mia, gap, cost  # noqa: E402,F401  (registration, in display order)
from .aggregate import aggregate, format_mean_std, run_seeds
from .evaluate import EvalContext, Evaluation, evaluate

__all__ = [
    "EvalContext", "Evaluation", "MetricResult", "MetricSpec", "aggregate", "evaluate", "format_mean_std",
    "get_metric", "list_metrics", "register_metric", "run_seeds",
]
