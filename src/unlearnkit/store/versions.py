"""Model versions: ``models/vNNNNNN`` directories, the ``CURRENT`` pointer and its atomic swap.

A version directory is written under a staging name (``.vNNNNNN.<hex>``) and renamed into place,
so it exists complete or not at all. Names are never reused: the next one is above every name the
ledger records and every directory present. ``CURRENT`` holds one plain version name; anything
else (a path, ``../elsewhere``) is refused before the store acts on it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import uuid
from pathlib import Path

import numpy as np
import torch.nn as nn

from ..checkpoint import META, MODEL_META_KEYS, WEIGHTS
from ..errors import UnlearnkitError
from ..utils import environment_info, state_dict_hash, to_jsonable
from .files import TMP_SUFFIX, atomic_write, fsync_dir, ids_text, make_dir, remove, temp_name, write_file

MODELS_DIR = "models"
CURRENT_FILE = "CURRENT"
RECEIPT_FILE = "receipt.json"
FORGOTTEN_FILE = "forgotten_ids.txt"
PGU_CACHE_FILE = "pgu_gram.safetensors"
VERSION_RE = re.compile(r"v(\d{6,})")
STAGING_RE = re.compile(r"\.(v\d{6,})\.[0-9a-f]{8}")
TEMP_RE = re.compile(r"\..+\.[0-9a-f]{8}" + re.escape(TMP_SUFFIX))
PGU_STAGING_PREFIX = ".pgu-"


def version_name(number: int) -> str:
    return f"v{number:06d}"


def version_number(name: str | None) -> int | None:
    m = VERSION_RE.fullmatch(name or "")
    return int(m.group(1)) if m else None


def forgotten_record(before: dict | None, store_ids: np.ndarray) -> dict:
    """A version's ``forgotten`` checkpoint record: its base checkpoint's ids and requests plus every id the
    store forgot, so ``unlearnkit forget`` / ``eval`` on a version directory never bring them back."""
    before = before if isinstance(before, dict) else {}
    ids = np.union1d(np.asarray(before.get("ids", []), dtype=np.int64), np.asarray(store_ids, dtype=np.int64))
    store_request = {"kind": "ids", "source": "deletion store", "num_ids": int(len(np.unique(store_ids)))}
    return {"ids": ids.tolist(), "requests": [*before.get("requests", []), store_request]}


def version_files(model: nn.Module, meta: dict, forgotten: np.ndarray, cache_bytes: bytes | None,
                  lineage: dict) -> tuple[dict[str, bytes], dict[str, str | int]]:
    """The files of a version directory (name -> bytes) and the hashes a receipt commits to."""
    from safetensors.torch import save

    state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    weights = save(state)
    keep = {k: meta[k] for k in MODEL_META_KEYS if k in meta}
    if len(forgotten):
        keep["forgotten"] = forgotten_record(meta.get("forgotten"), forgotten)
    record = {"format_version": 1, "model_class": type(model).__name__, "weights_sha": state_dict_hash(state),
              "environment": environment_info(), **keep, "lineage": lineage}
    checkpoint = (json.dumps(to_jsonable(record), indent=2, sort_keys=True) + "\n").encode()
    forgotten_text = ids_text(forgotten).encode()
    files = {WEIGHTS: weights, META: checkpoint, FORGOTTEN_FILE: forgotten_text}
    hashes = {"model_sha256": hashlib.sha256(weights).hexdigest(),
              "checkpoint_sha256": hashlib.sha256(checkpoint).hexdigest(),
              "forgotten_sha256": hashlib.sha256(forgotten_text).hexdigest(),
              "num_forgotten": int(len(np.unique(forgotten)))}
    if cache_bytes is not None:
        files[PGU_CACHE_FILE] = cache_bytes
        hashes["pgu_cache_sha256"] = hashlib.sha256(cache_bytes).hexdigest()
    return files, hashes


class Versions:
    """The ``models/`` directory and the ``CURRENT`` pointer of one store."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.models = self.root / MODELS_DIR
        self.pointer = self.root / CURRENT_FILE

    def dir(self, name: str) -> Path:
        return self.models / name

    def read_pointer(self) -> str | None:
        """The version ``CURRENT`` names (None when missing or empty); anything but a version name is an error."""
        try:
            text = self.pointer.read_bytes()[:200].decode("utf-8", "replace").strip()
        except FileNotFoundError:
            return None
        if not text:
            return None
        if version_number(text) is None:
            shown = text if len(text) <= 60 else text[:57] + "..."
            raise UnlearnkitError(f"{self.pointer} holds {shown!r}, not a version name like v000003; "
                                  "nothing was changed. Write the ledger's current version into it.")
        return text

    def next_name(self, entries: list[dict]) -> str:
        """A version name above every one the ledger records and every directory present (never reused)."""
        numbers = [version_number(e.get("version")) for e in entries]
        if self.models.is_dir():
            for p in self.models.iterdir():
                m = STAGING_RE.fullmatch(p.name)
                numbers.append(version_number(m.group(1) if m else p.name))
        return version_name(max((n for n in numbers if n is not None), default=-1) + 1)

    def write(self, name: str, files: dict[str, bytes]) -> Path:
        """Write ``models/<name>`` complete or not at all (staging dir, fsync, rename)."""
        target = self.dir(name)
        if target.exists():
            raise UnlearnkitError(f"internal error: {target} exists; a version name is never reused")
        staging = self.models / f".{name}.{uuid.uuid4().hex[:8]}"
        make_dir(staging)
        try:
            for filename, blob in files.items():
                write_file(staging / filename, blob)
            fsync_dir(staging)
            os.rename(staging, target)
        except BaseException:
            remove(staging)
            raise
        fsync_dir(self.models)
        return target

    def point_to(self, name: str) -> None:
        atomic_write(self.pointer, f"{name}\n".encode())

    def swap(self, new: str, old: str) -> Path:
        """Point ``CURRENT`` at ``new``; returns a prepared file that ``undo`` renames back (no space needed)."""
        undo = temp_name(self.pointer)
        write_file(undo, f"{old}\n".encode())
        try:
            self.point_to(new)
        except BaseException:
            remove(undo)
            raise
        return undo

    def undo(self, undo: Path) -> None:
        os.replace(undo, self.pointer)
        fsync_dir(self.root)

    def temporaries(self) -> list[Path]:
        """Staging directories and temp files the store's own writes leave when interrupted."""
        found = [p for p in self.root.iterdir() if TEMP_RE.fullmatch(p.name)]
        if self.models.is_dir():
            found += [p for p in self.models.iterdir()
                      if STAGING_RE.fullmatch(p.name) or p.name.startswith(PGU_STAGING_PREFIX)]
        return found
