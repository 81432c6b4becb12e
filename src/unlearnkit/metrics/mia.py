"""Membership-inference metrics on the forget set.

``mia_efficacy@2`` follows Jia et al., "Model Sparsity Can Simplify Machine
Unlearning", NeurIPS 2023 (their confidence-based SVC attack): a membership
classifier ``SVC(kernel="rbf", C=3, gamma="auto")`` is trained on one feature,
the model's softmax confidence in the true label, with members = a sample of the
retain set and non-members = the test set, in equal numbers; the figure is the
percentage of forget samples it predicts non-member (higher = more forgotten).
For class forgetting the non-members are the test set *without* the forgotten
classes, as in the reference code (Unlearn-Sparse and Unlearn-Saliency remove the
class from the test set before the attack).

``mia_efficacy@1`` (superseded, computed only on request) took the non-members
from the whole test set, also for class forgetting: the low-confidence test samples
of the forgotten classes then move the attack's boundary, so a partly forgotten
forget set is judged against another attack than the reference's. Both agree for
sample forgetting.

Sampling (ours, seeded): ``n = min(|D_r|, |non-members|)``; with
``rng = numpy.random.default_rng(seed)``, members are
``rng.choice(|D_r|, n, replace=False)`` and then non-members
``rng.choice(|non-members|, n, replace=False)`` (the reference takes the first
``n`` retain samples and the whole test set).

``mia_loss_auc@1`` is our threshold-free companion: the ROC AUC (x100) of the
per-sample cross-entropy loss separating forget samples (positives) from held-out
samples, scored by *negative* loss, i.e. ``P(loss_forget < loss_heldout)``
(ties count 1/2). 100 = every forget sample has a lower loss than every held-out
one (clearly remembered), 50 = indistinguishable from unseen data, which is what
the retrain oracle shows. Held-out = the test set for sample forgetting and the
test samples of the forgotten classes for class forgetting (the same
distribution as the forget set; NaN if there are none).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .registry import MetricResult, register_metric

SVC_PARAMS = {"kernel": "rbf", "C": 3.0, "gamma": "auto"}


def true_label_confidence(logits: torch.Tensor, labels: torch.Tensor) -> np.ndarray:
    """Softmax probability of the true label per sample (float64)."""
    probs = torch.softmax(logits.double(), dim=1)
    return probs.gather(1, labels.view(-1, 1)).view(-1).numpy()


def per_sample_loss(logits: torch.Tensor, labels: torch.Tensor) -> np.ndarray:
    return F.cross_entropy(logits.double(), labels, reduction="none").numpy()


def shadow_indices(n_members: int, n_nonmembers: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Equal-size member / non-member index samples (see the module docstring)."""
    n = min(n_members, n_nonmembers)
    rng = np.random.default_rng(seed)
    members = rng.choice(n_members, n, replace=False)
    nonmembers = rng.choice(n_nonmembers, n, replace=False)
    return members, nonmembers


def svc_attack(members: np.ndarray, nonmembers: np.ndarray, targets: np.ndarray) -> MetricResult:
    """Fit the SVC on member (1) vs non-member (0) features; % of ``targets`` predicted non-member."""
    from sklearn.svm import SVC

    x = np.concatenate([members, nonmembers]).reshape(len(members) + len(nonmembers), -1)
    y = np.concatenate([np.ones(len(members)), np.zeros(len(nonmembers))])
    clf = SVC(**SVC_PARAMS).fit(x, y)
    predicted_member = clf.predict(np.asarray(targets).reshape(len(targets), -1))
    nonmember = predicted_member == 0
    return MetricResult(100.0 * float(nonmember.mean()), per_sample=nonmember)


def loss_auc(positive_losses: np.ndarray, negative_losses: np.ndarray) -> float:
    """ROC AUC x100 of negative loss, positives vs negatives; NaN if either side is empty."""
    if len(positive_losses) == 0 or len(negative_losses) == 0:
        return float("nan")
    from sklearn.metrics import roc_auc_score

    y = np.concatenate([np.ones(len(positive_losses)), np.zeros(len(negative_losses))])
    score = -np.concatenate([positive_losses, negative_losses])
    return 100.0 * float(roc_auc_score(y, score))


def _mia_efficacy(ctx, nonmember_split: str) -> MetricResult:
    retain = true_label_confidence(*ctx.logits("retain"))
    nonmembers = true_label_confidence(*ctx.logits(nonmember_split))
    forget = true_label_confidence(*ctx.logits("forget"))
    m, n = shadow_indices(len(retain), len(nonmembers), ctx.seed)
    return svc_attack(retain[m], nonmembers[n], forget)


@register_metric("mia_efficacy", version=2, higher_is_better=True, display="MIA-Efficacy",
                 description="% of forget samples an SVC confidence attack (retain vs test without the "
                             "forgotten classes) calls non-member.")
def mia_efficacy(ctx) -> MetricResult:
    return _mia_efficacy(ctx, "test")


@register_metric("mia_efficacy", version=1, higher_is_better=True, display="MIA-Efficacy",
                 superseded_by="mia_efficacy@2",
                 description="Superseded by mia_efficacy@2: non-members from the whole test set, also the "
                             "forgotten classes.")
def mia_efficacy_whole_test(ctx) -> MetricResult:
    return _mia_efficacy(ctx, "test_all")


@register_metric("mia_loss_auc", higher_is_better=False,
                 description="ROC AUC x100 of -loss, forget (positive) vs held-out; 50 = looks unseen.")
def mia_loss_auc(ctx) -> float:
    forget = per_sample_loss(*ctx.logits("forget"))
    heldout = per_sample_loss(*ctx.logits("heldout"))
    return loss_auc(forget, heldout)
