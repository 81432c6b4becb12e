"""Accuracy metrics: UA, RA, TA and the forgotten classes' test accuracy.

Definitions of Jia et al., "Model Sparsity Can Simplify Machine Unlearning",
NeurIPS 2023: UA = 100 - accuracy on the forget set D_f, RA = accuracy on the
retain set D_r, TA = accuracy on the test set. For class forgetting TA uses the
test set without the forgotten classes, and the forgotten classes' test accuracy
is reported separately (``ta_forget_class@1``; NaN for sample forgetting).
"""

from __future__ import annotations

import torch

from .registry import MetricResult, register_metric


def top1(logits: torch.Tensor, labels: torch.Tensor) -> MetricResult:
    """Top-1 accuracy in percent with the per-sample correctness; NaN when there are no samples."""
    if len(labels) == 0:
        return MetricResult(float("nan"))
    correct = logits.argmax(1) == labels
    return MetricResult(100.0 * correct.double().mean().item(), per_sample=correct)


@register_metric("forget_acc", higher_is_better=False,
                 description="Top-1 accuracy on the forget set D_f (%).")
def forget_acc(ctx) -> MetricResult:
    return top1(*ctx.logits("forget"))


@register_metric("ua", higher_is_better=True, display="UA",
                 description="Unlearning accuracy: 100 - forget_acc (%).")
def unlearning_accuracy(ctx) -> float:
    return 100.0 - ctx.value("forget_acc@1")


@register_metric("ra", higher_is_better=True, display="RA",
                 description="Retain accuracy: top-1 accuracy on the retain set D_r (%).")
def retain_accuracy(ctx) -> MetricResult:
    return top1(*ctx.logits("retain"))


@register_metric("ta", higher_is_better=True, display="TA",
                 description="Test accuracy; for class forgetting, on test samples of the retained classes (%).")
def test_accuracy(ctx) -> MetricResult:
    return top1(*ctx.logits("test"))


@register_metric("ta_forget_class", higher_is_better=False,
                 description="Test accuracy on the forgotten classes (%); NaN for sample forgetting.")
def forgotten_class_test_accuracy(ctx) -> MetricResult:
    return top1(*ctx.logits("test_forget"))
