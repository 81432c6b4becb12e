"""Per-example forgetting quality in the style of the NeurIPS 2023 unlearning competition.

Triantafillou et al., "Are we making progress in unlearning? Findings from the first
NeurIPS unlearning competition" (arXiv 2406.09073). For each forget example we hold one
statistic per model (the logit-scaled confidence of the true class) from K unlearned
and K retrained models. A family of threshold attacks tries to tell the two samples
apart; each attack's false-positive and false-negative rates bound an (epsilon, delta)
pair, the example's epsilon is the largest such bound, and the example scores
2**-n for the 0.5-wide epsilon bucket n it falls in. docs/metrics.md gives the formulas
and where this differs from the competition's code.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch

DELTA = 1e-5
EPSILON_CAP = 50.0
BUCKET_WIDTH = 0.5
DOUBLE_BUFFER = 2.0  # the competition's slack on the double thresholds' width and position
PEAKY_RATIO = 0.01  # a sample whose spread is under 1% of the other's: the attack is trivially strong
CONFIDENCE_CLIP = 45 * math.log(10)  # log(1e-45): the competition adds 1e-45 inside both logs


def logit_scaled_confidence(logits: torch.Tensor | np.ndarray, labels: torch.Tensor | np.ndarray) -> np.ndarray:
    """log(p / (1 - p)) of the true class per row, computed from logits without underflow.

    log p_y - log(1 - p_y) = z_y - logsumexp(z_j, j != y); clipped to +-103.6 like the
    competition's ``log(p + 1e-45)`` so that a masked logit gives a finite value.
    """
    z = torch.as_tensor(logits, dtype=torch.float64)
    y = torch.as_tensor(labels, dtype=torch.long).reshape(-1, 1)
    true = z.gather(1, y).squeeze(1)
    others = z.scatter(1, y, float("-inf"))
    conf = true - torch.logsumexp(others, dim=1)
    return conf.clamp(-CONFIDENCE_CLIP, CONFIDENCE_CLIP).numpy()


def epsilon_from_rates(fpr, fnr, delta: float = DELTA) -> float:
    """Largest epsilon over attacks with the competition's handling of zero rates.

    Per attack: FPR = FNR = 0 (perfect separation) gives infinity; exactly one rate zero is
    discarded (too few samples to trust it); otherwise
    eps = max(log((1 - delta - FPR) / FNR), log((1 - delta - FNR) / FPR)), floored at 0.
    No surviving attack gives 0 (the competition's code fails there). Capped at ``EPSILON_CAP``.
    """
    fpr = np.asarray(fpr, dtype=np.float64).ravel()
    fnr = np.asarray(fnr, dtype=np.float64).ravel()
    if fpr.shape != fnr.shape:
        raise ValueError(f"fpr and fnr must have the same length; got {fpr.size} and {fnr.size}.")
    if np.any((fpr == 0) & (fnr == 0)):
        return EPSILON_CAP
    keep = (fpr > 0) & (fnr > 0)
    if not keep.any():
        return 0.0
    fpr, fnr = fpr[keep], fnr[keep]
    with np.errstate(divide="ignore", invalid="ignore"):
        a = np.log(1.0 - delta - fpr) - np.log(fnr)
        b = np.log(1.0 - delta - fnr) - np.log(fpr)
    eps = np.fmax(a, b)  # fmax ignores a NaN from log of a negative number
    eps = eps[~np.isnan(eps)]
    if eps.size == 0:
        return 0.0
    return float(np.clip(eps.max(), 0.0, EPSILON_CAP))


def _inside(values: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """Fraction of ``values`` in [low_i, high_i] for each interval i."""
    return ((values[None, :] >= low[:, None]) & (values[None, :] <= high[:, None])).mean(1)


def _interval_reachable(values: np.ndarray, lo: np.ndarray, hi: np.ndarray, peaky: np.ndarray,
                        spread: float) -> np.ndarray:
    """Whether the competition's double thresholds contain exactly values[lo..hi].

    Its intervals [l, r] have width w within ``DOUBLE_BUFFER`` of the smaller spread s and a
    right end r in [min(peaky) + s - buffer, max(peaky) + buffer]. An interval holds exactly
    values[lo..hi] when prev < l <= a and b <= r < next (a, b the end values, prev and next
    their neighbours); this solves those inequalities for r, on a continuum instead of the
    competition's grid of 100 thresholds per unit.
    """
    a, b = values[lo], values[hi]
    prev = np.concatenate([[-np.inf], values])[lo]
    nxt = np.concatenate([values, [np.inf]])[hi + 1]
    r_low = np.maximum(b, peaky.min() + spread - DOUBLE_BUFFER)
    r_high = np.minimum(peaky.max() + DOUBLE_BUFFER, a + spread + DOUBLE_BUFFER)
    l_bound = prev + spread - DOUBLE_BUFFER  # r - w > prev with w <= s + buffer ... and w >= s - buffer
    return (r_low <= r_high) & (r_low < nxt) & (l_bound < r_high) & (np.maximum(r_low, l_bound) < nxt)


def attack_rates(positive: np.ndarray, negative: np.ndarray, attacks: str = "competition"
                 ) -> tuple[np.ndarray, np.ndarray]:
    """(FPR, FNR) of every single- and double-threshold attack on one example.

    ``positive`` is the sample with the larger median. Single thresholds t predict
    "positive" for c >= t; double thresholds [l, r] predict the sample with the smaller
    spread (the peakier one) for l <= c <= r. Only the sample values matter as cut points,
    so we enumerate intervals between them: ``attacks="competition"`` keeps the intervals
    the competition's width and position limits can reach, ``"all"`` keeps every one (a
    stronger attacker).
    """
    values = np.unique(np.concatenate([positive, negative]))
    cuts = np.append(values, np.inf)
    tpr = (positive[None, :] >= cuts[:, None]).mean(1)
    fpr = (negative[None, :] >= cuts[:, None]).mean(1)
    fprs, fnrs = [fpr], [1.0 - tpr]
    peaky, other = (positive, negative) if np.ptp(positive) <= np.ptp(negative) else (negative, positive)
    lo, hi = np.triu_indices(len(values))
    if attacks == "competition":
        keep = _interval_reachable(values, lo, hi, peaky, float(np.ptp(peaky)))
        lo, hi = lo[keep], hi[keep]
    fprs.append(_inside(other, values[lo], values[hi]))
    fnrs.append(1.0 - _inside(peaky, values[lo], values[hi]))
    return np.concatenate(fprs), np.concatenate(fnrs)


def example_epsilon(unlearned: np.ndarray, retrained: np.ndarray, delta: float = DELTA,
                    attacks: str = "competition") -> float:
    """Epsilon of one forget example from its statistic under K unlearned and K retrained models."""
    unlearned = np.asarray(unlearned, dtype=np.float64).ravel()
    retrained = np.asarray(retrained, dtype=np.float64).ravel()
    spreads = sorted([np.ptp(unlearned), np.ptp(retrained)])
    if spreads[1] > 0 and spreads[0] / spreads[1] < PEAKY_RATIO:
        return EPSILON_CAP
    retrain_positive = np.median(retrained) > np.median(unlearned)
    positive, negative = (retrained, unlearned) if retrain_positive else (unlearned, retrained)
    fpr, fnr = attack_rates(positive, negative, attacks)
    return epsilon_from_rates(fpr, fnr, delta)


def per_example_epsilons(unlearned: np.ndarray, retrained: np.ndarray, delta: float = DELTA,
                         attacks: str = "competition") -> np.ndarray:
    """Epsilons of every example: ``unlearned`` and ``retrained`` are [models, examples]."""
    unlearned, retrained = np.asarray(unlearned), np.asarray(retrained)
    if unlearned.ndim != 2 or retrained.ndim != 2 or unlearned.shape[1] != retrained.shape[1]:
        raise ValueError(f"expected [models, examples] arrays with the same examples; got {unlearned.shape} "
                         f"and {retrained.shape}.")
    return np.array([example_epsilon(unlearned[:, i], retrained[:, i], delta, attacks) for i in range(unlearned.shape[1])])


def max_scored_epsilon(num_models: int) -> float:
    """Epsilons at or above ceil(log(K - 1)) score 0: K samples cannot resolve more (rates >= 1/K)."""
    return float(math.ceil(math.log(num_models - 1))) if num_models > 2 else 0.0


def bucket_scores(epsilons: np.ndarray, num_models: int) -> np.ndarray:
    """2**-n for the bucket n = floor(eps / 0.5) an epsilon falls in; 0 at or beyond the last bucket."""
    eps = np.asarray(epsilons, dtype=np.float64)
    buckets = int(round(max_scored_epsilon(num_models) / BUCKET_WIDTH))
    n = np.floor(eps / BUCKET_WIDTH)
    return np.where(n < buckets, 2.0 ** -n, 0.0)


def forgetting_quality(unlearned: np.ndarray, retrained: np.ndarray, delta: float = DELTA,
                       attacks: str = "competition") -> dict:
    """Mean bucketed score over the forget set, with the per-example epsilons and scores."""
    eps = per_example_epsilons(unlearned, retrained, delta, attacks)
    scores = bucket_scores(eps, np.asarray(unlearned).shape[0])
    return {"forgetting_quality": float(scores.mean()) if scores.size else float("nan"),
            "epsilons": eps, "scores": scores}


@functools.lru_cache(maxsize=32)
def null_forgetting_quality(num_models: int, num_examples: int = 2000, seed: int = 0,
                            attacks: str = "competition") -> float:
    """The score of two samples from one distribution (a perfect unlearner) at this K.

    With finitely many models the best of many attacks finds some separation by chance,
    so the attainable maximum is below 1; the report shows this ceiling beside the score.
    """
    rng = np.random.default_rng(seed)
    draws = rng.standard_normal((2, num_models, num_examples))
    return forgetting_quality(draws[0], draws[1], attacks=attacks)["forgetting_quality"]
