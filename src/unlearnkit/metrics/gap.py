"""Distance to a reference model, normally the retrain oracle.

Per-metric gaps ``|m(theta_u) - m(theta_ref)|`` and Avg.Gap, their mean over UA,
RA, TA and MIA-Efficacy (Jia et al., "Model Sparsity Can Simplify Machine
Unlearning", NeurIPS 2023). Output-level distance on the forget set (ours): the
mean Jensen-Shannon divergence, in bits (log base 2, so each term is in [0, 1]),
between the two models' predicted distributions, and the % of forget samples on
which their argmax agrees. Those two need the reference module itself.
"""

from __future__ import annotations

import numpy as np
import torch

from .registry import MetricResult, register_metric

GAP_OF = {"gap_ua": "ua@1", "gap_ra": "ra@1", "gap_ta": "ta@1", "gap_mia_efficacy": "mia_efficacy@2"}
# Superseded versions, kept so stored records keep their definition (computed only on request).
GAP_OF_V1 = {**GAP_OF, "gap_mia_efficacy": "mia_efficacy@1"}


def js_divergence(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Per-row Jensen-Shannon divergence in bits of two (N, K) probability tensors; 0 log 0 = 0."""
    p, q = p.double(), q.double()
    m = 0.5 * (p + q)

    def kl(a, b):  # sum a log2(a / b) over rows, with 0 log 0 = 0; b > 0 wherever a > 0
        return (torch.xlogy(a, a) - torch.xlogy(a, b)).sum(1) / np.log(2.0)

    return (0.5 * kl(p, m) + 0.5 * kl(q, m)).clamp_min(0.0)


def _gap(key: str):
    def fn(ctx) -> float:
        return abs(ctx.value(key) - ctx.reference_value(key))

    fn.__name__ = f"gap_{key.split('@')[0]}"
    return fn


def _version(key: str) -> int:
    return int(key.split("@")[1])


def _gap_keys(gaps: dict[str, str]) -> list[str]:
    return [f"{name}@{_version(key)}" for name, key in gaps.items()]


for _name, _key in GAP_OF.items():
    register_metric(_name, _version(_key), higher_is_better=False, requires=("reference",),
                    description=f"|{_key} - {_key} of the reference| (percentage points).")(_gap(_key))
register_metric("gap_mia_efficacy", 1, higher_is_better=False, requires=("reference",),
                superseded_by="gap_mia_efficacy@2",
                description="Superseded by gap_mia_efficacy@2: |mia_efficacy@1 - mia_efficacy@1 of the reference|.",
                )(_gap("mia_efficacy@1"))


@register_metric("avg_gap", 2, higher_is_better=False, requires=("reference",), display="Avg.Gap",
                 description="Mean of gap_ua, gap_ra, gap_ta and gap_mia_efficacy (percentage points).")
def avg_gap(ctx) -> float:
    return float(np.mean([ctx.value(k) for k in _gap_keys(GAP_OF)]))


@register_metric("avg_gap", 1, higher_is_better=False, requires=("reference",), display="Avg.Gap",
                 superseded_by="avg_gap@2",
                 description="Superseded by avg_gap@2: its MIA gap uses mia_efficacy@1.")
def avg_gap_v1(ctx) -> float:
    return float(np.mean([ctx.value(k) for k in _gap_keys(GAP_OF_V1)]))


@register_metric("forget_js", higher_is_better=False, requires=("reference_model",), unit="bits",
                 description="Mean Jensen-Shannon divergence (bits) of predictions vs the reference on D_f.")
def forget_js(ctx) -> MetricResult:
    per_sample = js_divergence(ctx.probs("forget"), ctx.reference_context().probs("forget"))
    return MetricResult(float(per_sample.mean()), per_sample=per_sample)


@register_metric("forget_agreement", higher_is_better=True, requires=("reference_model",),
                 description="% of forget samples where the argmax equals the reference's.")
def forget_agreement(ctx) -> MetricResult:
    same = ctx.logits("forget")[0].argmax(1) == ctx.reference_context().logits("forget")[0].argmax(1)
    return MetricResult(100.0 * same.double().mean().item(), per_sample=same)
