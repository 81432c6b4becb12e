"""``StoreConfig``: what a store does with each request (methods, gates, retrain policy, clean-up)."""

from __future__ import annotations

from dataclasses import dataclass

from ..config import Config, InstanceOf, Interval, field
from ..config import Options
from ..errors import UnlearnkitError


@dataclass(kw_only=True)
class StoreConfig(Config):
    """What a store does with each request: methods, acceptance gates, retrain policy, clean-up."""

    methods: list = field(["finetune"], "Methods; the first is the default, the rest the fallback order.")
    method_configs: dict = field({}, "Per-method config overrides, e.g. {'finetune': {'epochs': 2}}.")
    fallback: bool = field(False, "When a method fails its gates (or errors), try the next one in `methods`.")
    forget_margin: float | None = field(2.0, "Gate: forget accuracy <= test accuracy + this (points); None: off.")
    forget_confidence: float | None = field(0.95, "Forget gate's confidence: refuse only when the Wilson lower "
                                                  "bound of forget accuracy exceeds the limit; None: compare the "
                                                  "measured accuracy itself.")
    max_retain_drop: float | None = field(5.0, "Gate: retain accuracy may drop at most this (points); None: off.")
    min_mia_efficacy: float | None = field(None, "Gate: MIA-Efficacy >= this (%); None: off.")
    retrain_after: int | None = field(None, "Serve a request by a full retrain once this many requests were "
                                            "unlearned since the last retrain; None: never.")
    max_drift: float | None = field(None, "Serve a request by a full retrain once retain accuracy dropped more "
                                          "than this (points) since the last retrain; None: never.")
    recalibrate_bn: bool | str = field("auto", "Re-estimate BatchNorm statistics on the retain data after "
                                               "unlearning ('auto': when the model has BatchNorm).")
    record_ids: bool = field(False, "Write the forget ids themselves into receipts (default: only their hash).")
    keep_old_models: bool = field(False, "Keep superseded model versions (they still hold forgotten data).")
    seed: int = field(0, "Seed of every request's method and evaluation.")
    device: str = field("auto", "cpu, cuda, cuda:N or auto.")
    lock_timeout: float = field(60.0, "Seconds a second process waits for the store's lock before failing.")
    audit_k: int | None = field(None, "K of `request --audit full`: originals and retrain oracles trained for the "
                                      "per-example audit (at least 3); None: the request gives it (full:K).")

    constraints = {
        "methods": [InstanceOf(list, "a non-empty list of method names")],
        "method_configs": [InstanceOf(dict, "a dict {method: {parameter: value}}")],
        "fallback": [bool],
        "forget_margin": [Interval(float, -100, 100), None],
        "forget_confidence": [Interval(float, 0.5, 1, closed="left"), None],
        "max_retain_drop": [Interval(float, 0, 100), None],
        "min_mia_efficacy": [Interval(float, 0, 100), None],
        "retrain_after": [Interval(int, 1, None), None],
        "max_drift": [Interval(float, 0, 100), None],
        "recalibrate_bn": [Options("auto"), bool],
        "record_ids": [bool],
        "keep_old_models": [bool],
        "seed": [Interval(int, 0, None)],
        "device": [str],
        "lock_timeout": [Interval(float, 0, None)],
        "audit_k": [Interval(int, 3, None), None],
    }

    def _check_consistency(self) -> None:
        from ..methods import make_config, method_spec

        if not self.methods:
            raise UnlearnkitError("The 'methods' parameter of StoreConfig must name at least one method.")
        for name in self.methods:
            method_spec(name)  # unknown name -> one-line error listing the registered ones
        for name, overrides in self.method_configs.items():
            method_spec(name)
            if not isinstance(overrides, dict):
                raise UnlearnkitError(f"method_configs[{name!r}] must be a dict of parameters; got {overrides!r}.")
            make_config(name, overrides)  # unknown or out-of-range parameters fail here, not mid-request
