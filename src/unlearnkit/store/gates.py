"""Acceptance gates: is the unlearned model good enough to replace the current one?

The forget gate accounts for the request's size. Forget accuracy measured on n ids moves in
steps of 100/n points, so comparing it as is with the test accuracy refuses small requests by
chance (10 ids forgotten as well as test data are all classified correctly with probability
TA^10, ~60% at TA = 95%). The gate therefore refuses only when the data shows, with confidence
``forget_confidence``, that forget accuracy exceeds TA + ``forget_margin``: the one-sided Wilson
score lower bound of forget accuracy must exceed that limit. ``forget_confidence=None`` compares
the point estimate (the gate before this bound). A 1-id request can never be refused by this gate:
one sample cannot show that a model still knows it.
"""

from __future__ import annotations

import math
from statistics import NormalDist
from typing import Any

OPTION = {"forget_acc": "forget_margin (store-init --forget-margin; --forget-confidence for the bound)",
          "retain_drop": "max_retain_drop (store-init --max-retain-drop)",
          "mia_efficacy": "min_mia_efficacy (store-init --min-mia-efficacy)"}


def wilson_lower(successes: int, n: int, confidence: float) -> float:
    """One-sided Wilson score lower bound (in %) of a proportion seen as ``successes`` of ``n``."""
    if n <= 0:
        return 0.0
    z = NormalDist().inv_cdf(confidence)
    p = successes / n
    centre = p + z * z / (2 * n)
    spread = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, 100.0 * (centre - spread) / (1 + z * z / n))


def forget_gate(forget_acc: float, n_forget: int, test_acc: float, margin: float,
                confidence: float | None) -> dict[str, Any]:
    limit = test_acc + margin
    if confidence is None:
        value, rule = forget_acc, "forget_acc <= TA + forget_margin"
    else:
        correct = round(forget_acc * n_forget / 100.0)
        value = wilson_lower(correct, n_forget, confidence)
        rule = f"{confidence:.0%} lower bound of forget_acc <= TA + forget_margin"
    gate = {"value": value, "limit": limit, "rule": rule, "passed": value <= limit, "forget_acc": forget_acc,
            "num_ids": int(n_forget), "confidence": confidence}
    if not gate["passed"]:
        shown = f"forget accuracy {forget_acc:.2f}% on {n_forget} ids"
        if confidence is not None:
            shown += f" ({confidence:.0%} lower bound {value:.2f}%)"
        gate["message"] = (f"gate forget_acc failed: {shown} > test accuracy {test_acc:.2f} + forget_margin "
                           f"{margin:g} = {limit:.2f}; change it with {OPTION['forget_acc']}")
    return gate


def retain_gate(ra_before: float, ra_after: float, max_drop: float) -> dict[str, Any]:
    drop = ra_before - ra_after
    gate = {"value": drop, "limit": max_drop, "rule": "RA before - RA after <= max_retain_drop",
            "passed": drop <= max_drop}
    if not gate["passed"]:
        gate["message"] = (f"gate retain_drop failed: retain accuracy fell {drop:.2f} points ({ra_before:.2f} -> "
                           f"{ra_after:.2f}) > max_retain_drop {max_drop:g}; change it with {OPTION['retain_drop']}")
    return gate


def mia_gate(efficacy: float, minimum: float) -> dict[str, Any]:
    gate = {"value": efficacy, "limit": minimum, "rule": "MIA-Efficacy >= min_mia_efficacy",
            "passed": efficacy >= minimum}
    if not gate["passed"]:
        gate["message"] = (f"gate mia_efficacy failed: MIA-Efficacy {efficacy:.2f}% < min_mia_efficacy "
                           f"{minimum:g}; change it with {OPTION['mia_efficacy']}")
    return gate


def check_gates(config, figures: dict, before: dict, n_forget: int) -> dict[str, Any]:
    """Every configured gate of ``config`` (a StoreConfig) on the new model's ``figures``."""
    checks: dict[str, Any] = {}
    if config.forget_margin is not None:
        checks["forget_acc"] = forget_gate(figures["forget_acc"], n_forget, figures["TA"], config.forget_margin,
                                           config.forget_confidence)
    if config.max_retain_drop is not None:
        checks["retain_drop"] = retain_gate(before["RA"], figures["RA"], config.max_retain_drop)
    if config.min_mia_efficacy is not None:
        checks["mia_efficacy"] = mia_gate(figures["MIA-Efficacy"], config.min_mia_efficacy)
    return checks
