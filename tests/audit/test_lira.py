"""U-LiRA on synthetic statistics: 50% for one distribution, near 100% for separated ones."""

from __future__ import annotations

import numpy as np
import pytest

from unlearnkit.audit.lira import roc_curve, tpr_at_fpr, ulira


def test_same_distribution_is_chance():
    rng = np.random.default_rng(0)
    result = ulira(rng.standard_normal((8, 400)), rng.standard_normal((8, 400)))
    assert result["accuracy"] == pytest.approx(50.0, abs=3.0)
    assert result["auc"] == pytest.approx(0.5, abs=0.04)


def test_per_example_gaussians_catch_a_shift_a_population_threshold_would_miss():
    rng = np.random.default_rng(1)
    centre = rng.normal(0, 5, 400)  # every example has its own level; the shift is small against the spread
    unlearned = centre + 1.5 + 0.3 * rng.standard_normal((8, 400))
    retrained = centre + 0.3 * rng.standard_normal((8, 400))
    result = ulira(unlearned, retrained)
    assert result["accuracy"] > 95.0 and result["tpr_at_0.01_fpr"] > 50.0


def test_roc_and_tpr_at_fpr():
    fpr, tpr = roc_curve(np.array([3.0, 2.0, 0.5]), np.array([1.0, 0.0]))
    # scores in order: 3 (pos), 2 (pos), 1 (neg), 0.5 (pos), 0 (neg)
    assert fpr.tolist() == [0.0, 0.0, 0.0, 0.5, 0.5, 1.0]
    assert tpr == pytest.approx([0.0, 1 / 3, 2 / 3, 2 / 3, 1.0, 1.0])
    assert tpr_at_fpr(fpr, tpr, 0.0) == pytest.approx(2 / 3)


def test_too_few_models_is_an_error():
    with pytest.raises(ValueError, match="K >= 3"):
        ulira(np.zeros((2, 5)), np.zeros((2, 5)))
