"""Auditing an unlearning method: per-example forgetting quality, U-LiRA, relearning attack."""

from .epsilon import bucket_scores, epsilon_from_rates, forgetting_quality, logit_scaled_confidence
from .lira import ulira
from .relearn import relearn_curve, steps_to_level
from .runner import AuditConfig, AuditResult, audit, relearns_faster

__all__ = ["AuditConfig", "AuditResult", "audit", "bucket_scores", "epsilon_from_rates", "forgetting_quality",
           "logit_scaled_confidence", "relearn_curve", "relearns_faster", "steps_to_level", "ulira"]
