"""U-LiRA: a per-example likelihood-ratio attack on unlearning (Hayes et al., arXiv 2403.01218).

Shadow models "in" saw the example and then unlearned it (our K unlearned models);
shadow models "out" never saw it (our K retrained models). For every target model and
forget example, Gaussians fitted to the statistic under the other in- and out-models give
a log-likelihood ratio; the attack says "unlearned" when it is positive. Target i is
judged with fits that leave out both unlearned model i and retrained model i, so the two
fits always have K - 1 models each and a perfect unlearner scores 50% in expectation.
"""

from __future__ import annotations

import numpy as np

STD_FLOOR = 1e-3  # a constant statistic (e.g. a masked logit) still gets a usable Gaussian
FPR_LEVELS = (0.01, 0.001)


def _log_normal(x: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    return -0.5 * ((x - mean) / std) ** 2 - np.log(std)


def _fit(sample: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-example mean and std of [models, examples]."""
    return sample.mean(0), np.maximum(sample.std(0, ddof=1), STD_FLOOR)


def lira_scores(unlearned: np.ndarray, retrained: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Log-likelihood ratios (in vs out) of unlearned and retrained targets, each [K, examples]."""
    unlearned, retrained = np.asarray(unlearned, np.float64), np.asarray(retrained, np.float64)
    k = unlearned.shape[0]
    if k < 3 or retrained.shape != unlearned.shape:
        raise ValueError(f"U-LiRA needs two [K, examples] arrays with K >= 3; got {unlearned.shape} and "
                         f"{retrained.shape}.")
    scores_in, scores_out = np.empty_like(unlearned), np.empty_like(retrained)
    for i in range(k):
        rest = np.arange(k) != i
        mean_in, std_in = _fit(unlearned[rest])
        mean_out, std_out = _fit(retrained[rest])
        for target, scores in ((unlearned[i], scores_in), (retrained[i], scores_out)):
            scores[i] = _log_normal(target, mean_in, std_in) - _log_normal(target, mean_out, std_out)
    return scores_in, scores_out


def roc_curve(positive: np.ndarray, negative: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(FPR, TPR) of "positive when score >= t" over every threshold, from (0, 0) to (1, 1)."""
    scores = np.concatenate([positive, negative])
    is_pos = np.concatenate([np.ones(positive.size, bool), np.zeros(negative.size, bool)])
    order = np.argsort(-scores, kind="stable")
    scores, is_pos = scores[order], is_pos[order]
    last_of_tie = np.r_[scores[1:] != scores[:-1], True]
    tpr = np.cumsum(is_pos)[last_of_tie] / max(positive.size, 1)
    fpr = np.cumsum(~is_pos)[last_of_tie] / max(negative.size, 1)
    return np.r_[0.0, fpr], np.r_[0.0, tpr]


def tpr_at_fpr(fpr: np.ndarray, tpr: np.ndarray, level: float) -> float:
    """Largest TPR among thresholds whose FPR is at most ``level``."""
    ok = fpr <= level + 1e-12
    return float(tpr[ok].max()) if ok.any() else 0.0


def ulira(unlearned: np.ndarray, retrained: np.ndarray) -> dict:
    """Attack accuracy (decision at log-ratio 0; ties count half), AUC, TPR at 1% and 0.1% FPR, ROC."""
    scores_in, scores_out = lira_scores(unlearned, retrained)
    pos, neg = scores_in.ravel(), scores_out.ravel()
    accuracy = 0.5 * (np.mean(pos > 0) + 0.5 * np.mean(pos == 0)) + 0.5 * (np.mean(neg < 0) + 0.5 * np.mean(neg == 0))
    fpr, tpr = roc_curve(pos, neg)
    out = {"accuracy": 100.0 * float(accuracy), "auc": float(np.trapezoid(tpr, fpr)),
           "per_example_accuracy": (50.0 * ((scores_in > 0).mean(0) + (scores_out < 0).mean(0))).tolist(),
           "roc": {"fpr": fpr.tolist(), "tpr": tpr.tolist()}, "num_decisions": int(pos.size + neg.size)}
    for level in FPR_LEVELS:
        out[f"tpr_at_{level:g}_fpr"] = 100.0 * tpr_at_fpr(fpr, tpr, level)
    return out
