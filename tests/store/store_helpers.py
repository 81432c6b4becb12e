"""Helpers of the store tests: make a store, snapshot its files, read and write its ledger."""

from __future__ import annotations

import json
from pathlib import Path

from unlearnkit.store import Store

LOOSE = dict(forget_margin=100.0, max_retain_drop=100.0, method_configs={"finetune": {"epochs": 1}})


def make_store(tmp_path, checkpoint, name="store", **config) -> Store:
    return Store.create(tmp_path / name, checkpoint, **{**LOOSE, **config})


def snapshot(path: Path) -> dict[str, bytes]:
    """Every file of a store except the lock file (to show that nothing changed)."""
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*"))
            if p.is_file() and p.name != ".lock"}


def ledger(path: Path) -> list[dict]:
    return [json.loads(line) for line in (path / "ledger.jsonl").read_text().splitlines()]


def write_ledger(path: Path, entries: list[dict]) -> None:
    from unlearnkit.store.ledger import canonical

    (path / "ledger.jsonl").write_bytes(b"".join(canonical(e) + b"\n" for e in entries))


def reseal(entry: dict) -> dict:
    """``entry`` with its hash recomputed (what someone editing the ledger without the key can do)."""
    from unlearnkit.store.ledger import entry_hash

    entry = {k: v for k, v in entry.items() if k not in ("hash", "mac")}
    entry["hash"] = entry_hash(entry)
    return entry


def to_format1(path: Path) -> None:
    """Turn a store into the format-1 layout (per-line checksum, no chain) that earlier unlearnkit wrote."""
    from unlearnkit.store.ledger import canonical, legacy_checksum

    lines = []
    for e in ledger(path):
        e = {k: v for k, v in e.items() if k not in ("seq", "prev", "hash", "mac", "store_sha256")}
        e["checksum"] = legacy_checksum(e)
        lines.append(canonical(e) + b"\n")
    (path / "ledger.jsonl").write_bytes(b"".join(lines))
    info = json.loads((path / "store.json").read_text())
    info = {k: v for k, v in info.items() if k not in ("signed", "mac")}
    info["format_version"] = 1
    (path / "store.json").write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")


def built_store(tmp_path_factory, checkpoint, requests, **config) -> tuple[Path, list[bytes]]:
    """A store after ``requests`` (lists of ids) and its ledger after each step (build once, copy per test)."""
    st = make_store(tmp_path_factory.mktemp("built"), checkpoint, **config)
    ledgers = [(st.path / "ledger.jsonl").read_bytes()]
    for ids in requests:
        st.request(ids)
        ledgers.append((st.path / "ledger.jsonl").read_bytes())
    return st.path, ledgers


def copy_store(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst
