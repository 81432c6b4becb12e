"""Acceptance gates: the forget gate's confidence bound on the request's size, and refusal messages."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from store_helpers import make_store

from unlearnkit.store import StoreConfig
from unlearnkit.store.gates import check_gates, forget_gate, wilson_lower


def test_wilson_lower_bound_known_values():
    assert wilson_lower(10, 10, 0.95) == pytest.approx(78.7, abs=0.1)  # 1.645 one-sided
    assert wilson_lower(1, 1, 0.95) == pytest.approx(27.0, abs=0.1)
    assert wilson_lower(400, 400, 0.95) == pytest.approx(99.33, abs=0.01)
    assert wilson_lower(0, 5, 0.95) == 0.0
    assert wilson_lower(50, 100, 0.95) < 50 < wilson_lower(5000, 10000, 0.95) + 1


def test_forget_gate_accounts_for_the_request_size():
    # 10 of 10 ids right with TA 90: the point estimate (100 > 92) refused it; 10 samples cannot show that
    assert forget_gate(100.0, 10, 90.0, 2.0, None)["passed"] is False
    assert forget_gate(100.0, 10, 90.0, 2.0, 0.95)["passed"] is True
    assert forget_gate(100.0, 1, 90.0, 2.0, 0.95)["passed"] is True
    refused = forget_gate(100.0, 400, 90.0, 2.0, 0.95)  # a large set the model still knows
    assert refused["passed"] is False and refused["value"] > 99
    msg = refused["message"]
    assert "forget_acc failed" in msg and "400 ids" in msg and "99.33" in msg and "--forget-margin" in msg


def test_every_refusal_says_its_figures_and_option():
    cfg = StoreConfig(forget_margin=2.0, max_retain_drop=1.0, min_mia_efficacy=50.0)
    gates = check_gates(cfg, {"forget_acc": 100.0, "TA": 90.0, "RA": 80.0, "MIA-Efficacy": 10.0}, {"RA": 90.0}, 500)
    assert not any(g["passed"] for g in gates.values())
    assert "10.00 points" in gates["retain_drop"]["message"] and "--max-retain-drop" in gates["retain_drop"]["message"]
    assert "10.00%" in gates["mia_efficacy"]["message"] and "--min-mia-efficacy" in gates["mia_efficacy"]["message"]


def known_ids(checkpoint, digits) -> np.ndarray:
    """Training ids the original model classifies correctly (forget accuracy 100% until forgotten)."""
    from unlearnkit.checkpoint import load_checkpoint

    model, _ = load_checkpoint(checkpoint)
    x = torch.stack([digits.train[i][0] for i in range(len(digits.train))])
    y = torch.tensor([int(digits.train[i][1]) for i in range(len(digits.train))])
    with torch.no_grad():
        right = (model.eval()(x).argmax(1) == y).numpy()
    return np.flatnonzero(right)


def test_default_gate_accepts_small_requests_and_refuses_a_known_large_set(tmp_path, checkpoint, digits):
    ids = known_ids(checkpoint, digits)
    defaults = dict(forget_margin=2.0, max_retain_drop=5.0)  # the store's defaults (LOOSE relaxes them)
    st = make_store(tmp_path, checkpoint, **defaults)
    assert st.config.forget_confidence == 0.95
    one, ten = st.request(ids[:1]), st.request(ids[1:11])
    assert one.status == "applied" and ten.status == "applied", (one.gates, ten.gates)
    # under the point-estimate gate (forget_confidence=None, the former default) 100% on 1 or 10 ids is refused
    assert one.figures["forget_acc"] == 100.0 or ten.figures["forget_acc"] == 100.0
    # a large set the model still knows (a method that barely moves it) is still refused
    big = st.request(ids[100:500], lr=1e-6)
    assert big.status == "refused", big.gates
    assert "forget_margin" in big.gates["forget_acc"]["message"]
