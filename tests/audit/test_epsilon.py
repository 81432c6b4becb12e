"""Per-example epsilon, bucketed scores and the logit-scaled confidence, against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from unlearnkit.audit.epsilon import (EPSILON_CAP, attack_rates, bucket_scores, epsilon_from_rates, example_epsilon,
                                      forgetting_quality, logit_scaled_confidence, max_scored_epsilon,
                                      null_forgetting_quality)

DELTA = 1e-5


def test_epsilon_from_fixed_rates_matches_hand_computation():
    # FPR 0.1, FNR 0.2: max(log(0.9 - d) - log 0.2, log(0.8 - d) - log 0.1) = log(8) (second term)
    assert epsilon_from_rates([0.1], [0.2], DELTA) == pytest.approx(math.log((0.8 - DELTA) / 0.1))
    # the largest over attacks: (0.25, 0.25) gives log 3, (0.5, 0.5) gives 0
    assert epsilon_from_rates([0.5, 0.25], [0.5, 0.25], DELTA) == pytest.approx(math.log((0.75 - DELTA) / 0.25))
    # worse than chance (FPR + FNR > 1) is floored at 0
    assert epsilon_from_rates([0.7], [0.6], DELTA) == 0.0


def test_zero_rates_follow_the_competition():
    assert epsilon_from_rates([0.0, 0.3], [0.0, 0.3]) == EPSILON_CAP  # perfect separation
    # one rate zero: discarded (it would be infinite), the other attack decides
    assert epsilon_from_rates([0.0, 0.25], [0.5, 0.25], DELTA) == pytest.approx(math.log((0.75 - DELTA) / 0.25))
    assert epsilon_from_rates([0.0], [0.4]) == 0.0  # nothing survives


def test_bucket_scores_halve_per_half_unit_and_stop_at_log_k_minus_1():
    assert max_scored_epsilon(8) == 2.0  # ceil(log 7)
    scores = bucket_scores(np.array([0.0, 0.49, 0.5, 1.2, 1.99, 2.0, 50.0]), num_models=8)
    assert scores.tolist() == [1.0, 1.0, 0.5, 0.25, 0.125, 0.0, 0.0]
    assert bucket_scores(np.array([0.0]), num_models=2).tolist() == [0.0]  # K=2 cannot score


def test_separated_samples_get_the_cap_and_identical_ones_zero():
    rng = np.random.default_rng(0)
    low, high = rng.normal(-5, 1, 8), rng.normal(5, 1, 8)
    assert example_epsilon(high, low) == EPSILON_CAP
    assert example_epsilon(low, low.copy()) == 0.0
    # a constant sample against a spread one (a masked logit): the competition's peaky rule
    assert example_epsilon(np.full(8, -3.0) + 1e-4 * np.arange(8), low) == EPSILON_CAP


def test_single_threshold_rates_on_a_tiny_case():
    fpr, fnr = attack_rates(np.array([1.0, 2.0, 3.0]), np.array([0.0, 1.5, 2.5]))
    # threshold 2.0 (c >= 2 is "positive"): TPR 2/3, FPR 1/3
    single = set(zip(np.round(fpr[:7], 4), np.round(fnr[:7], 4)))
    assert (round(1 / 3, 4), round(1 / 3, 4)) in single


def test_forgetting_quality_orders_indistinguishable_above_distinguishable():
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((2, 8, 300))
    same = forgetting_quality(a, b)["forgetting_quality"]
    shifted = forgetting_quality(a + 3.0, b)["forgetting_quality"]
    assert same == pytest.approx(null_forgetting_quality(8, 300, seed=1), abs=0.05)
    assert shifted < same / 2


def test_logit_scaled_confidence_is_log_odds_and_survives_masked_logits():
    logits = np.array([[2.0, 1.0, 0.0], [0.0, 0.0, 0.0], [1e6, 0.0, 0.0]])
    labels = np.array([0, 2, 1])
    p = np.exp(logits[:2]) / np.exp(logits[:2]).sum(1, keepdims=True)
    expected = np.log(p[[0, 1], labels[:2]] / (1 - p[[0, 1], labels[:2]]))
    conf = logit_scaled_confidence(logits, labels)
    assert conf[:2] == pytest.approx(expected)
    assert conf[2] == pytest.approx(-45 * math.log(10))  # clipped like the competition's log(p + 1e-45)


def _grid_double_threshold_rates(pos, neg, per_unit=100, buffer=2.0):
    """The competition's double-threshold grid, written out from its description (slow, for checking)."""
    peaky, other = (pos, neg) if np.ptp(pos) <= np.ptp(neg) else (neg, pos)
    width = min(np.ptp(pos), np.ptp(neg))
    low, high = peaky.min() + width - buffer, peaky.max() + buffer
    rates = set()
    for r in np.linspace(low, high, int(np.ceil((high - low) * per_unit))):
        lefts = np.linspace(r - width - buffer, r - width + buffer, int(2 * buffer * per_unit))
        inside = lambda v: ((v[None, :] >= lefts[:, None]) & (v[None, :] <= r)).mean(1)  # noqa: E731
        rates |= set(zip(np.round(inside(other), 6), np.round(1 - inside(peaky), 6)))
    return rates


def test_competition_family_reaches_the_same_attacks_as_its_grid():
    rng = np.random.default_rng(0)
    for _ in range(4):
        pos, neg = rng.normal(0, rng.uniform(0.3, 3), 4), rng.normal(rng.uniform(-2, 2), rng.uniform(0.3, 3), 4)
        fpr, fnr = attack_rates(pos, neg, "competition")
        singles = len(np.unique(np.concatenate([pos, neg]))) + 1
        ours = set(zip(np.round(fpr[singles:], 6), np.round(fnr[singles:], 6)))
        grid = _grid_double_threshold_rates(pos, neg) - {(0.0, 1.0)}  # the empty interval: discarded anyway
        assert ours == grid
