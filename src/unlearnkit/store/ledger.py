"""The ledger: an append-only hash chain of receipts, optionally signed (HMAC-SHA256).

Each line is one JSON entry with sorted keys. Entry ``seq`` (0, 1, ...) commits to the previous
entry through ``prev`` (its ``hash``; the first entry's ``prev`` is 64 zeros), and ``hash`` is the
sha256 of the entry without ``hash`` and ``mac``. With a store key, ``mac`` is the HMAC-SHA256 of
``hash`` under that key. Reading verifies the whole chain: an edited line, a removed, inserted or
replayed line are errors, and with a key so is any line an outsider rewrote consistently.

Format 1 ledgers (an unkeyed checksum per line, no chain) are read by ``read_legacy`` so that a
store can migrate them into a chain (``Store.open`` does it once).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
from pathlib import Path

from ..errors import UnlearnkitError
from ..utils import to_jsonable
from .files import ShortWriteError, atomic_write, write_fully

GENESIS = "0" * 64
KEY_ENV = "UNLEARNKIT_STORE_KEY"
CHAIN_FIELDS = ("seq", "prev", "hash", "mac")


def resolve_key(key: str | bytes | None) -> bytes | None:
    """The store key: the argument, else $UNLEARNKIT_STORE_KEY; None when neither is set."""
    if key is None:
        key = os.environ.get(KEY_ENV) or None
    if isinstance(key, str):
        key = key.encode()
    return key or None


def canonical(obj: dict) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def sign(key: bytes, data: bytes) -> str:
    return hmac.new(key, data, hashlib.sha256).hexdigest()


def entry_hash(entry: dict) -> str:
    return hashlib.sha256(canonical({k: v for k, v in entry.items() if k not in ("hash", "mac")})).hexdigest()


def legacy_checksum(entry: dict) -> str:
    body = {k: v for k, v in entry.items() if k != "checksum"}
    return hashlib.sha256(canonical(body)).hexdigest()[:16]


def line_of(entry: dict) -> bytes:
    return canonical(entry) + b"\n"


class Ledger:
    """``ledger.jsonl`` of one store: its verified entries and the one way to add to them."""

    def __init__(self, path: Path, key: bytes | None = None):
        self.path = Path(path)
        self.key = key
        self.entries: list[dict] = []

    @property
    def last_hash(self) -> str:
        return self.entries[-1]["hash"] if self.entries else GENESIS

    # ---- building entries ------------------------------------------------------------------
    def seal(self, entry: dict) -> dict:
        """``entry`` as the next link of the chain (seq, prev, hash and, with a key, mac)."""
        entry = {k: v for k, v in to_jsonable(entry).items() if k not in CHAIN_FIELDS + ("checksum",)}
        entry.update(seq=len(self.entries), prev=self.last_hash)
        entry["hash"] = entry_hash(entry)
        if self.key is not None:
            entry["mac"] = sign(self.key, entry["hash"].encode())
        return entry

    def problem(self, entry: dict, seq: int, prev: str) -> str | None:
        """What is wrong with ``entry`` as link ``seq`` after ``prev``; None when it verifies."""
        if entry.get("hash") != entry_hash(entry):
            return "is corrupted or was edited (its content does not match its hash)"
        if entry.get("seq") != seq or entry.get("prev") != prev:
            return (f"does not follow line {seq} (a ledger line was removed, inserted, replayed or "
                    "rewritten)" if seq else "is not the start of the chain")
        if self.key is not None and not hmac.compare_digest(str(entry.get("mac", "")),
                                                            sign(self.key, entry["hash"].encode())):
            return "has no valid signature under the store key (edited, or signed with another key)"
        return None

    # ---- reading -----------------------------------------------------------------------------
    def _split(self) -> tuple[list[bytes], bytes, bytes]:
        if not self.path.is_file():
            raise UnlearnkitError(f"Store {str(self.path.parent)!r} has no {self.path.name}; it is not a complete store.")
        data = self.path.read_bytes()
        *complete, tail = data.split(b"\n")
        return complete, tail, data

    def _parse(self, raw: bytes, i: int) -> dict:
        try:
            entry = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            entry = None
        if not isinstance(entry, dict):
            raise self._corrupted(i, "is corrupted (not a JSON entry)")
        return entry

    def _corrupted(self, i: int, problem: str) -> UnlearnkitError:
        return UnlearnkitError(f"{self.path} line {i + 1} {problem}; nothing was changed. "
                               "Restore the complete ledger from a backup.")

    def read(self) -> tuple[list[dict], bytes]:
        """Parse and verify the chain; returns (entries, tail) where ``tail`` is a last line without
        its newline (an interrupted append, b"" when none). Sets ``self.entries``."""
        complete, tail, _ = self._split()
        entries: list[dict] = []
        for i, raw in enumerate(complete):
            entry = self._parse(raw, i)
            problem = self.problem(entry, i, entries[-1]["hash"] if entries else GENESIS)
            if problem:
                raise self._corrupted(i, problem)
            entries.append(entry)
        self._check_start(entries)
        self.entries = entries
        return entries, tail

    def read_legacy(self) -> tuple[list[dict], bytes]:
        """Entries of a format-1 ledger (per-line checksum, no chain), checked line by line."""
        complete, tail, _ = self._split()
        entries = []
        for i, raw in enumerate(complete):
            entry = self._parse(raw, i)
            if entry.get("checksum") != legacy_checksum(entry):
                raise self._corrupted(i, "is corrupted (not a complete, checksummed entry)")
            entries.append({k: v for k, v in entry.items() if k != "checksum"})
        self._check_start(entries)
        return entries, tail

    def _check_start(self, entries: list[dict]) -> None:
        if not entries or entries[0].get("kind") != "init":
            raise UnlearnkitError(f"{self.path} does not start with the store's init entry; it is corrupted.")

    # ---- writing -----------------------------------------------------------------------------
    def append(self, entry: dict) -> None:
        """Append a sealed entry: every byte written (a short write is continued), fsynced and
        checked by the file size; on failure the partial line is cut off again and the error raised."""
        if entry.get("seq") != len(self.entries) or entry.get("prev") != self.last_hash:
            raise UnlearnkitError("internal error: a ledger entry sealed for another ledger head")
        line = line_of(entry)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
        try:
            start = os.fstat(fd).st_size
            try:
                write_fully(fd, line)
                os.fsync(fd)
                if os.fstat(fd).st_size != start + len(line):
                    raise ShortWriteError(5, f"{self.path.name} grew by {os.fstat(fd).st_size - start} "
                                             f"bytes instead of {len(line)}")
            except BaseException:
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, start)
                    os.fsync(fd)
                raise
        finally:
            os.close(fd)
        self.entries.append(entry)

    def create(self, entry: dict) -> None:
        """Write a new ledger holding only ``entry`` (sealed as link 0)."""
        self.entries = []
        sealed = self.seal(entry)
        atomic_write(self.path, line_of(sealed))
        self.entries = [sealed]

    def truncate(self, size: int) -> None:
        with open(self.path, "r+b") as f:
            f.truncate(size)
            f.flush()
            os.fsync(f.fileno())

    def rewrite(self, entries: list[dict]) -> None:
        """Replace the whole ledger by ``entries`` chained anew (format-1 migration), atomically."""
        self.entries = []
        sealed = []
        for e in entries:
            sealed.append(self.seal(e))
            self.entries.append(sealed[-1])
        atomic_write(self.path, b"".join(line_of(e) for e in sealed))
