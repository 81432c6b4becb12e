"""``request --audit``: the receipt of an accepted request records an audit of the deletion, sealed in the ledger."""

from __future__ import annotations

import json

import numpy as np
import pytest
from store_helpers import ledger, make_store, reseal, snapshot, write_ledger

from unlearnkit.audit.deletion import parse_audit_spec
from unlearnkit.cli import main
from unlearnkit.errors import UnlearnkitError
from unlearnkit.store import Store
from unlearnkit.store.files import file_sha256


def class_ids(digits, c: int) -> np.ndarray:
    return np.flatnonzero(np.array([int(digits.train[i][1]) for i in range(len(digits.train))]) == c)


def test_relearn_audit_of_a_class_deletion_by_retrain(tmp_path, checkpoint, digits, monkeypatch):
    monkeypatch.setenv("UNLEARNKIT_STORE_KEY", "s3cret")
    st = make_store(tmp_path, checkpoint)
    receipt = st.request(class_ids(digits, 3), method="retrain", audit="relearn")
    rel = receipt.extra["audit"]["relearn"]
    assert receipt.extra["audit"]["requested"] == "relearn" and "full" not in receipt.extra["audit"]
    assert rel["after_is_retrain"] and rel["relearn_ids"] + rel["heldout_ids"] == receipt.forget["num_new"]
    assert len(rel["before"]["curve"]) == len(rel["after"]["curve"]) == rel["steps"] + 1
    # the model before knew class 3; the retrained one never saw it, and retain data does not bring it back
    assert rel["before"]["heldout_acc"] > 80.0 and rel["before"]["steps_to_level"] == 0
    assert rel["after"]["heldout_acc"] < 5.0 and rel["after"]["retain_control_steps_to_level"] is None
    assert rel["level"] == pytest.approx(0.9 * rel["before"]["heldout_acc"])
    assert rel["after"]["excess_points"] > 0  # fine-tuning on forgotten ids helps; the control does not
    # sealed with the rest of the receipt: the ledger line carries it, and an edit without the key is detected
    entries = ledger(st.path)
    assert entries[-1]["audit"] == json.loads(json.dumps(receipt.extra["audit"]))
    assert Store.open(st.path).receipts()[-1].extra["audit"]["relearn"]["level"] == pytest.approx(rel["level"])
    entries[-1]["audit"]["relearn"]["after"]["heldout_acc"] = 80.0
    write_ledger(st.path, entries[:-1] + [reseal(entries[-1])])
    with pytest.raises(UnlearnkitError, match="no valid signature"):
        Store.open(st.path)


def test_a_request_without_audit_is_unchanged(tmp_path, checkpoint):
    st = make_store(tmp_path, checkpoint)
    receipt = st.request([1, 2, 3, 4])
    assert "audit" not in receipt.extra and "audit" not in ledger(st.path)[-1]
    assert sorted(p.name for p in st.path.iterdir() if p.name != ".lock") == ["CURRENT", "ledger.jsonl", "models",
                                                                             "store.json"]


def test_refused_request_records_that_the_audit_was_skipped(tmp_path, checkpoint):
    st = make_store(tmp_path, checkpoint, forget_margin=-100.0)
    receipt = st.request(np.arange(30), audit="relearn")
    assert receipt.status == "refused"
    assert receipt.extra["audit"] == {"requested": "relearn",
                                      "skipped": "the request was refused; the model is unchanged"}


def test_full_audit_over_k_retrains(tmp_path, checkpoint):
    st = make_store(tmp_path, checkpoint, audit_k=3)
    receipt = st.request(np.arange(40), audit="full")
    full = receipt.extra["audit"]["full"]
    assert full["k"] == 3 and full["forget_ids"] == 40 and full["trained"] == {"originals": 3, "oracles": 3}
    assert 0.0 <= full["forgetting_quality"] <= 1.0 and 0.0 < full["null_ceiling"] < 1.0
    assert 0.0 <= full["ulira_accuracy"] <= 100.0 and full["retrain_relearn_steps"] >= 0
    record = st.path / full["audit_json"]
    assert file_sha256(record) == full["audit_sha256"]  # the receipt pins the per-example figures it summarises
    assert json.loads(record.read_text())["config"]["method_args"]["epochs"] == 1  # the store's finetune config
    assert ledger(st.path)[-1]["audit"]["full"]["forgetting_quality"] == full["forgetting_quality"]
    # originals and oracles are cached in the store (the bench cache: a later request trains only its oracles)
    assert len(list((st.path / "audit-cache" / "originals").iterdir())) == 3


@pytest.mark.parametrize("value, message", [
    ("lira", "--audit 'lira' is not an audit level; allowed: relearn, full"),
    ("full:2", "K must be at least 3"),
    ("full", "--audit full needs K"),
])
def test_bad_audit_value_is_one_line_and_exit_2(tmp_path, checkpoint, capsys, value, message):
    st = make_store(tmp_path, checkpoint)
    ids = tmp_path / "ids.txt"
    ids.write_text("1\n2\n")
    before = snapshot(st.path)
    code = main(["request", "--store", str(st.path), "--forget", f"ids:{ids}", "--audit", value, "-q"])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert snapshot(st.path) == before


def test_cli_prints_the_audit_and_writes_it_into_the_receipt_file(tmp_path, checkpoint, capsys):
    st = make_store(tmp_path, checkpoint)
    ids, out = tmp_path / "ids.txt", tmp_path / "receipt.json"
    ids.write_text("".join(f"{i}\n" for i in range(30)))
    assert main(["request", "--store", str(st.path), "--forget", f"ids:{ids}", "--audit", "relearn",
                 "--receipt", str(out), "-q"]) == 0
    assert "audit: relearn attack on 27 held-out ids" in capsys.readouterr().out
    assert json.loads(out.read_text())["audit"]["relearn"]["heldout_ids"] == 27


def test_parse_audit_spec():
    assert parse_audit_spec(None, 8) is None
    assert parse_audit_spec("relearn", None).mode == "relearn"
    assert parse_audit_spec("full", 8).k == 8 and parse_audit_spec("FULL:5", 8).k == 5
