"""The membership figures against direct scikit-learn / by-hand computations on the same features."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.svm import SVC

from unlearnkit.data import iterate_batches
from unlearnkit.metrics import evaluate
from metric_helpers import CentroidModel


@pytest.fixture(scope="module")
def centroid(digits):
    """A nearest-class-mean classifier (~90% on digits, continuous confidences, no training)."""
    return CentroidModel(digits.train, temperature=5.0)


def _direct_confidence_and_loss(model, dataset):
    """Softmax confidence in the true label and CE loss, by a plain forward loop (not predict_logits)."""
    model.eval()
    conf, loss = [], []
    with torch.no_grad():
        for x, y in iterate_batches(dataset, 100):
            logits = model(x).double()
            conf.append(torch.softmax(logits, 1)[torch.arange(len(y)), y])
            loss.append(torch.nn.functional.cross_entropy(logits, y, reduction="none"))
    return torch.cat(conf).numpy(), torch.cat(loss).numpy()


@pytest.mark.parametrize("seed", [0, 7])
def test_svc_attack_matches_direct_sklearn(centroid, random10, seed):
    retain, _ = _direct_confidence_and_loss(centroid, random10.retain)
    test, _ = _direct_confidence_and_loss(centroid, random10.test)
    forget, _ = _direct_confidence_and_loss(centroid, random10.forget)
    # the documented sampling: n = min(|D_r|, |D_test|), members then non-members from one default_rng(seed)
    n = min(len(retain), len(test))
    rng = np.random.default_rng(seed)
    members, nonmembers = retain[rng.choice(len(retain), n, replace=False)], test[rng.choice(len(test), n, replace=False)]
    clf = SVC(kernel="rbf", C=3, gamma="auto").fit(np.r_[members, nonmembers][:, None], np.r_[np.ones(n), np.zeros(n)])
    expected = 100.0 * np.mean(clf.predict(forget[:, None]) == 0)
    got = evaluate(centroid, random10, seed=seed).metrics["mia_efficacy@2"]
    assert got == pytest.approx(expected, abs=1e-9)


def test_loss_auc_matches_pairwise_count(centroid, random10):
    _, forget = _direct_confidence_and_loss(centroid, random10.forget)
    _, test = _direct_confidence_and_loss(centroid, random10.test)
    # P(loss_forget < loss_test) + 1/2 P(equal), over all pairs
    less = (forget[:, None] < test[None, :]).mean()
    ties = np.isclose(forget[:, None], test[None, :], rtol=0, atol=1e-12).mean()
    expected = 100.0 * (less + 0.5 * ties)
    got = evaluate(centroid, random10).metrics["mia_loss_auc@1"]
    assert got == pytest.approx(expected, abs=1e-6)


def test_class_forgetting_loss_auc_uses_the_forgotten_class_test_samples(centroid, class3):
    _, forget = _direct_confidence_and_loss(centroid, class3.forget)
    _, heldout = _direct_confidence_and_loss(centroid, class3.test_forget)
    expected = 100.0 * ((forget[:, None] < heldout[None, :]).mean() + 0.5 * (forget[:, None] == heldout[None, :]).mean())
    assert evaluate(centroid, class3).metrics["mia_loss_auc@1"] == pytest.approx(expected, abs=1e-6)
