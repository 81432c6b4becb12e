"""MIA-Efficacy for class forgetting: non-members from the test set without the forgotten classes.

The reference (Unlearn-Sparse / Unlearn-Saliency main_forget.py) removes the forgotten class
from the test set before the SVC attack. ``mia_efficacy@2`` does so; ``mia_efficacy@1`` (whole
test set) stays readable and computable on request only.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn
from sklearn.svm import SVC

import unlearnkit as uk
from unlearnkit.data.datasets import ArrayDataset
from unlearnkit.metrics import Evaluation, evaluate, get_metric, list_metrics
from unlearnkit.metrics import mia


class LogitsAreInputs(nn.Module):
    """logits = x: each sample's true-label confidence is set by hand in its input."""

    def __init__(self):
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(1), requires_grad=False)

    def forward(self, x):
        return x.flatten(1)


def _logits_for(labels, confidence, num_classes=3):
    """Logits whose softmax gives ``confidence`` to the label and splits the rest evenly."""
    rest = (1.0 - confidence) / (num_classes - 1)
    logits = torch.full((len(labels), num_classes), float(np.log(rest)))
    logits[torch.arange(len(labels)), labels] = float(np.log(confidence))
    return logits


def _dataset(groups):
    xs, ys = [], []
    for label, count, confidence in groups:
        y = torch.full((count,), label, dtype=torch.long)
        xs.append(_logits_for(y, confidence))
        ys.append(y)
    return ArrayDataset(torch.cat(xs), torch.cat(ys))


@pytest.fixture
def hand_built():
    """Class 2 forgotten. Members (retain) conf 0.99; retained-class test samples 0.95; forgotten-class test
    samples 0.05; the forget set 0.9 (partly forgotten)."""
    train = _dataset([(0, 30, 0.99), (1, 30, 0.99), (2, 20, 0.9)])
    test = _dataset([(0, 15, 0.95), (1, 15, 0.95), (2, 30, 0.05)])
    return uk.make_unlearning_data(train, test, "class:2")


def test_class_forgetting_nonmembers_exclude_the_forgotten_class(hand_built, monkeypatch):
    seen = []
    real = mia.svc_attack
    monkeypatch.setattr(mia, "svc_attack", lambda m, n, t: seen.append((m, n, t)) or real(m, n, t))
    evaluate(LogitsAreInputs(), hand_built, metrics=["mia_efficacy@2"])
    members, nonmembers, targets = seen[0]
    # n = min(|D_r| = 60, |D_test^r| = 30) = 30; every non-member is a retained-class test sample (conf 0.5)
    assert len(members) == len(nonmembers) == 30
    np.testing.assert_allclose(members, 0.99)
    np.testing.assert_allclose(nonmembers, 0.95)  # the old definition mixes in the 0.05 of class 2
    np.testing.assert_allclose(targets, 0.9)


def test_class_forgetting_figure_by_hand(hand_built):
    """Direct sklearn on the hand-built features, both definitions; they differ, so the test pins @2."""
    def by_hand(nonmember_confidences):
        members = np.full(len(nonmember_confidences), 0.99)
        clf = SVC(kernel="rbf", C=3, gamma="auto").fit(
            np.r_[members, nonmember_confidences][:, None], np.r_[np.ones(len(members)), np.zeros(len(members))])
        return 100.0 * float(np.mean(clf.predict(np.full((20, 1), 0.9)) == 0))

    reference = by_hand(np.full(30, 0.95))  # 100: 0.9 lies below every retained-class test sample
    old = by_hand(np.r_[np.full(30, 0.95), np.full(30, 0.05)])  # 0: the 0.05s move the boundary
    assert (reference, old) == (100.0, 0.0)
    ev = evaluate(LogitsAreInputs(), hand_built, metrics=["mia_efficacy@2", "mia_efficacy@1"])
    assert ev.metrics["mia_efficacy@2"] == pytest.approx(reference)
    assert ev.metrics["mia_efficacy@1"] == pytest.approx(old)


def test_sample_forgetting_is_unchanged(digits):
    data = uk.make_unlearning_data(digits.train, digits.test, "random:0.1", seed=0)
    torch.manual_seed(0)
    ev = evaluate(nn.Sequential(nn.Flatten(), nn.Linear(64, 10)), data, metrics=["mia_efficacy@2", "mia_efficacy@1"])
    assert ev.metrics["mia_efficacy@2"] == ev.metrics["mia_efficacy@1"]


def test_superseded_versions_only_on_request(hand_built):
    assert "mia_efficacy@1" not in list_metrics() and "avg_gap@1" not in list_metrics()
    assert {"mia_efficacy@1", "gap_mia_efficacy@1", "avg_gap@1"} <= set(list_metrics(superseded=True))
    assert get_metric("mia_efficacy").key == "mia_efficacy@2" and get_metric("avg_gap").key == "avg_gap@2"
    ev = evaluate(LogitsAreInputs(), hand_built, metrics=["mia*"])
    assert "mia_efficacy@2" in ev.metrics and "mia_efficacy@1" not in ev.metrics
    gaps = evaluate(LogitsAreInputs(), hand_built, reference=LogitsAreInputs(), metrics=["avg_gap@1", "avg_gap"])
    assert gaps.metrics == {"avg_gap@2": 0.0, "avg_gap@1": 0.0}


def test_old_records_stay_readable():
    record = {"schema_version": 1, "metrics": {"ua@1": 90.0, "mia_efficacy@1": 92.5, "avg_gap@1": 3.0}}
    ev = Evaluation.from_dict(record)
    assert ev["mia_efficacy"] == 92.5 and ev["avg_gap"] == 3.0  # the newest version present
    assert ev.summary() == {"UA": 90.0, "MIA-Efficacy": 92.5, "Avg.Gap": 3.0}
    assert "Superseded by mia_efficacy@2" in get_metric("mia_efficacy@1").description
    ev.table(definitions=True)  # renders, with the old definitions
    new = Evaluation.from_dict({"metrics": {"mia_efficacy@1": 92.5, "mia_efficacy@2": 70.9}})
    assert new["mia_efficacy"] == 70.9 and new.summary()["MIA-Efficacy"] == 70.9
