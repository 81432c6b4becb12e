"""The audit of one deletion request of a model store (``request --audit``; docs/deletion-requests.md).

Two levels:

* ``relearn`` (no training): the relearning attack against the store's model before and after
  the request, on this request's new forget ids (a part to fine-tune on, the rest scored), with a
  retain-only control on the model after. No retrain oracle exists in a store, so the references
  are the model before (what "still known" looks like, and the level to reach) and the control.
* ``full`` (K originals and K oracles): also ``unlearnkit.audit`` of the chosen method and config
  on every id the store has forgotten after this request, from K freshly trained originals (the
  store's recipe), against K retrains without those ids: forgetting quality, U-LiRA, relearning.
  The originals are cached in the store's ``audit-cache/`` and reused by later requests; the
  oracles depend on the forgotten set, so each request trains K of them (and K unlearnings).
"""

from __future__ import annotations

import dataclasses
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch.nn as nn

from ..errors import UnlearnkitError
from .relearn import relearn_curve, steps_to_level
from .runner import AuditConfig, relearns_faster, split_for_relearning

AUDITS_DIR = "audits"  # STORE/audits/<request id>/ holds a full audit's files
AUDIT_CACHE_DIR = "audit-cache"  # STORE/audit-cache/ holds its originals and oracles
AUDIT_HELP = "relearn, full (K = the store's audit_k) or full:K with K >= 3"
_FULL_RE = re.compile(r"^full(?::(\d+))?$")


@dataclass(frozen=True)
class AuditSpec:
    """What ``request --audit`` asked for: ``mode`` relearn or full; ``k`` for full."""

    mode: str
    k: int | None = None


def parse_audit_spec(value: str | AuditSpec | None, store_k: int | None) -> AuditSpec | None:
    """``relearn``, ``full`` or ``full:K`` (None: no audit); anything else is a one-line error."""
    if value is None or isinstance(value, AuditSpec):
        return value
    text = str(value).strip().lower()
    if text == "relearn":
        return AuditSpec("relearn")
    match = _FULL_RE.match(text)
    if not match:
        raise UnlearnkitError(f"--audit {value!r} is not an audit level; allowed: {AUDIT_HELP}.")
    k = int(match.group(1)) if match.group(1) else store_k
    if k is None:
        raise UnlearnkitError("--audit full needs K (the number of originals and retrain oracles to train): "
                              "give full:K, or create the store with audit_k.")
    if k < 3:
        raise UnlearnkitError(f"--audit full:{k}: K must be at least 3; allowed: {AUDIT_HELP}.")
    return AuditSpec("full", k)


def check_full_audit_possible(info: dict) -> None:
    """A full audit retrains the store's model from its recipe; a store without one cannot."""
    if not info.get("recipe"):
        raise UnlearnkitError("--audit full needs the training recipe of the store's model, and its checkpoint "
                              "records none (not written by `unlearnkit train`); use --audit relearn.")


def _relearn_setting(name: str):
    return next(f.default for f in dataclasses.fields(AuditConfig) if f.name == name)


def relearn_audit(before: nn.Module, after: nn.Module, data, *, seed: int, device, after_is_retrain: bool) -> dict:
    """The relearning attack on the models before and after a request, with a retain-only control.

    ``data``: the request's UnlearningData (forget = its new ids). Every figure is accuracy in %
    on the held-out part of those ids; steps are SGD steps until the level is reached (None: not
    within ``steps``).
    """
    steps, lr, batch = (_relearn_setting(n) for n in ("relearn_steps", "relearn_lr", "relearn_batch_size"))
    relearn_set, heldout, retain_control = split_for_relearning(
        data, _relearn_setting("relearn_fraction"), seed, "this request's new ids")

    def curve(model: nn.Module, train_set) -> list[float]:
        return relearn_curve(model, train_set, heldout, steps=steps, lr=lr, batch_size=batch, seed=seed, device=device)

    before_curve = curve(before, relearn_set)
    forget_curve, retain_curve = curve(after, relearn_set), curve(after, retain_control)
    level = _relearn_setting("relearn_level") * before_curve[0]
    return {
        "mode": "relearn", "relearn_ids": len(relearn_set), "heldout_ids": len(heldout), "steps": steps, "lr": lr,
        "batch_size": batch, "level": level, "after_is_retrain": after_is_retrain,
        "before": {"heldout_acc": before_curve[0], "steps_to_level": steps_to_level(before_curve, level),
                   "curve": before_curve},
        "after": {"heldout_acc": forget_curve[0], "steps_to_level": steps_to_level(forget_curve, level),
                  "retain_control_steps_to_level": steps_to_level(retain_curve, level),
                  "excess_points": float(np.mean(forget_curve[1:]) - np.mean(retain_curve[1:])),
                  "curve": forget_curve, "retain_control_curve": retain_curve},
    }


