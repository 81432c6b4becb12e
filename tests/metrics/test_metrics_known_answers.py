"""Each metric on hand-built models whose answer is known in advance."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch

import unlearnkit as uk
from unlearnkit.data import dataset_labels
from unlearnkit.metrics import evaluate, get_metric, list_metrics
from unlearnkit.metrics.gap import js_divergence
from metric_helpers import CentroidModel, ConstantModel, CountingModel, LookupModel, constant_class

CONTRACT_KEYS = ["forget_acc@1", "ua@1", "ra@1", "ta@1", "ta_forget_class@1", "mia_efficacy@2", "mia_loss_auc@1"]
GAP_KEYS = ["gap_ua@1", "gap_ra@1", "gap_ta@1", "gap_mia_efficacy@2", "avg_gap@2"]
OUTPUT_KEYS = ["forget_js@1", "forget_agreement@1"]
COST_KEYS = ["rte_seconds@1", "peak_memory_mb@1", "trainable_params@1", "sample_passes@1"]


def test_registry_holds_every_contract_metric():
    assert list_metrics() == CONTRACT_KEYS + GAP_KEYS + OUTPUT_KEYS + COST_KEYS
    assert get_metric("ua").key == "ua@1"
    with pytest.raises(KeyError):
        uk.metrics.register_metric("ua", higher_is_better=True)(lambda ctx: 0.0)
    with pytest.raises(ValueError):
        uk.metrics.register_metric("Bad-Name", higher_is_better=True)
    with pytest.raises(uk.UnlearnkitError, match="Unknown metric 'uaa'.*Did you mean 'ua@1'"):
        get_metric("uaa")


def test_perfect_model(class3):
    perfect = LookupModel([class3.train, class3.test])
    m = evaluate(perfect, class3).metrics
    assert list(m) == CONTRACT_KEYS
    assert m["forget_acc@1"] == 100.0 and m["ua@1"] == 0.0
    assert m["ra@1"] == 100.0 and m["ta@1"] == 100.0 and m["ta_forget_class@1"] == 100.0


def test_constant_model_accuracies_are_class_frequencies(class3):
    m = evaluate(constant_class(3), class3).metrics
    # always predicts the forgotten class: all of D_f right, nothing of D_r or the retained-class test set
    assert m["forget_acc@1"] == 100.0 and m["ua@1"] == 0.0
    assert m["ra@1"] == 0.0 and m["ta@1"] == 0.0 and m["ta_forget_class@1"] == 100.0
    # identical logits and labels on D_f and the forgotten class's test samples: equal losses, AUC 1/2
    assert m["mia_loss_auc@1"] == 50.0

    m0 = evaluate(constant_class(0), class3).metrics
    retain_labels = dataset_labels(class3.retain)
    test_labels = dataset_labels(class3.test_retain)
    assert m0["forget_acc@1"] == 0.0 and m0["ua@1"] == 100.0
    assert m0["ra@1"] == pytest.approx(100.0 * (retain_labels == 0).double().mean().item())
    assert m0["ta@1"] == pytest.approx(100.0 * (test_labels == 0).double().mean().item())


def test_sample_forgetting_has_no_forgotten_class_accuracy(random10):
    m = evaluate(constant_class(0), random10).metrics
    assert math.isnan(m["ta_forget_class@1"])
    assert m["ta@1"] == pytest.approx(100.0 * (dataset_labels(random10.test) == 0).double().mean().item())


def test_mia_catches_a_memorising_model_and_clears_one_that_never_saw_the_forget_set(random10):
    memoriser = LookupModel([random10.train])  # confident on every training sample, forget set included
    m = evaluate(memoriser, random10).metrics
    assert m["ra@1"] == 100.0 and m["forget_acc@1"] == 100.0
    assert m["mia_efficacy@2"] < 5.0  # the forget set is called "member"
    assert m["mia_loss_auc@1"] > 99.0  # every forget loss is below every test loss

    oracle_like = LookupModel([random10.retain])  # memorised D_r only: D_f looks like unseen data
    o = evaluate(oracle_like, random10).metrics
    assert o["mia_efficacy@2"] > 90.0
    assert 35.0 < o["mia_loss_auc@1"] < 65.0


def test_model_equal_to_reference_has_zero_gap(class3):
    from conftest import build_tiny

    net = build_tiny("cnn", seed=1)  # untrained; any network will do: a copy of itself is the reference
    twin = copy.deepcopy(net)
    ev = evaluate(net, class3, reference=twin)
    for key in GAP_KEYS:
        assert ev.metrics[key] == 0.0, key
    assert ev.metrics["forget_js@1"] == pytest.approx(0.0, abs=1e-12)
    assert ev.metrics["forget_agreement@1"] == 100.0
    # the same through a stored Evaluation of the reference: gaps only, no output-level metrics
    ref_ev = evaluate(twin, class3)
    ev2 = evaluate(net, class3, reference=ref_ev)
    assert all(ev2.metrics[k] == 0.0 for k in GAP_KEYS)
    assert not any(k in ev2.metrics for k in OUTPUT_KEYS)


def test_gaps_are_absolute_differences(digits, class3):
    net = CentroidModel(digits.train, temperature=5.0)
    ref = constant_class(0)
    ev = evaluate(net, class3, reference=ref)
    own, theirs = evaluate(net, class3).metrics, evaluate(ref, class3).metrics
    gaps = [abs(own[k] - theirs[k]) for k in ("ua@1", "ra@1", "ta@1", "mia_efficacy@2")]
    assert [ev.metrics[k] for k in GAP_KEYS[:4]] == pytest.approx(gaps)
    assert ev.metrics["avg_gap@2"] == pytest.approx(sum(gaps) / 4)
    assert ev.summary()["Avg.Gap"] == ev.metrics["avg_gap@2"]


def test_js_divergence_by_hand():
    p = torch.tensor([[1.0, 0.0], [0.5, 0.5], [0.3, 0.7]])
    q = torch.tensor([[0.0, 1.0], [1.0, 0.0], [0.3, 0.7]])
    # row 2: m = (0.75, 0.25); KL(p||m) = 0.5 log2(0.5/0.75) + 0.5 log2(0.5/0.25); KL(q||m) = log2(1/0.75)
    row2 = 0.5 * (0.5 * math.log2(0.5 / 0.75) + 0.5 * math.log2(2.0)) + 0.5 * math.log2(1 / 0.75)
    assert js_divergence(p, q).tolist() == pytest.approx([1.0, row2, 0.0], abs=1e-12)
    assert row2 == pytest.approx(0.311278, abs=1e-6)


def test_forget_js_and_agreement_end_to_end(class3):
    big = -1e4  # softmax underflows to exactly 0 there
    half = ConstantModel([0.0, 0.0] + [big] * 8)  # p = (0.5, 0.5, 0, ...), argmax 0
    sure = ConstantModel([0.0] + [big] * 9)  # q = (1, 0, ...), argmax 0
    ev = evaluate(half, class3, reference=sure)
    assert ev.metrics["forget_js@1"] == pytest.approx(0.311278, abs=1e-6)
    assert ev.metrics["forget_agreement@1"] == 100.0
    other = ConstantModel([big, 0.0] + [big] * 8)
    ev = evaluate(sure, class3, reference=other)
    assert ev.metrics["forget_js@1"] == pytest.approx(1.0)
    assert ev.metrics["forget_agreement@1"] == 0.0


def test_one_batched_pass_per_split(class3):
    from conftest import build_tiny

    net = build_tiny("cnn")
    model, ref = CountingModel(net), CountingModel(copy.deepcopy(net))
    evaluate(model, class3, reference=ref, batch_size=128)
    expected = len(class3.forget) + len(class3.retain) + len(class3.test)  # test_retain/test_forget sliced
    assert model.seen == expected and ref.seen == expected


def _result(**kw):
    from unlearnkit.methods import UnlearnResult

    facts = dict(model=constant_class(0), method="finetune", config={}, seconds=12.5, prepare_seconds=0.5,
                 peak_memory_mb=321.0, peak_cuda_memory_mb=0.0, trainable_params=1234, total_params=2000,
                 sample_passes=5678, steps=9, seed=0, device="cpu", environment={})
    facts.update(kw)
    return UnlearnResult(**facts)


def test_cost_from_result(class3):
    result = _result()
    ev = evaluate(result.model, class3, result=result)
    assert {k: ev.metrics[k] for k in COST_KEYS} == {"rte_seconds@1": 12.5, "peak_memory_mb@1": 321.0,
                                                     "trainable_params@1": 1234.0, "sample_passes@1": 5678.0}
    assert evaluate(result.model, class3, result=result.to_dict()).metrics == ev.metrics  # its JSON record too
    gpu = _result(device="cuda:0", peak_cuda_memory_mb=777.0)
    assert evaluate(gpu.model, class3, result=gpu).metrics["peak_memory_mb@1"] == 777.0  # CUDA max allocated


def test_evaluation_record_table_and_roundtrip(digits, class3):
    ev = evaluate(CentroidModel(digits.train), class3, seed=3)
    d = ev.to_dict()
    assert d["schema_version"] == 1 and d["unlearnkit"] == uk.__version__ and d["seed"] == 3
    assert d["forget"] == class3.request.to_dict() and "torch" in d["environment"]
    assert set(d["metrics"]) == set(CONTRACT_KEYS)
    assert uk.Evaluation.from_dict(d).metrics == ev.metrics
    assert list(ev.summary()) == ["UA", "RA", "TA", "MIA-Efficacy"]
    assert ev["ua"] == ev.metrics["ua@1"]
    table = ev.table()
    assert table.row_count == len(CONTRACT_KEYS)
    assert np.isfinite(list(d["metrics"].values())).all()
