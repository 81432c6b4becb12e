"""Tamper evidence: the ledger's hash chain, the cross-checks with each version, and the optional store key."""

from __future__ import annotations

import json

import pytest
from store_helpers import built_store, copy_store, ledger, make_store, reseal, snapshot, write_ledger

from unlearnkit.errors import UnlearnkitError
from unlearnkit.store import Store
from unlearnkit.store.ledger import legacy_checksum


@pytest.fixture(scope="module")
def built3(tmp_path_factory, checkpoint):
    return built_store(tmp_path_factory, checkpoint, [[1, 2], [3, 4], [5, 6]])[0]


@pytest.fixture
def store3(tmp_path, built3):
    return Store.open(copy_store(built3, tmp_path / "store"))


def refused_on_open(path, match, **kw):
    before = snapshot(path)
    with pytest.raises(UnlearnkitError, match=match):
        Store.open(path, **kw)
    assert snapshot(path) == before


def test_edited_receipt_with_a_recomputed_checksum_is_detected(store3):
    entries = ledger(store3.path)
    entries[1]["figures"]["UA"] = 99.0
    entries[1]["checksum"] = legacy_checksum(entries[1])  # what sufficed with format 1
    write_ledger(store3.path, entries)
    refused_on_open(store3.path, "line 2 is corrupted or was edited")
    entries[1] = reseal(entries[1])  # the line's own hash recomputed: the next line no longer follows it
    write_ledger(store3.path, entries)
    refused_on_open(store3.path, "line 3 does not follow line 2")


def test_removed_middle_line_is_detected(store3):
    entries = ledger(store3.path)
    write_ledger(store3.path, entries[:2] + entries[3:])
    refused_on_open(store3.path, "line 3 does not follow line 2")


def test_replayed_line_is_detected(store3):
    entries = ledger(store3.path)
    write_ledger(store3.path, entries + [entries[2]])
    refused_on_open(store3.path, "line 5 does not follow line 4")


def test_swapped_model_with_a_rewritten_head_receipt_is_detected(tmp_path, checkpoint, store3):
    import hashlib

    other = make_store(tmp_path, checkpoint, name="other")
    other.request([9, 10])
    blob = (other.version_dir / "model.safetensors").read_bytes()
    (store3.version_dir / "model.safetensors").write_bytes(blob)
    entries = ledger(store3.path)
    entries[-1]["model_sha256"] = hashlib.sha256(blob).hexdigest()
    entries[-1]["model_after"] = other.model_hash
    entries[-1] = reseal(entries[-1])
    write_ledger(store3.path, entries)
    refused_on_open(store3.path, "disagree on the current model|does not match the sha256")


def test_edited_checkpoint_json_is_detected(store3):
    meta = store3.version_dir / "checkpoint.json"
    data = json.loads(meta.read_text())
    data["model_args"]["weights"] = "/etc/passwd"
    meta.write_text(json.dumps(data))
    refused_on_open(store3.path, "checkpoint.json does not match the sha256 recorded")


def test_edited_store_json_is_detected(store3):
    info_path = store3.path / "store.json"
    info = json.loads(info_path.read_text())
    info["config"]["max_retain_drop"] = 50.0
    info_path.write_text(json.dumps(info))
    refused_on_open(store3.path, "store.json differs from the one recorded")


def test_signed_store(tmp_path, checkpoint, monkeypatch):
    monkeypatch.setenv("UNLEARNKIT_STORE_KEY", "s3cret")
    st = make_store(tmp_path, checkpoint)
    st.request([1, 2])
    st.request([3, 4])
    assert all(e["mac"] for e in ledger(st.path)) and json.loads((st.path / "store.json").read_text())["mac"]
    assert Store.open(st.path).version == "v000002"
    refused_on_open(st.path, "no valid signature", key="other key")
    monkeypatch.delenv("UNLEARNKIT_STORE_KEY")
    refused_on_open(st.path, "is signed; give its key")
    assert Store.open(st.path, key=b"s3cret").version == "v000002"
    # the head receipt rewritten consistently (hash recomputed, model fields untouched): only the key shows it
    entries = ledger(st.path)
    entries[-1]["figures"]["UA"] = 99.0
    entries[-1] = reseal(entries[-1])
    write_ledger(st.path, entries)
    refused_on_open(st.path, "line 3 has no valid signature", key="s3cret")
    # store.json with its signature removed, opened with the key
    st2 = make_store(tmp_path, checkpoint, name="b", key="s3cret")
    info = json.loads((st2.path / "store.json").read_text())
    info.pop("mac")
    info["signed"] = False
    (st2.path / "store.json").write_text(json.dumps(info))
    refused_on_open(st2.path, "is not signed", key="s3cret")


def test_cli_key_file(tmp_path, checkpoint, capsys):
    from unlearnkit.cli import main

    key, store, ids = tmp_path / "key", tmp_path / "s", tmp_path / "ids.txt"
    key.write_text("s3cret\n")
    ids.write_text("1\n2\n")
    assert main(["store-init", "-c", str(checkpoint), "--store", str(store), "--key-file", str(key), "-q",
                 "--set", "finetune.epochs=1", "--forget-margin", "100", "--max-retain-drop", "none"]) == 0
    assert main(["request", "--store", str(store), "--forget", f"ids:{ids}", "--key-file", str(key), "-q"]) == 0
    assert main(["store-show", "--store", str(store)]) == 2
    assert "is signed" in capsys.readouterr().err
    assert main(["store-show", "--store", str(store), "--key-file", str(key), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["summary"]["signed"] is True