def audit_dir(store_path: Path, request_id: str) -> Path:
    return Path(store_path) / AUDITS_DIR / request_id


def full_audit(store, forgotten_ids: np.ndarray, method: str, method_config: dict, k: int, request_id: str) -> dict:
    """``unlearnkit.audit`` of ``method`` (with ``method_config``) on ``forgotten_ids``; its summary figures.

    Writes STORE/audits/<request id>/ (forget_ids.txt, audit/audit.json, audit/report.md).
    """
    from ..store.files import atomic_write, file_sha256, ids_text
    from .runner import audit

    info = store.info
    out = audit_dir(store.path, request_id)
    ids_path = out / "forget_ids.txt"
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(ids_path, ids_text(forgotten_ids).encode())
    method_args = {k_: v for k_, v in method_config.items() if k_ != "method"}  # the receipt's config names it
    fields = dict(method_args=method_args, scenario=f"ids:{ids_path}", k=k, seed=store.config.seed,
                  dataset=info["dataset"]["name"], dataset_args=info["dataset"].get("args") or {},
                  data_root=store.data_root, model=info["model"]["model"],
                  model_kwargs=info["model"].get("model_args") or {},
                  recipe={k_: v for k_, v in info["recipe"].items() if k_ != "seed"}, device=store.config.device)
    result = audit(method, out / "audit", cache_dir=Path(store.path) / AUDIT_CACHE_DIR, **fields)
    return summarise_full_audit(result, store.path, len(forgotten_ids), file_sha256(out / "audit" / "audit.json"))


def summarise_full_audit(result, store_path: Path, num_ids: int, audit_sha256: str) -> dict:
    """The figures a receipt carries (the per-example ones stay in audit.json, whose sha256 it records)."""
    r = result.results
    fq, lira, rel = r["forgetting_quality"], r["ulira"], r["relearn"]
    return {
        "k": len(rel["unlearned"]["forget"]["steps"]), "forget_ids": num_ids,
        "forgetting_quality": fq["forgetting_quality"], "null_ceiling": fq["null_ceiling"],
        "original_forgetting_quality": fq["original"], "median_epsilon": fq["median_epsilon"],
        "ulira_accuracy": lira["accuracy"], "ulira_tpr_at_1%_fpr": lira["tpr_at_0.01_fpr"],
        "ulira_tpr_at_0.1%_fpr": lira["tpr_at_0.001_fpr"], "ra_ratio": r["utility"]["ra_ratio"],
        "ta_ratio": r["utility"]["ta_ratio"], "relearn_steps": rel["unlearned"]["forget"]["median_steps"],
        "retrain_relearn_steps": rel["retrain"]["forget"]["median_steps"], "relearns_faster": relearns_faster(r),
        "trained": r["trained"], "seconds": r["seconds"],
        "audit_json": str((result.out / "audit.json").relative_to(store_path)), "audit_sha256": audit_sha256,
    }


def remove_audit_dir(store_path: Path, request_id: str) -> None:
    """A request that was not applied leaves no audit behind."""
    shutil.rmtree(audit_dir(store_path, request_id), ignore_errors=True)
