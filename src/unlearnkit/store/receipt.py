"""``Receipt``, the record of one deletion request, and BatchNorm recalibration on the retain data."""

from __future__ import annotations

from dataclasses import dataclass
from dataclasses import field as dc_field
from typing import Any

import torch
import torch.nn as nn
from torch.utils.data import Dataset

from ..models.outputs import forward
from ..utils import to_jsonable

EXIT_REFUSED = 3  # CLI exit code of a request refused by its acceptance gates
_KNOWN = ("request_id", "time", "status", "forget", "method", "config", "model_before", "model_after", "version",
          "figures", "gates", "attempts", "cost", "versions")


@dataclass
class Receipt:
    """The record of one deletion request (one ledger line). ``status``: applied, refused or noop."""

    request_id: str
    time: str
    status: str
    forget: dict[str, Any]
    method: str | None
    config: dict[str, Any] = dc_field(default_factory=dict)
    model_before: str | None = None
    model_after: str | None = None
    version: str | None = None
    figures: dict[str, float] = dc_field(default_factory=dict)
    gates: dict[str, Any] = dc_field(default_factory=dict)
    attempts: list[dict] = dc_field(default_factory=list)
    cost: dict[str, Any] = dc_field(default_factory=dict)
    versions: dict[str, Any] = dc_field(default_factory=dict)
    extra: dict[str, Any] = dc_field(default_factory=dict)

    @property
    def applied(self) -> bool:
        return self.status == "applied"

    @property
    def exit_code(self) -> int:
        return EXIT_REFUSED if self.status == "refused" else 0

    def to_dict(self) -> dict[str, Any]:
        out = {"kind": "request", **{k: getattr(self, k) for k in _KNOWN}}
        out.update(self.extra)
        return to_jsonable(out)

    @classmethod
    def from_dict(cls, entry: dict) -> "Receipt":
        extra = {k: v for k, v in entry.items() if k not in _KNOWN and k not in ("kind", "checksum")}
        return cls(**{k: entry[k] for k in _KNOWN if k in entry}, extra=extra)


def has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, data: Dataset, *, batch_size: int = 256) -> int:
    """Reset every BatchNorm's running statistics and re-estimate them on ``data`` (in place).

    One pass in train mode without gradients or augmentation; the statistics are the
    cumulative average over the batches (``momentum=None``), so nothing of the previous
    buffers (e.g. forget-data statistics) remains. Returns the number of BatchNorm layers.
    """
    from ..data.loading import iterate_batches
    from ..utils import model_device

    layers = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not layers or len(data) == 0:
        return 0
    was_training = model.training
    momenta = [m.momentum for m in layers]
    for m in layers:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    try:
        for x, _ in iterate_batches(data, batch_size, device=model_device(model)):
            forward(model, x)
    finally:
        for m, mom in zip(layers, momenta):
            m.momentum = mom
        model.train(was_training)
    return len(layers)
