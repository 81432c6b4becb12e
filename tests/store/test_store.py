"""The model store: receipts, gates and rollback, sequences, retrain policy, crash safety, locking, bad input.

A tiny MLP (one hidden layer of 32) trained 2 epochs on digits keeps every request well under a second.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from store_helpers import ledger, make_store, snapshot

import unlearnkit as uk
from unlearnkit import store as store_mod
from unlearnkit.errors import UnlearnkitError
from unlearnkit.store import EXIT_REFUSED, Store, ids_sha256, recalibrate_batchnorm


WORKER = Path(__file__).with_name("test_store_worker.py")


# ---- one request --------------------------------------------------------------------------------
def test_applied_request_writes_a_receipt_and_swaps_the_model(tmp_path, checkpoint):
    st = make_store(tmp_path, checkpoint)
    original = st.model_hash
    ids = [7, 3, 11, 3, 200]
    receipt = st.request(ids, method="finetune")
    assert receipt.status == "applied" and receipt.exit_code == 0
    assert receipt.forget["sha256"] == ids_sha256([3, 7, 11, 200]) and receipt.forget["num_ids"] == 4
    assert receipt.model_before == original and receipt.model_after != original
    assert set(receipt.figures) == {"forget_acc", "UA", "RA", "TA", "MIA-Efficacy"}
    assert receipt.config["epochs"] == 1 and receipt.cost["seconds"] > 0 and receipt.versions["torch"]
    text = (st.path / "ledger.jsonl").read_text()
    assert '"ids"' not in text  # the hash of the ids, never the ids unless asked
    again = Store.open(st.path)
    assert again.version == receipt.version == "v000001" and again.model_hash == receipt.model_after
    assert again.forgotten_ids.tolist() == [3, 7, 11, 200]
    assert uk.utils.state_dict_hash(again.load_model()) == receipt.model_after
    assert sorted(p.name for p in (st.path / "models").iterdir()) == ["v000001"]  # the old model is gone
    lineage = json.loads((again.version_dir / "checkpoint.json").read_text())["lineage"]
    assert lineage["parent"] == original and lineage["request_id"] == receipt.request_id
    # record_ids=True puts the ids in the receipt
    r2 = again.request([20, 21], record_ids=True)
    assert r2.forget["ids"] == [20, 21]


def test_gate_refusal_keeps_the_model_and_records_the_figures(tmp_path, checkpoint):
    st = make_store(tmp_path, checkpoint, forget_margin=-100.0)  # forget acc <= TA - 100: never met
    before = snapshot(st.path / "models")
    receipt = st.request(np.arange(30), method="finetune")
    assert receipt.status == "refused" and receipt.exit_code == EXIT_REFUSED
    assert receipt.model_after == receipt.model_before == st.model_hash and receipt.version == "v000000"
    assert receipt.gates["forget_acc"]["passed"] is False and "RA" in receipt.figures
    assert snapshot(st.path / "models") == before  # rolled back: same model, nothing forgotten
    entry = ledger(st.path)[-1]
    assert entry["status"] == "refused" and entry["figures"]["forget_acc"] == receipt.figures["forget_acc"]
    assert Store.open(st.path).forgotten_ids.size == 0


def test_fallback_tries_the_next_method(tmp_path, checkpoint):
    st = make_store(tmp_path, checkpoint, methods=["gradient_ascent", "finetune"], fallback=True,
                    max_retain_drop=5.0,
                    method_configs={"gradient_ascent": {"lr": 50.0, "epochs": 3}, "finetune": {"epochs": 1}})
    receipt = st.request(np.arange(100))
    assert [a["method"] for a in receipt.attempts] == ["gradient_ascent", "finetune"]
    assert not receipt.attempts[0]["passed"] and receipt.attempts[1]["passed"]
    assert receipt.status == "applied" and receipt.method == "finetune"
    # without fallback the same request is refused
    st2 = make_store(tmp_path, checkpoint, name="nofb", methods=["gradient_ascent", "finetune"],
                     max_retain_drop=5.0, method_configs={"gradient_ascent": {"lr": 50.0, "epochs": 3}})
    assert st2.request(np.arange(100)).status == "refused"


# ---- sequences ----------------------------------------------------------------------------------
def test_sequential_requests_and_double_forget(tmp_path, checkpoint):
    st = make_store(tmp_path, checkpoint)
    n = len(st.training_ids)
    r1 = st.request(np.arange(0, 40))
    r2 = st.request(np.arange(20, 60))  # 20..39 were forgotten by r1
    assert r2.model_before == r1.model_after and r2.status == "applied"
    assert r2.forget["num_already_forgotten"] == 20 and r2.forget["num_new"] == 20
    assert r2.forget["already_forgotten_sha256"] == ids_sha256(np.arange(20, 40))
    assert st.forgotten_ids.tolist() == list(range(60))
    assert len(st.retain_ids) == n - 60 and not np.isin(np.arange(60), st.retain_ids).any()
    r3 = st.request(np.arange(10, 30))  # nothing new: reported, not forgotten twice
    assert r3.status == "noop" and r3.model_after == r2.model_after and r3.attempts == []
    assert [e["status"] for e in ledger(st.path)] == ["init", "applied", "applied", "noop"]
    assert Store.open(st.path).summary()["forgotten"] == 60


def test_retrain_policy_after_n_requests(tmp_path, checkpoint):
    st = make_store(tmp_path, checkpoint, retrain_after=1)
    assert st.request([1, 2, 3]).method == "finetune"
    r2 = st.request([4, 5, 6], method="finetune")
    assert r2.method == "retrain" and "retrain_after=1" in r2.extra["retrain_policy"]
    assert r2.status == "applied" and st.forgotten_ids.tolist() == [1, 2, 3, 4, 5, 6]
    assert st.request([7]).method == "finetune"  # the counter restarts after a retrain


def test_pgu_cache_is_built_once_and_downdated_by_every_request(tmp_path, checkpoint):
    from unlearnkit.components.gradient_projection import PGUCache

    st = make_store(tmp_path, checkpoint)
    r1 = st.request(np.arange(0, 10), method="pgu", max_steps=5)
    assert r1.status == "applied" and "pgu_cache" in r1.extra
    r2 = st.request(np.arange(10, 20), method="finetune")
    assert "downdated by 10 ids (20 in all)" in r2.extra["pgu_cache"]
    cache = PGUCache.load(st.version_dir / store_mod.PGU_CACHE_FILE)
    assert cache.subtracted.tolist() == list(range(20)) and cache.model_hash == st.model_hash
    r3 = st.request(np.arange(20, 30), method="pgu", max_steps=5)  # uses (and downdates) the stored cache
    assert r3.status == "applied"
    cache_file = st.version_dir / store_mod.PGU_CACHE_FILE
    assert PGUCache.load(cache_file).subtracted.tolist() == list(range(30))
    blob = bytearray(cache_file.read_bytes())
    blob[-1] ^= 0xFF
    cache_file.write_bytes(bytes(blob))
    with pytest.raises(UnlearnkitError, match="PGU cache .* does not match the sha256"):
        st.request([40], method="finetune")
    assert ledger(st.path)[-1]["request_id"] == r3.request_id  # nothing recorded
    cache_file.unlink()  # deleting it is the way out: the next PGU request rebuilds it
    assert Store.open(st.path).request([40], method="finetune").status == "applied"


# ---- clean state --------------------------------------------------------------------------------
def test_bn_recalibration_removes_forget_statistics(digits):
    torch.manual_seed(0)
    model = uk.create_model("cnn", num_classes=10, in_channels=1, image_size=8, width=4).eval()
    data = uk.make_unlearning_data(digits.train, digits.test, "class:3")
    data.retain = torch.utils.data.Subset(data.retain, range(300))
    clean = copy.deepcopy(model)
    assert recalibrate_batchnorm(clean, data.retain) == 3
    dirty = copy.deepcopy(model)
    dirty.train()
    with torch.no_grad():  # buffers soaked in forget-class statistics
        for x, _ in uk.data.iterate_batches(data.forget, 64):
            dirty(x)
    recalibrate_batchnorm(dirty, data.retain)
    with_forget = copy.deepcopy(model)
    recalibrate_batchnorm(with_forget, torch.utils.data.ConcatDataset([data.retain, data.forget]))
    for (name, a), b, c in zip(clean.state_dict().items(), dirty.state_dict().values(),
                               with_forget.state_dict().values()):
        if "running" in name:
            assert torch.allclose(a, b, atol=1e-6), name  # nothing of the earlier buffers survives
            assert not torch.allclose(a, c, atol=1e-4), name  # and the forget data would have shown
    assert not clean.training  # mode restored


# ---- crash safety -------------------------------------------------------------------------------
class Crash(Exception):
    pass


@pytest.mark.parametrize("step,expect_new", [("after_unlearn", False), ("after_model_write", False),
                                             ("after_pointer", True), ("after_ledger", True)])
def test_interrupted_request_leaves_a_consistent_store(tmp_path, checkpoint, monkeypatch, step, expect_new):
    st = make_store(tmp_path, checkpoint)
    old = st.model_hash

    def crash(name):
        if name == step:
            raise Crash(name)

    monkeypatch.setattr(store_mod.files, "crash_point", crash)
    with pytest.raises(Crash):
        st.request(np.arange(50))
    monkeypatch.undo()
    with pytest.warns(UserWarning) if step == "after_pointer" else _nothing():
        again = Store.open(st.path)
    applied = [e for e in ledger(st.path) if e["status"] == "applied"]
    assert len(applied) == int(expect_new)
    assert (again.model_hash != old) is expect_new
    assert uk.utils.state_dict_hash(again.load_model()) == again.model_hash == ledger(st.path)[-1]["model_after"]
    assert again.forgotten_ids.tolist() == (list(range(50)) if expect_new else [])
    assert not [p for p in (st.path / "models").iterdir() if p.name != again.version]
    # and the store takes the next request normally
    assert again.request(np.arange(50, 60)).status == "applied"


def _nothing():
    import contextlib

    return contextlib.nullcontext()


def test_half_written_ledger_line_is_repaired(tmp_path, checkpoint):
    st = make_store(tmp_path, checkpoint)
    st.request([1, 2])
    good = (st.path / "ledger.jsonl").read_bytes()
    with open(st.path / "ledger.jsonl", "ab") as f:
        f.write(b'{"kind":"request","request_id":"R0000')
    with pytest.warns(UserWarning, match="half-written"):
        again = Store.open(st.path)
    assert (st.path / "ledger.jsonl").read_bytes() == good and again.notes


def test_sigkill_mid_request(tmp_path, checkpoint):
    st = make_store(tmp_path, checkpoint)
    env = {**os.environ, "UNLEARNKIT_STORE_KILL_AT": "after_pointer"}
    proc = subprocess.run([sys.executable, str(WORKER), str(st.path), "0", "30"], env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == -9, proc.stderr[-2000:]
    with pytest.warns(UserWarning, match="rolled forward"):
        again = Store.open(st.path)
    assert ledger(st.path)[-1]["recovered"] is True and again.forgotten_ids.tolist() == list(range(30))
    assert again.summary()["forgotten"] == 30
    assert uk.utils.state_dict_hash(again.load_model()) == again.model_hash


# ---- concurrency --------------------------------------------------------------------------------
def test_two_concurrent_writers(tmp_path, checkpoint):
    st = make_store(tmp_path, checkpoint)
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    procs = [subprocess.Popen([sys.executable, str(WORKER), str(st.path), str(a), str(a + 20)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for a in (0, 100)]
    outs = [p.communicate(timeout=180) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-1500:] for o in outs]
    entries = ledger(st.path)
    assert [e["status"] for e in entries] == ["init", "applied", "applied"]
    assert entries[2]["model_before"] == entries[1]["model_after"]  # serialised, not interleaved
    again = Store.open(st.path)
    assert again.forgotten_ids.tolist() == list(range(20)) + list(range(100, 120))


def test_second_process_fails_clearly_when_the_lock_is_held(tmp_path, checkpoint):
    import filelock

    st = make_store(tmp_path, checkpoint)
    holder = filelock.FileLock(str(st.path / ".lock"))
    with holder.acquire(timeout=1):
        other = Store.open(st.path, lock_timeout=0.2)
        with pytest.raises(UnlearnkitError, match="locked by another process"):
            other.request([1])
    assert len(ledger(st.path)) == 1


# ---- bad input ----------------------------------------------------------------------------------
def test_bad_requests_change_nothing(tmp_path, checkpoint):
    st = make_store(tmp_path, checkpoint)
    before = snapshot(st.path)
    n = len(st.training_ids)
    for ids, match in (([n + 5], "not a training id"), ([], "empty"), ([-1], "not a training id"),
                       (np.array([0.5]), "integers")):
        with pytest.raises(UnlearnkitError, match=match):
            st.request(ids)
    with pytest.raises(UnlearnkitError, match="lr"):
        st.request([1], method="finetune", lr=-1.0)
    with pytest.raises(UnlearnkitError, match="lr"):
        st.request([1], lr=-1.0)  # the store's default method
    with pytest.raises(UnlearnkitError, match="Unknown method"):
        st.request([1], method="nope")
    assert snapshot(st.path) == before
    with pytest.raises(UnlearnkitError, match="epochs"):
        Store.create(tmp_path / "bad", checkpoint, method_configs={"finetune": {"epochs": 0}})
    assert not (tmp_path / "bad").exists()
    with pytest.raises(UnlearnkitError, match="already a store"):
        Store.create(st.path, checkpoint)
    with pytest.raises(UnlearnkitError, match="not an unlearnkit store"):
        Store.open(tmp_path)
    assert snapshot(st.path) == before


def test_restricted_training_ids(tmp_path, checkpoint):
    st = make_store(tmp_path, checkpoint, training_ids=np.arange(0, 500))
    with pytest.raises(UnlearnkitError, match="Forget id 600 is not a training id"):
        st.request([1, 600])
    assert st.request([1, 2]).status == "applied" and len(st.retain_ids) == 498


def test_corrupted_ledger_line_is_a_clear_error(tmp_path, checkpoint):
    st = make_store(tmp_path, checkpoint)
    st.request([1, 2])
    st.request([3, 4])
    lines = (st.path / "ledger.jsonl").read_text().splitlines(keepends=True)
    lines[1] = lines[1].replace('"status":"applied"', '"status":"applieD"')  # valid JSON, wrong checksum
    (st.path / "ledger.jsonl").write_text("".join(lines))
    before = snapshot(st.path)
    with pytest.raises(UnlearnkitError, match="line 2 is corrupted"):
        Store.open(st.path)
    assert snapshot(st.path) == before


def test_corrupted_or_foreign_model_file_is_a_clear_error(tmp_path, checkpoint):
    st = make_store(tmp_path, checkpoint)
    st.request([1, 2])
    other = make_store(tmp_path, checkpoint, name="other")
    other.request([5, 6])
    weights = st.version_dir / "model.safetensors"
    # another store's model in this store's place
    weights.write_bytes((other.version_dir / "model.safetensors").read_bytes())
    before = snapshot(st.path)
    with pytest.raises(UnlearnkitError, match="does not match the sha256"):
        Store.open(st.path)
    blob = bytearray((other.version_dir / "model.safetensors").read_bytes())
    blob[-3] ^= 0xFF  # a flipped bit
    weights.write_bytes(bytes(blob))
    with pytest.raises(UnlearnkitError, match="does not match the sha256"):
        Store.open(st.path)
    assert snapshot(st.path).keys() == before.keys()


# ---- CLI ----------------------------------------------------------------------------------------
def test_cli_store_init_request_show(tmp_path, checkpoint, capsys):
    from unlearnkit.cli import main

    store = tmp_path / "cli-store"
    ids = tmp_path / "ids.txt"
    ids.write_text("1\n2\n3\n")
    assert main(["store-init", "--checkpoint", str(checkpoint), "--store", str(store), "-q",
                 "--set", "finetune.epochs=1", "--forget-margin", "100", "--max-retain-drop", "none"]) == 0
    assert main(["request", "--store", str(store), "--forget", f"ids:{ids}", "--receipt",
                 str(tmp_path / "r.json"), "-q"]) == 0
    receipt = json.loads((tmp_path / "r.json").read_text())
    assert receipt["status"] == "applied" and receipt["forget"]["sha256"] == ids_sha256([1, 2, 3])
    assert main(["request", "--store", str(store), "--forget", f"ids:{ids}", "-q"]) == 0  # nothing new
    assert "already forgotten" in capsys.readouterr().out
    refuse = tmp_path / "refuse"
    assert main(["store-init", "-c", str(checkpoint), "--store", str(refuse), "-q", "--forget-margin", "-100"]) == 0
    assert main(["request", "--store", str(refuse), "--forget", f"ids:{ids}", "-q",
                 "--set", "epochs=1"]) == EXIT_REFUSED
    assert main(["request", "--store", str(store), "--forget", "ids:/nonexistent.txt", "-q"]) == 2
    assert main(["request", "--store", str(tmp_path), "--forget", f"ids:{ids}", "-q"]) == 2
    capsys.readouterr()
    assert main(["store-show", "--store", str(store), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert [r["status"] for r in shown["receipts"]] == ["applied", "noop"]


def test_store_of_a_compact_checkpoint_keeps_it_loadable(tmp_path, checkpoint):
    """A compacted model (smaller layers) goes through store versions and loads again."""
    from unlearnkit.checkpoint import load_checkpoint, read_meta
    from unlearnkit.cli import main

    pruned, small = tmp_path / "pruned", tmp_path / "small"
    assert main(["forget", "--checkpoint", str(checkpoint), "--method", "prune_finetune", "--forget", "class:3",
                 "--set", "epochs=1", "--out", str(pruned), "-q"]) == 0  # mlp: no BatchNorm, pruned rows are dead
    assert main(["compact", "--checkpoint", str(pruned), "--out", str(small), "-q"]) == 0
    compacted = load_checkpoint(small)[1]["compacted"]
    st = make_store(tmp_path, small, methods=["finetune"], method_configs={"finetune": {"epochs": 1}})
    receipt = st.request([1, 2, 3])
    assert receipt.status == "applied"
    model = Store.open(st.path).load_model("cpu")
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in load_checkpoint(small)[0].parameters())
    assert read_meta(st.version_dir)["compacted"] == compacted


def test_a_version_checkpoint_carries_every_id_the_store_forgot(tmp_path, checkpoint):
    from unlearnkit.checkpoint import read_meta
    from unlearnkit.workflow import forgotten_so_far

    st = make_store(tmp_path, checkpoint)
    st.request(np.arange(0, 12))
    st.request(np.arange(30, 35))
    meta = read_meta(Store.open(st.path).version_dir)
    ids, classes = forgotten_so_far(meta, 10_000)
    assert ids.tolist() == [*range(12), *range(30, 35)] and classes == ()  # `forget -c models/vN` leaves them out
