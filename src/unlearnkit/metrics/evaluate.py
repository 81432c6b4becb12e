"""``unlearnkit.evaluate``: every registered metric of one model on one deletion request.

One batched no-grad pass per split (``training.predict_logits``); the logits are
cached in an ``EvalContext`` and every metric reads them from there. Metrics are
computed lazily and memoised, so a metric may use another one
(``ctx.value("ua@1")``) and the reference model is only evaluated on what the gap
metrics ask of it.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn
from torch.utils.data import Dataset, Subset

from ..data.forget import UnlearningData
from ..errors import UnlearnkitError
from ..training import predict_logits
from ..utils import environment_info, model_device, package_version, resolve_device
from .registry import MetricResult, get_metric, list_metrics

SCHEMA_VERSION = 1

# The splits metrics can ask for. "test" is TA's split and the MIA non-members (the test set
# without the forgotten classes); "test_all" the whole test set; "heldout" the loss-AUC
# comparison set (see mia.py).
SPLITS = ("forget", "retain", "test", "test_all", "test_forget", "heldout")
_REQUIRED_SPLITS = ("forget", "retain", "test", "test_all")


def _is_class_request(data: UnlearningData) -> bool:
    return bool(data.request.classes) and data.test_retain is not None


def split_dataset(data: UnlearningData, name: str) -> Dataset | None:
    """The dataset behind a split name (``None`` where the request has no such split)."""
    if name == "forget":
        return data.forget
    if name == "retain":
        return data.retain
    if name == "test_all":
        return data.test
    if name == "test":
        return data.test_retain if _is_class_request(data) else data.test
    if name == "test_forget":
        return data.test_forget if _is_class_request(data) else None
    if name == "heldout":
        return data.test_forget if _is_class_request(data) else data.test
    raise KeyError(f"unknown split {name!r}; splits: {', '.join(SPLITS)}")


class EvalContext:
    """Cached logits of one model (and optionally a reference) on the splits of one request."""

    def __init__(self, model: nn.Module, data: UnlearningData, *, seed: int = 0, batch_size: int = 512,
                 reference_model: nn.Module | None = None, reference_evaluation: "Evaluation | None" = None,
                 result: Any = None, role: str = "model"):
        self.model = model
        self.data = data
        self.seed = seed
        self.batch_size = batch_size
        self.reference_model = reference_model
        self.reference_evaluation = reference_evaluation
        self.result = result
        self.role = role
        self._logits: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self._values: dict[str, MetricResult] = {}
        self._reference_ctx: EvalContext | None = None

    # ---- ingredients -------------------------------------------------------------------------
    def has(self, requirement: str) -> bool:
        if requirement == "reference":
            return self.reference_model is not None or self.reference_evaluation is not None
        if requirement == "reference_model":
            return self.reference_model is not None
        if requirement == "result":
            return self.result is not None
        raise KeyError(requirement)

    def logits(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits, labels) of ``split``, computed once; empty tensors for an absent split."""
        if split not in self._logits:
            self._logits[split] = self._compute(split)
        return self._logits[split]

    def _compute(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        dataset = split_dataset(self.data, split)
        if dataset is None or len(dataset) == 0:
            if split in _REQUIRED_SPLITS:
                raise UnlearnkitError(f"The {split} split is {'missing' if dataset is None else 'empty'}; "
                                      "evaluate needs non-empty forget, retain and test sets.")
            return torch.zeros(0, self.data.num_classes), torch.zeros(0, dtype=torch.long)
        # test_retain / test_forget are Subsets of the test set: slice the cached test logits.
        if split != "test_all" and isinstance(dataset, Subset) and dataset.dataset is self.data.test:
            logits, labels = self.logits("test_all")
            idx = torch.as_tensor(dataset.indices, dtype=torch.long)
            return logits[idx], labels[idx]
        if split == "test" and dataset is self.data.test:
            return self.logits("test_all")
        if split == "heldout" and dataset is self.data.test:
            return self.logits("test_all")
        try:
            logits, labels = predict_logits(self.model, dataset, self.batch_size)
        except (RuntimeError, ValueError, TypeError, IndexError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise UnlearnkitError(f"The {self.role} failed on the {split} split: {first}") from None
        if logits.dim() != 2 or logits.shape[1] != self.data.num_classes:
            got = logits.shape[1] if logits.dim() == 2 else f"shape {tuple(logits.shape)}"
            raise UnlearnkitError(f"The {self.role} outputs {got} classes but the data has "
                                  f"{self.data.num_classes}; evaluate a model of the same task.")
        if not torch.isfinite(logits).all():
            bad = int((~torch.isfinite(logits)).any(1).sum())
            raise UnlearnkitError(f"The {self.role} produced NaN or inf logits on {bad} of {len(logits)} samples "
                                  f"of the {split} split; it has diverged, so its metrics are meaningless.")
        return logits, labels

    def probs(self, split: str) -> torch.Tensor:
        return torch.softmax(self.logits(split)[0].double(), dim=1)

    # ---- metric values -----------------------------------------------------------------------
    def value(self, key: str) -> float:
        """The value of metric ``key`` for this context's model, computed once."""
        spec = get_metric(key)
        if spec.key not in self._values:
            missing = [r for r in spec.requires if not self.has(r)]
            if missing:
                raise UnlearnkitError(f"Metric {spec.key!r} needs {missing[0]!r}, which this evaluation lacks.")
            out = spec.fn(self)
            self._values[spec.key] = out if isinstance(out, MetricResult) else MetricResult(float(out))
        return float(self._values[spec.key].value)

    def result_of(self, key: str) -> MetricResult | None:
        return self._values.get(get_metric(key).key)

    def reference_value(self, key: str) -> float:
        """Metric ``key`` of the reference: from its stored Evaluation, else computed on its logits."""
        spec = get_metric(key)
        if self.reference_evaluation is not None:
            if spec.key not in self.reference_evaluation.metrics:
                raise UnlearnkitError(f"The reference Evaluation has no {spec.key!r}; evaluate the reference "
                                      "with the same metrics, or pass the reference model.")
            return float(self.reference_evaluation.metrics[spec.key])
        return self.reference_context().value(spec.key)

    def reference_context(self) -> "EvalContext":
        if self.reference_model is None:
            raise UnlearnkitError("This metric needs the reference model itself, not its Evaluation.")
        if self._reference_ctx is None:
            self._reference_ctx = EvalContext(self.reference_model, self.data, seed=self.seed,
                                              batch_size=self.batch_size, role="reference model")
        return self._reference_ctx

    def result_field(self, name: str) -> Any:
        if isinstance(self.result, Mapping):
            return self.result.get(name)
        return getattr(self.result, name, None)


def _fmt(value: float, unit: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if unit == "count":
        return f"{int(round(value)):,}"
    if unit == "bits":
        return f"{value:.4f}"
    if unit == "MB":
        return f"{value:.1f}"
    return f"{value:.2f}"


@dataclass
class Evaluation:
    """The metrics of one model on one deletion request, keyed ``name@version``."""

    metrics: dict[str, float]
    seed: int = 0
    forget: dict[str, Any] = field(default_factory=dict)
    num_classes: int | None = None
    config: dict[str, Any] = field(default_factory=dict)
    environment: dict[str, Any] = field(default_factory=environment_info)

    def __getitem__(self, key: str) -> float:
        """``ev["ua@1"]`` or ``ev["ua"]`` (the newest version present, so old records read too)."""
        if key in self.metrics:
            return self.metrics[key]
        present = [k for k in self.metrics if k.split("@")[0] == key and k.split("@")[-1].isdigit()]
        if present:
            return self.metrics[max(present, key=lambda k: int(k.split("@")[-1]))]
        return self.metrics[get_metric(key).key]

    def to_dict(self) -> dict[str, Any]:
        return {"schema_version": SCHEMA_VERSION, "unlearnkit": package_version(), "seed": self.seed,
                "metrics": dict(self.metrics), "forget": dict(self.forget), "num_classes": self.num_classes,
                "config": dict(self.config), "environment": dict(self.environment)}

    @classmethod
    def from_dict(cls, record: Mapping[str, Any]) -> "Evaluation":
        """Read back ``to_dict()`` output (e.g. a JSON file written by ``unlearnkit eval``)."""
        if not isinstance(record, Mapping) or "metrics" not in record:
            raise UnlearnkitError("An Evaluation record needs a 'metrics' entry (as written by Evaluation.to_dict).")
        if record.get("schema_version", SCHEMA_VERSION) != SCHEMA_VERSION:
            raise UnlearnkitError(f"Evaluation schema_version {record.get('schema_version')!r} is not supported; "
                                  f"this unlearnkit reads version {SCHEMA_VERSION}.")
        return cls(metrics={k: float(v) for k, v in record["metrics"].items()}, seed=record.get("seed", 0),
                   forget=dict(record.get("forget", {})), num_classes=record.get("num_classes"),
                   config=dict(record.get("config", {})), environment=dict(record.get("environment", {})))

    def summary(self) -> dict[str, float]:
        """Short display names (UA, RA, TA, MIA-Efficacy, Avg.Gap) -> value, for those present."""
        out, versions = {}, {}
        for key in list_metrics(superseded=True):  # the newest version present of each figure
            spec = get_metric(key)
            if spec.display and key in self.metrics and spec.version > versions.get(spec.display, 0):
                out[spec.display], versions[spec.display] = self.metrics[key], spec.version
        return out

    def table(self, title: str = "unlearnkit evaluation", definitions: bool = False):
        """A rich Table: one row per metric with its value, preferred direction and (optionally) definition."""
        from rich.table import Table

        table = Table(title=title)
        table.add_column("metric")
        table.add_column("value", justify="right")
        table.add_column("better", justify="center")
        if definitions:
            table.add_column("definition")
        arrows = {True: "↑", False: "↓", None: "·"}
        for key, value in self.metrics.items():
            try:
                spec = get_metric(key)
            except UnlearnkitError:
                table.add_row(key, f"{value:.4g}", "", *([""] if definitions else []))
                continue
            unit = "" if spec.unit in ("count", "bits") else f" {spec.unit}"
            table.add_row(key, _fmt(value, spec.unit) + ("" if _fmt(value, spec.unit) == "n/a" else unit),
                          arrows[spec.higher_is_better], *([spec.description] if definitions else []))
        return table


def _check_module(obj: Any, what: str) -> nn.Module:
    if not isinstance(obj, nn.Module):
        raise UnlearnkitError(f"{what} must be a torch.nn.Module; got {type(obj).__name__}.")
    return obj


def _on_device(model: nn.Module, device: str | torch.device) -> nn.Module:
    """``model`` itself when ``device`` is "auto" or already its device, else a copy moved there."""
    if device is None or device == "auto":
        return model
    target = resolve_device(device)
    current = model_device(model)
    if current.type == target.type and (target.index is None or current.index == target.index):
        return model
    return copy.deepcopy(model).to(target)


def evaluate(model: nn.Module, data: UnlearningData, *, reference: nn.Module | Evaluation | None = None,
             result: Any = None, seed: int = 0, device: str = "auto", batch_size: int = 512,
             metrics: list[str] | None = None) -> Evaluation:
    """Evaluate ``model`` on the deletion request ``data`` with every registered metric.

    Args:
        model: the (unlearned) classifier.
        data: the ``UnlearningData`` of the request (forget / retain / test splits).
        reference: the model to compare with, normally the retrain oracle, or its ``Evaluation``.
            With an Evaluation the per-metric gaps use its stored figures, but the output-level
            metrics (``forget_js@1``, ``forget_agreement@1``) need the module and are skipped.
        result: an ``UnlearnResult`` (or its ``to_dict()``) whose cost is attached.
        seed: seeds the membership-attack sampling.
        device: "auto" evaluates where the model is; any other device evaluates a copy moved there.
        batch_size: inference batch size.
        metrics: shell patterns of metric keys to compute (default: all whose ingredients are given);
            a superseded version (e.g. ``mia_efficacy@1``) only when named by its full key.

    Returns:
        An ``Evaluation`` whose ``metrics`` are keyed ``name@version``; percentages are in 0..100.
    """
    _check_module(model, "model")
    if not isinstance(data, UnlearningData):
        raise UnlearnkitError(f"data must be an UnlearningData (see unlearnkit.make_unlearning_data); "
                              f"got {type(data).__name__}.")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise UnlearnkitError(f"The 'batch_size' parameter of evaluate must be an int >= 1. Got {batch_size!r} instead.")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise UnlearnkitError(f"The 'seed' parameter of evaluate must be an int >= 0. Got {seed!r} instead.")
    reference_model = reference_evaluation = None
    if isinstance(reference, Evaluation):
        reference_evaluation = reference
        if reference.forget and reference.forget != data.request.to_dict():
            raise UnlearnkitError(f"The reference Evaluation is of another forget request ({reference.forget}); "
                                  f"this one is {data.request.to_dict()}.")
        if reference.num_classes is not None and reference.num_classes != data.num_classes:
            raise UnlearnkitError(f"The reference Evaluation has {reference.num_classes} classes but the data has "
                                  f"{data.num_classes}.")
    elif reference is not None:
        reference_model = _on_device(_check_module(reference, "reference"), device)
    model = _on_device(model, device)

    ctx = EvalContext(model, data, seed=seed, batch_size=batch_size, reference_model=reference_model,
                      reference_evaluation=reference_evaluation, result=result)
    keys = list_metrics()
    if metrics is not None:
        import fnmatch

        keys = [k for k in list_metrics(superseded=True)
                if k in metrics or (k in keys and any(fnmatch.fnmatch(k, p) or k.split("@")[0] == p for p in metrics))]
    values: dict[str, float] = {}
    for key in keys:
        spec = get_metric(key)
        if all(ctx.has(r) for r in spec.requires):
            values[key] = ctx.value(key)
    config = {"batch_size": batch_size, "device": str(model_device(model)),
              "reference": ("model" if reference_model is not None else
                            "evaluation" if reference_evaluation is not None else None),
              "result": result is not None}
    return Evaluation(metrics=values, seed=seed, forget=data.request.to_dict(), num_classes=data.num_classes,
                      config=config)
