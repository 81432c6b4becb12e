"""The ledger alone: a hash chain of JSON lines, optionally signed; no model involved."""

from __future__ import annotations

import pytest

from unlearnkit.errors import UnlearnkitError
from unlearnkit.store.ledger import GENESIS, Ledger, line_of


def chain(tmp_path, n=3, key=None) -> Ledger:
    led = Ledger(tmp_path / "ledger.jsonl", key)
    led.create({"kind": "init", "status": "init", "version": "v000000"})
    for i in range(1, n):
        led.append(led.seal({"kind": "request", "status": "applied", "version": f"v{i:06d}"}))
    return led


def test_chain_links_and_reads_back(tmp_path):
    led = chain(tmp_path)
    entries, tail = Ledger(led.path).read()
    assert tail == b"" and [e["seq"] for e in entries] == [0, 1, 2]
    assert entries[0]["prev"] == GENESIS and all(b["prev"] == a["hash"] for a, b in zip(entries, entries[1:]))


def test_half_written_last_line_is_returned_as_the_tail(tmp_path):
    led = chain(tmp_path)
    with open(led.path, "ab") as f:
        f.write(b'{"kind":"req')
    entries, tail = Ledger(led.path).read()
    assert len(entries) == 3 and tail == b'{"kind":"req'


def test_stale_seal_is_not_appended(tmp_path):
    led = chain(tmp_path, 1)
    sealed = led.seal({"kind": "request"})
    led.append(led.seal({"kind": "request"}))
    with pytest.raises(UnlearnkitError, match="another ledger head"):
        led.append(sealed)


def test_key_signs_every_line(tmp_path):
    led = chain(tmp_path, key=b"k")
    assert Ledger(led.path, b"k").read()[0][-1]["mac"]
    with pytest.raises(UnlearnkitError, match="line 1 has no valid signature"):
        Ledger(led.path, b"other").read()
    (tmp_path / "unsigned").mkdir()
    unsigned = chain(tmp_path / "unsigned")
    with pytest.raises(UnlearnkitError, match="line 1 has no valid signature"):
        Ledger(unsigned.path, b"k").read()


def test_garbage_line_is_a_clear_error(tmp_path):
    led = chain(tmp_path)
    lines = led.path.read_bytes().split(b"\n")
    lines[1] = b"\xff\xfe not json"
    led.path.write_bytes(b"\n".join(lines))
    with pytest.raises(UnlearnkitError, match="line 2 is corrupted"):
        Ledger(led.path).read()
    led.path.write_bytes(line_of({"kind": "request"}))
    with pytest.raises(UnlearnkitError, match="line 1 is corrupted or was edited"):
        Ledger(led.path).read()
