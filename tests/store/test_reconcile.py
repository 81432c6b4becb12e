"""Reconciling never deletes the only copy of a model; version names are never reused; CURRENT is validated."""

from __future__ import annotations

import json
import shutil

import pytest
from store_helpers import built_store, copy_store, ledger, snapshot, to_format1

from unlearnkit.errors import UnlearnkitError
from unlearnkit.store import Store


REQUESTS = [[1, 2], [3, 4], [5, 6]]


@pytest.fixture(scope="module")
def built(tmp_path_factory, checkpoint):
    """A store after three requests (v000003), and its ledger after each step."""
    return built_store(tmp_path_factory, checkpoint, REQUESTS)


@pytest.fixture(scope="module")
def built_keep(tmp_path_factory, checkpoint):
    return built_store(tmp_path_factory, checkpoint, REQUESTS, keep_old_models=True)


@pytest.fixture
def st(tmp_path, built):
    return Store.open(copy_store(built[0], tmp_path / "store"))


def test_restoring_an_older_ledger_backup_deletes_nothing(st, built):
    (st.path / "ledger.jsonl").write_bytes(built[1][1])  # what the error message of a damaged ledger advises
    before = snapshot(st.path)
    with pytest.raises(UnlearnkitError, match="ledger looks older than the models.*Nothing was changed or deleted"):
        Store.open(st.path)
    assert snapshot(st.path) == before  # the only model (v000003) is still there
    assert (st.path / "models" / "v000003" / "model.safetensors").is_file()


def test_older_ledger_with_its_head_model_still_present_is_not_rolled_back(tmp_path, built_keep):
    st = Store.open(copy_store(built_keep[0], tmp_path / "store"))
    backup, one_behind = built_keep[1][1], built_keep[1][2]
    (st.path / "ledger.jsonl").write_bytes(backup)
    before = snapshot(st.path)
    with pytest.raises(UnlearnkitError, match="older than the models"):  # rolling back would serve forgotten data
        Store.open(st.path)
    assert snapshot(st.path) == before
    # one entry behind, the missing receipt is the one written with the current version: recovered
    (st.path / "ledger.jsonl").write_bytes(one_behind)
    with pytest.warns(UserWarning, match="rolled forward to v000003"):
        again = Store.open(st.path)
    assert again.forgotten_ids.tolist() == [1, 2, 3, 4, 5, 6] and ledger(st.path)[-1]["recovered"] is True


def test_ledger_cut_inside_an_earlier_line_deletes_nothing(st):
    data = (st.path / "ledger.jsonl").read_bytes()
    lines = data.split(b"\n")
    cut = len(lines[0]) + len(lines[1]) + 2 + 40  # 40 bytes into the third line (request 2 of 3)
    (st.path / "ledger.jsonl").write_bytes(data[:cut])
    before = snapshot(st.path)
    with pytest.raises(UnlearnkitError, match="older than the models"):
        Store.open(st.path)
    assert snapshot(st.path) == before


def test_current_naming_a_missing_version_rolls_back_without_deleting(st):
    (st.path / "CURRENT").write_text("v000009\n")
    with pytest.warns(UserWarning, match="rolled back to v000003"):
        again = Store.open(st.path)
    assert again.version == "v000003" and (st.path / "CURRENT").read_text() == "v000003\n"


def test_unexplained_model_directory_is_kept_and_reported(st):
    stray = st.path / "models" / "v000007"
    shutil.copytree(st.version_dir, stray)  # a version the ledger does not know (not the next link)
    (stray / "receipt.json").write_text("{}")
    with pytest.warns(UserWarning, match="kept models/v000007"):
        again = Store.open(st.path)
    assert stray.is_dir() and any("v000007" in n for n in again.notes)
    with pytest.warns(UserWarning, match="kept models/v000007"):  # reported again by the request's own check
        receipt = again.request([7])
    assert receipt.version == "v000008" and stray.is_dir()  # named above it, and it is still not deleted


@pytest.mark.parametrize("text", ["../../elsewhere", "/tmp", "v1", "models/v000001"])
def test_current_must_be_a_plain_version_name(tmp_path, st, text):
    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(st.version_dir, elsewhere)
    (st.path / "CURRENT").write_text(text + "\n")
    before = snapshot(st.path)
    with pytest.raises(UnlearnkitError, match="not a version name"):
        Store.open(st.path)
    assert snapshot(st.path) == before and elsewhere.is_dir()


def test_next_version_name_is_above_every_name_seen(st):
    """A format-1 ledger (no chain) with a middle line removed: the next request must not reuse v000003."""
    to_format1(st.path)
    lines = (st.path / "ledger.jsonl").read_text().splitlines(keepends=True)
    (st.path / "ledger.jsonl").write_text("".join(lines[:2] + lines[3:]))  # request 2's line removed
    with pytest.warns(UserWarning, match="migrated"):
        again = Store.open(st.path)
    assert again.version == "v000003" and len(ledger(st.path)) == 3
    receipt = again.request([7, 8])
    assert receipt.version == "v000004"  # counting requests gave v000003: the current model's own directory
    assert Store.open(st.path).version == "v000004"
    assert "prev" in ledger(st.path)[-1]  # chained from the migration on


def test_format1_store_opens_and_is_migrated_to_a_chain(st):
    to_format1(st.path)
    with pytest.warns(UserWarning, match="migrated the store to format 2"):
        again = Store.open(st.path)
    assert json.loads((st.path / "store.json").read_text())["format_version"] == 2
    assert [e["seq"] for e in ledger(st.path)] == [0, 1, 2, 3] and again.forgotten_ids.tolist() == [1, 2, 3, 4, 5, 6]
    assert Store.open(st.path).version == "v000003"


def test_stale_temporaries_are_cleaned_on_open(st):
    stale = [st.path / ".CURRENT.0123abcd.tmp", st.path / "models" / ".v000004.89abcdef",
             st.path / "models" / ".pgu-0123abcd.safetensors"]
    stale[0].write_text("v000000\n")
    stale[1].mkdir()
    (stale[1] / "model.safetensors").write_bytes(b"x")
    stale[2].write_bytes(b"x")
    keep = st.path / "notes.txt"  # not the store's: never touched
    keep.write_text("mine")
    Store.open(st.path)
    assert not any(p.exists() for p in stale) and keep.read_text() == "mine"


def test_next_name_counts_directories_and_staging_names(tmp_path):
    from unlearnkit.store.versions import Versions

    v = Versions(tmp_path)
    (tmp_path / "models").mkdir()
    assert v.next_name([{"version": "v000000"}]) == "v000001"
    (tmp_path / "models" / "v000004").mkdir()
    (tmp_path / "models" / ".v000006.0123abcd").mkdir()
    assert v.next_name([{"version": "v000000"}, {"version": "v000002"}]) == "v000007"
    assert v.next_name([{"version": "v000009"}]) == "v000010"
    (tmp_path / "CURRENT").write_text("v000004\n")
    assert v.read_pointer() == "v000004"
