"""Known-answer audits on digits (K=4, a width-8 CNN): the oracle against itself, the untouched
original, and a method that hides the forgotten class behind one lowered logit bias."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

import unlearnkit as uk
from unlearnkit.audit import relearns_faster
from unlearnkit.audit.runner import AUDIT_KIND, AuditConfig, is_audit_dir
from unlearnkit.cli import main
from unlearnkit.models.registry import classifier_head
from unlearnkit.training import predict_logits

TINY = dict(k=4, dataset="digits", model="cnn", model_kwargs={"width": 8}, scenario="class:3",
            recipe={"epochs": 5, "lr": 0.05, "batch_size": 64}, relearn_steps=20, device="cpu")


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("audit-cache")


def untouched(original, data, seed):
    """The "method" that returns its input."""
    return copy.deepcopy(original)


def suppress_forgotten_logit(original, data, seed):
    """Hide, not remove: lower the forgotten class's head bias just enough that no forget sample gets it."""
    model = copy.deepcopy(original)
    _, head = classifier_head(model)
    logits, _ = predict_logits(model, data.forget)
    c = data.forget_classes[0]
    others = logits.clone()
    others[:, c] = float("-inf")
    margin = (logits[:, c] - others.max(1).values).max().item()
    with torch.no_grad():
        head.bias[c] -= margin + 1.0
    return model


@pytest.fixture(scope="module")
def oracle_audit(tmp_path_factory, cache):
    return uk.audit("retrain", tmp_path_factory.mktemp("retrain"), cache_dir=cache, **TINY)


@pytest.fixture(scope="module")
def original_audit(tmp_path_factory, cache):
    return uk.audit(untouched, tmp_path_factory.mktemp("untouched"), cache_dir=cache, **TINY)


@pytest.fixture(scope="module")
def masked_audit(tmp_path_factory, cache):
    return uk.audit(suppress_forgotten_logit, tmp_path_factory.mktemp("masked"), cache_dir=cache, **TINY)


def test_retrain_against_its_oracle_is_indistinguishable(oracle_audit):
    r = oracle_audit.results
    fq = r["forgetting_quality"]
    assert fq["forgetting_quality"] > 0.6 * fq["null_ceiling"]  # near what a perfect unlearner gets at K=4
    assert fq["original"] < 0.05
    assert 35.0 < r["ulira"]["accuracy"] < 65.0
    assert not relearns_faster(r)
    assert r["trained"] == {"originals": 4, "oracles": 4}


def test_untouched_original_fails_every_attack(oracle_audit, original_audit):
    r = original_audit.results
    assert r["trained"] == {"originals": 0, "oracles": 0}  # the bench cache was reused
    assert r["forgetting_quality"]["forgetting_quality"] < 0.05
    assert r["ulira"]["accuracy"] > 90.0
    assert r["utility"]["unlearned"]["forget_acc"] > 90.0
    assert r["relearn"]["unlearned"]["forget"]["median_steps"] == 0  # nothing to relearn


def test_a_suppressed_logit_passes_ua_but_fails_relearning(oracle_audit, masked_audit):
    r = masked_audit.results
    assert r["utility"]["unlearned"]["forget_acc"] == 0.0  # UA = 100%: looks perfectly forgotten
    assert relearns_faster(r)
    assert r["relearn"]["unlearned"]["forget"]["median_steps"] <= 3
    assert r["relearn"]["retrain"]["forget"]["median_steps"] >= 3 * r["relearn"]["unlearned"]["forget"]["median_steps"]


def test_outputs_json_report_and_plots(masked_audit):
    out = masked_audit.out
    record = json.loads((out / "audit.json").read_text())
    assert record["kind"] == AUDIT_KIND and record["status"] == "ok" and record["config"]["k"] == 4
    assert len(record["results"]["forgetting_quality"]["epsilons"]) == record["results"]["sizes"]["forget"]
    text = masked_audit.report.read_text()
    for needle in ("## Forgetting quality", "## U-LiRA", "## Relearning attack", "hidden, not removed",
                   "report_files/relearn.png"):
        assert needle in text
    for name in ("epsilon_hist.png", "lira_roc.png", "relearn.png"):
        assert (out / "report_files" / name).stat().st_size > 1000


def test_a_foreign_non_empty_folder_is_refused(tmp_path, cache):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(uk.UnlearnkitError, match="not empty and holds no previous audit"):
        uk.audit(untouched, tmp_path, cache_dir=cache, **TINY)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_cli_runs_and_rejects_bad_input(tmp_path, cache, capsys):
    out = tmp_path / "cli"
    args = ["audit", "--method", "finetune", "--out", str(out), "--k", "3", "--cache-dir", str(cache),
            "--model-arg", "width=8", "--epochs", "5", "--lr", "0.05", "--batch-size", "64", "--relearn-steps", "5",
            "--set", "epochs=1", "--set", "lr=0.01", "--device", "cpu", "--quiet"]
    assert main(args) == 0
    assert json.loads((out / "audit.json").read_text())["results"]["trained"] == {"originals": 0, "oracles": 0}
    assert is_audit_dir(out)  # so a rerun may write into it, while a foreign non-empty folder is refused
    capsys.readouterr()
    assert main(["audit", "--out", str(tmp_path / "x"), "--k", "2"]) == 2
    assert "'k' parameter of AuditConfig must be an int in the range [3, inf)" in capsys.readouterr().err
    assert main(["audit", "--out", str(tmp_path / "x"), "--forget", "rows:f.txt"]) == 2
    assert "allowed: class:K" in capsys.readouterr().err
    assert main(["audit", "--out", str(tmp_path / "x"), "--forget", "ids:f.txt"]) == 2
    assert "Forget ids file 'f.txt' does not exist" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_an_ids_forget_set_names_its_oracles_by_its_ids(tmp_path):
    from unlearnkit.store import ids_sha256

    txt, npy = tmp_path / "a.txt", tmp_path / "b.npy"
    txt.write_text("5\n3\n3\n")
    np.save(npy, np.array([3, 5]))
    keys = {AuditConfig(scenario=f"ids:{p}").oracle_scenario_key() for p in (txt, npy)}
    assert keys == {f"ids:sha256={ids_sha256([3, 5])}"}  # not the file's name or order
    with pytest.raises(uk.UnlearnkitError, match="does not exist"):
        AuditConfig(scenario=f"ids:{tmp_path / 'none.txt'}")
