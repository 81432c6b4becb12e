"""``Store``: creating, opening, reconciling and verifying a store; its state (see docs/deletion-requests.md)."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import Subset

from ..checkpoint import META, WEIGHTS, read_meta
from ..errors import UnlearnkitError
from ..utils import environment_info, state_dict_hash, to_jsonable
from . import files as F
from .config import StoreConfig
from .ledger import Ledger, canonical, resolve_key, sign
from .receipt import Receipt
from .versions import (FORGOTTEN_FILE, PGU_CACHE_FILE, RECEIPT_FILE, VERSION_RE, Versions, version_files,
                       version_number)

STORE_FORMAT = 2  # 1: per-line checksums (migrated to 2 on open); 2: hash chain, optional signing key
STORE_FILE = "store.json"
LEDGER_FILE = "ledger.jsonl"
LOCK_FILE = ".lock"
TRAINING_IDS_FILE = "training_ids.txt"
INITIAL_WEIGHTS = "initial_weights"  # the copy of model_args.weights (retrain starts from it)
KEY_HINT = "give its key with --key-file FILE or $UNLEARNKIT_STORE_KEY (Python: key=...)"


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def info_digest(info: dict) -> str:
    return hashlib.sha256(canonical({k: v for k, v in info.items() if k != "mac"})).hexdigest()


def contained_weights(meta: dict, root: Path, named: str) -> dict:
    """``meta`` with ``model_args.weights`` resolved inside ``root`` (what the user named); else an error."""
    args = meta.get("model_args") or {}
    weights = args.get("weights")
    if not weights:
        return meta
    path = Path(str(weights))
    path = (path if path.is_absolute() else root / path).resolve()
    if not path.is_relative_to(Path(root).resolve()) or not path.is_file():
        raise UnlearnkitError(f"model_args.weights {str(weights)[:200]!r} of {named} is not a file inside "
                              f"{str(root)!r}; copy the weights file into that directory and name it there.")
    return {**meta, "model_args": {**args, "weights": str(path)}}


class Store:
    """A model store: current model, ledger of deletion requests, gates and policy (see module doc)."""

    def __init__(self, path: Path, info: dict, *, data_root: str | None = None, key: bytes | None = None):
        import filelock

        self.path = Path(path)
        self.info = info
        self.config = StoreConfig.from_dict(info["config"])
        self.data_root = data_root
        self.key = key
        self.ledger = Ledger(self.path / LEDGER_FILE, key)
        self.versions = Versions(self.path)
        self._lock = filelock.FileLock(str(self.path / LOCK_FILE))
        self._splits = None
        self.notes: list[str] = []

    @property
    def entries(self) -> list[dict]:
        return self.ledger.entries

    # ---- creation --------------------------------------------------------------------------
    @classmethod
    def create(cls, path: str | os.PathLike, checkpoint: str | os.PathLike, *, training_ids=None,
               data_root: str | None = None, key: str | bytes | None = None, **config) -> "Store":
        """Start a store at ``path`` (must not exist, or be empty) from a checkpoint of ``unlearnkit train``.

        ``training_ids``: the forget-able training ids (default: the whole training set).
        ``key``: sign the store (HMAC-SHA256; default $UNLEARNKIT_STORE_KEY, none when unset).
        ``config``: fields of ``StoreConfig`` (gates, methods, retrain policy, ...).
        """
        from ..workflow import load_original

        path, key = Path(path), resolve_key(key)
        if (path / STORE_FILE).exists():
            raise UnlearnkitError(f"{str(path)!r} is already a store; use another directory.")
        if path.exists() and (not path.is_dir() or any(path.iterdir())):
            raise UnlearnkitError(f"{str(path)!r} exists and is not an empty directory; use another directory.")
        store_config = StoreConfig(**config)
        model, meta, splits = load_original(checkpoint, data_root=data_root, device="cpu")
        if meta.get("init"):  # its retrains would silently start from a fresh draw instead
            raise UnlearnkitError(f"Checkpoint {str(checkpoint)!r} was trained from init weights (--init); a store "
                                  "cannot carry an init yet: train it with --model-arg weights=FILE, FILE inside "
                                  "the checkpoint directory.")
        meta = contained_weights(meta, Path(checkpoint), f"checkpoint {str(checkpoint)!r}")
        ids = cls._training_ids_arg(training_ids, len(splits.train))
        info = {"format_version": STORE_FORMAT, "created": now(), "original_hash": state_dict_hash(model),
                "model": {k: meta[k] for k in ("model", "model_args", "num_classes") if k in meta},
                "dataset": meta["dataset"], "recipe": meta.get("recipe"),
                "training_ids": {"count": int(len(ids)), "sha256": F.ids_sha256(ids),
                                 "file": None if training_ids is None else TRAINING_IDS_FILE},
                "config": store_config.to_dict(), "signed": key is not None}
        weights_src = (meta.get("model_args") or {}).get("weights")
        if weights_src:
            name = INITIAL_WEIGHTS + Path(weights_src).suffix
            meta = {**meta, "model_args": {**meta["model_args"], "weights": name}}
            info["model"]["model_args"] = meta["model_args"]
        try:
            path.mkdir(parents=True, exist_ok=True)
            store = cls(path, to_jsonable(info), data_root=data_root, key=key)
            with store._locked():
                store._write_new(model, meta, splits, ids, training_ids is not None, checkpoint, weights_src)
        except OSError as e:
            raise UnlearnkitError(f"store-init failed: {F.describe(e)} ({e.filename or path}); {str(path)!r} is "
                                  "not a store. Remove it and run store-init again.") from e
        store._splits = splits
        return Store.open(path, data_root=data_root, key=key)

    @staticmethod
    def _training_ids_arg(training_ids, n: int) -> np.ndarray:
        if training_ids is None:
            return np.arange(n, dtype=np.int64)
        ids = np.asarray(training_ids)
        if ids.dtype.kind not in "iu" or ids.size == 0:
            raise UnlearnkitError("training_ids must be a non-empty array of integer sample ids.")
        ids = np.unique(ids.astype(np.int64))
        if ids[0] < 0 or ids[-1] >= n:
            bad = ids[0] if ids[0] < 0 else ids[-1]
            raise UnlearnkitError(f"Training id {int(bad)} is out of range; the dataset has ids 0..{n - 1}.")
        return ids

    def _write_new(self, model, meta, splits, ids, ids_file: bool, checkpoint, weights_src) -> None:
        from ..training import accuracy

        if ids_file:
            F.atomic_write(self.path / TRAINING_IDS_FILE, F.ids_text(ids).encode())
        if weights_src:
            F.atomic_write(self.path / meta["model_args"]["weights"], Path(weights_src).read_bytes())
        F.make_dir(self.versions.models)
        base_ra = accuracy(model, Subset(splits.train, ids.tolist()))
        version = "v000000"
        lineage = {"version": version, "store_original": self.info["original_hash"], "request_id": None,
                   "parent": None}
        files, hashes = version_files(model, meta, np.zeros(0, np.int64), None, lineage)
        self.versions.write(version, files)
        self.versions.point_to(version)
        self.ledger.create({"kind": "init", "request_id": "init", "time": now(), "status": "init",
                            "model_after": self.info["original_hash"], "version": version, **hashes,
                            "figures": {"RA": base_ra}, "baseline_ra": base_ra, "checkpoint": str(checkpoint),
                            "store_sha256": info_digest(self.info), "versions": environment_info()})
        self._write_info()

    def _write_info(self) -> None:
        info = {k: v for k, v in self.info.items() if k != "mac"}
        if self.key is not None:
            info["mac"] = sign(self.key, canonical(info))
        self.info = info
        F.atomic_write(self.path / STORE_FILE, (json.dumps(info, indent=2, sort_keys=True) + "\n").encode())

    # ---- opening ---------------------------------------------------------------------------
    @classmethod
    def open(cls, path: str | os.PathLike, *, data_root: str | None = None, lock_timeout: float | None = None,
             key: str | bytes | None = None) -> "Store":
        """Open a store: verify its ledger chain, reconcile it after a crash, check its current model.

        ``lock_timeout`` overrides the store's: seconds to wait for another process's request.
        ``key``: the store's signing key (default $UNLEARNKIT_STORE_KEY); required for a signed store.
        """
        path = Path(path)
        if not (path / STORE_FILE).is_file():
            raise UnlearnkitError(f"{str(path)!r} is not an unlearnkit store (no {STORE_FILE}); "
                                  "create one with `unlearnkit store-init`.")
        try:
            info = json.loads((path / STORE_FILE).read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise UnlearnkitError(f"{path / STORE_FILE} is not valid JSON: {e}") from None
        if not isinstance(info, dict) or info.get("format_version") not in (1, STORE_FORMAT):
            fmt = info.get("format_version") if isinstance(info, dict) else None
            raise UnlearnkitError(f"Store {str(path)!r} has format {fmt!r}; this unlearnkit reads 1 and {STORE_FORMAT}.")
        store = cls(path, info, data_root=data_root, key=resolve_key(key))
        store._check_info()
        if lock_timeout is not None:
            store.config = store.config.replace(lock_timeout=float(lock_timeout))
        if info["format_version"] == 1:
            store._migrate()
        store.sync()
        return store

    def _check_info(self) -> None:
        signed = bool(self.info.get("signed"))
        where = self.path / STORE_FILE
        if signed and self.key is None:
            raise UnlearnkitError(f"Store {str(self.path)!r} is signed; {KEY_HINT}.")
        if not signed and self.key is not None:
            raise UnlearnkitError(f"A store key was given but {where} is not signed (store created without a key, "
                                  "or its signature was removed); open it without the key, or restore store.json.")
        if signed and not hmac.compare_digest(str(self.info.get("mac", "")),
                                              sign(self.key, canonical({k: v for k, v in self.info.items()
                                                                        if k != "mac"}))):
            raise UnlearnkitError(f"{where} has no valid signature under the store key (edited, or another key); "
                                  "nothing was changed.")

    def _migrate(self) -> None:
        """Format 1 -> 2: check the per-line checksums, then rewrite the ledger as a hash chain (once)."""
        try:
            with self._locked():
                entries, tail = self.ledger.read_legacy()
                if tail and self.versions.read_pointer() != self._head_of(entries)["version"]:
                    raise UnlearnkitError(f"{self.ledger.path} ends with a half-written line and CURRENT does not "
                                          "name its head; open it once with the unlearnkit that wrote it.")
                self.ledger.rewrite(entries)
                self.info["format_version"] = STORE_FORMAT
                self._write_info()
        except OSError as e:
            raise UnlearnkitError(f"Store {str(self.path)!r} has format 1 and must be migrated once, which needs "
                                  f"write access: {F.describe(e)}.") from e
        self._note(f"migrated the store to format {STORE_FORMAT}: {LEDGER_FILE} is now a hash chain")

    def sync(self) -> None:
        """Re-read and verify the ledger, reconcile the store if it needs it, check the current model."""
        _, tail = self.ledger.read()
        if tail or self.versions.read_pointer() != self.head["version"] or self._leftovers()[0]:
            try:
                with self._locked():
                    self._reconcile()
            except OSError as e:
                if tail or self.versions.read_pointer() != self.head["version"]:
                    raise UnlearnkitError(f"Store {str(self.path)!r} needs repair after an interrupted request "
                                          f"but cannot be written: {F.describe(e)}; nothing was changed.") from e
                self._note(f"left temporary files in place (store not writable: {F.describe(e)})")
        for p in self._leftovers()[1]:
            self._note(f"kept models/{p.name}: the ledger does not explain it (remove it yourself if it is not needed)")
        self._verify_current()

    # ---- locking -----------------------------------------------------------------------------
    @contextlib.contextmanager
    def _locked(self):
        import filelock

        timeout = self.config.lock_timeout
        try:
            self._lock.acquire(timeout=timeout)
        except filelock.Timeout:
            raise UnlearnkitError(f"Store {str(self.path)!r} is locked by another process (waited {timeout:g} s); "
                                  "try again when its request is done, or raise lock_timeout.") from None
        try:
            yield
        finally:
            self._lock.release()

    # ---- reconciling -------------------------------------------------------------------------
    @staticmethod
    def _head_of(entries: list[dict]) -> dict:
        return next(e for e in reversed(entries) if e.get("status") in ("init", "applied"))

    @property
    def head(self) -> dict:
        """The ledger entry of the current model (init, or the last applied request)."""
        return self._head_of(self.entries)

    def _note(self, msg: str) -> None:
        self.notes.append(msg)
        warnings.warn(msg, stacklevel=3)

    def _staged(self, name: str | None) -> dict | None:
        """The receipt in models/<name> when it is the ledger's next entry (an interrupted request's); else None."""
        if version_number(name) is None:
            return None
        vdir = self.versions.dir(name)
        try:
            entry = json.loads((vdir / RECEIPT_FILE).read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(entry, dict) or entry.get("version") != name or self.ledger.problem(
                entry, len(self.entries), self.ledger.last_hash) is not None:
            return None
        if entry.get("request_id") in {e.get("request_id") for e in self.entries}:
            return None
        try:
            return entry if F.file_sha256(vdir / WEIGHTS) == entry.get("model_sha256") else None
        except OSError:
            return None

    def _plan(self) -> tuple[str, dict | None]:
        """What reconciling does with CURRENT: 'keep', 'forward' (staged receipt) or 'back'; else an error."""
        current, head = self.versions.read_pointer(), self.head
        if current == head["version"]:
            return "keep", None
        staged = self._staged(current)
        if staged is not None:
            return "forward", staged
        current_exists = current is not None and self.versions.dir(current).is_dir()
        if not current_exists and (self.versions.dir(head["version"]) / WEIGHTS).is_file():
            return "back", None
        raise UnlearnkitError(
            f"CURRENT names {current!r} but {LEDGER_FILE} ends at {head['version']} (request {head['request_id']})"
            + (", whose directory is missing" if not self.versions.dir(head["version"]).is_dir() else "")
            + ": the ledger looks older than the models (restored from a backup, or cut). Nothing was changed or "
            "deleted; restore the complete ledger.jsonl.")

    def _reconcile(self) -> None:
        """Bring CURRENT and the model directories in line with the ledger (caller holds the lock).

        Never deletes a model the ledger does not explain: such a state is an error, or kept and noted."""
        _, tail = self.ledger.read()
        if tail:  # an interrupted append; cut it only when what remains is a state we can explain
            self._plan()
            self.ledger.truncate(self.ledger.path.stat().st_size - len(tail))
            self._note(f"{LEDGER_FILE}: removed a half-written last line ({len(tail)} bytes) left by an "
                       "interrupted request")
        action, staged = self._plan()
        if action == "forward":
            version = staged["version"]
            entry = self.ledger.seal({**staged, "recovered": True})
            self.ledger.append(entry)
            self._note(f"rolled forward to {version}: request {staged['request_id']} had swapped the model but "
                       "not yet written its ledger entry")
        elif action == "back":
            current = self.versions.read_pointer()
            self.versions.point_to(self.head["version"])
            self._note(f"rolled back to {self.head['version']}: CURRENT named {current!r}, which does not exist")
        self.clean()

    def _leftovers(self) -> tuple[list[Path], list[Path]]:
        """(what reconciling removes, what it keeps because the ledger does not explain it)."""
        removable, unexplained = list(self.versions.temporaries()), []
        head = self.head["version"]
        recorded = {e.get("version") for e in self.entries if e.get("status") in ("init", "applied")}
        models = self.versions.models
        for p in sorted(models.iterdir()) if models.is_dir() else []:
            if p.name == head or p in removable:
                continue
            superseded = p.name in recorded and version_number(p.name) < version_number(head)
            if superseded:
                if not self.config.keep_old_models:
                    removable.append(p)
            elif VERSION_RE.fullmatch(p.name) and self._staged(p.name) is not None \
                    and self.versions.read_pointer() != p.name:
                removable.append(p)  # written by a request interrupted before its swap
            else:
                unexplained.append(p)
        return removable, unexplained

    def clean(self) -> None:
        """Remove what the ledger explains as left over: temporaries, superseded and interrupted versions."""
        for p in self._leftovers()[0]:
            F.remove(p)

    # ---- verifying ---------------------------------------------------------------------------
    def _verify_current(self) -> None:
        head, entries = self.head, self.entries
        if entries[0].get("store_sha256") and entries[0]["store_sha256"] != info_digest(self.info):
            raise UnlearnkitError(f"{self.path / STORE_FILE} differs from the one recorded when the store was created "
                                  "(edited gates, ids or config); nothing was changed.")
        vdir = self.versions.dir(head["version"])
        weights = vdir / WEIGHTS
        if not weights.is_file():
            raise UnlearnkitError(f"The current model file {weights} is missing; the store is damaged.")
        if F.file_sha256(weights) != head["model_sha256"]:
            raise UnlearnkitError(f"Model file {weights} does not match the sha256 recorded in the ledger "
                                  "(corrupted or replaced by another model's file); nothing was changed.")
        forgotten = vdir / FORGOTTEN_FILE
        if not forgotten.is_file() or F.file_sha256(forgotten) != head["forgotten_sha256"]:
            raise UnlearnkitError(f"{forgotten} is missing or does not match the sha256 recorded in the ledger; "
                                  "the store is damaged.")
        if head.get("checkpoint_sha256") and F.file_sha256(vdir / META) != head["checkpoint_sha256"]:
            raise UnlearnkitError(f"{vdir / META} does not match the sha256 recorded in the ledger (edited); "
                                  "nothing was changed.")
        self._verify_staged_copy(vdir, head)
        if (vdir / PGU_CACHE_FILE).is_file():
            self.check_pgu_cache(vdir / PGU_CACHE_FILE)
        meta = read_meta(vdir)
        if meta.get("model") != self.info["model"].get("model") or meta.get("weights_sha") != head["model_after"]:
            raise UnlearnkitError(f"{vdir} holds another model than this store's ({meta.get('model')!r}, "
                                  f"weights {meta.get('weights_sha')}); nothing was changed.")

    def _verify_staged_copy(self, vdir: Path, head: dict) -> None:
        """The receipt written with the version must agree with the ledger's head on what the model is."""
        path = vdir / RECEIPT_FILE
        if head.get("kind") != "request" or not path.is_file():
            return
        try:
            copy = json.loads(path.read_text())
        except (OSError, ValueError):
            copy = {}
        fields = ("request_id", "model_after", "model_sha256", "checkpoint_sha256", "forgotten_sha256")
        if not isinstance(copy, dict) or any(copy.get(k) != head.get(k) for k in fields if k in copy):
            raise UnlearnkitError(f"The ledger's head receipt and {path} disagree on the current model (one of them "
                                  "was rewritten); nothing was changed.")

    def check_pgu_cache(self, path: Path) -> None:
        if F.file_sha256(path) != self.head.get("pgu_cache_sha256"):
            raise UnlearnkitError(f"PGU cache {path} does not match the sha256 recorded in the ledger "
                                  "(corrupted or replaced); nothing was changed. Delete it to have it rebuilt.")

    # ---- state -------------------------------------------------------------------------------
    @property
    def version(self) -> str:
        return self.head["version"]

    @property
    def model_hash(self) -> str:
        return self.head["model_after"]

    @property
    def version_dir(self) -> Path:
        return self.versions.dir(self.version)

    @property
    def forgotten_ids(self) -> np.ndarray:
        return F.read_ids_text(self.version_dir / FORGOTTEN_FILE)

    @property
    def training_ids(self) -> np.ndarray:
        spec = self.info["training_ids"]
        if spec.get("file"):
            ids = F.read_ids_text(self.path / spec["file"])
            if F.ids_sha256(ids) != spec["sha256"]:
                raise UnlearnkitError(f"{self.path / spec['file']} does not match its recorded sha256.")
            return ids
        return np.arange(spec["count"], dtype=np.int64)

    @property
    def retain_ids(self) -> np.ndarray:
        return np.setdiff1d(self.training_ids, self.forgotten_ids)

    def receipts(self) -> list[Receipt]:
        return [Receipt.from_dict(e) for e in self.entries if e.get("kind") == "request"]

    def splits(self):
        if self._splits is None:
            from ..data import load_dataset
            from ..workflow import dataset_fingerprint

            ds = self.info["dataset"]
            splits = load_dataset(ds["name"], root=self.data_root, **ds.get("args", {}))
            if ds.get("fingerprint") and ds["fingerprint"] != dataset_fingerprint(splits):
                raise UnlearnkitError(f"Store {str(self.path)!r} was made for other {ds['name']} data "
                                      "(fingerprint mismatch).")
            self._splits = splits
        return self._splits

    def load_model(self, device: str | torch.device = "cpu") -> nn.Module:
        """The current model (its weights checked against the ledger's fingerprint)."""
        from ..checkpoint import load_checkpoint

        model, _ = load_checkpoint(self.version_dir, device=device)
        if state_dict_hash(model) != self.model_hash:
            raise UnlearnkitError(f"The weights in {self.version_dir} do not match the ledger's fingerprint "
                                  f"{self.model_hash}; nothing was changed.")
        return model

    def since_retrain(self) -> tuple[int, float, float | None]:
        """(requests unlearned since the last retrain/init, baseline RA, RA of the current model)."""
        count, base = 0, None
        for e in reversed(self.entries):
            if e["status"] == "init" or (e["status"] == "applied" and e.get("method") == "retrain"):
                base = e.get("baseline_ra", e.get("figures", {}).get("RA"))
                break
            if e["status"] == "applied":
                count += 1
        return count, float(base), self.head.get("figures", {}).get("RA")

    # ---- the request (unlearnkit.store.request) ------------------------------------------------
    def request(self, forget_ids, method: str | None = None, *, record_ids: bool | None = None,
                fallback: bool | None = None, audit: str | None = None, **config) -> Receipt:
        """Run one deletion request end to end; returns its ``Receipt`` (also appended to the ledger).

        ``forget_ids``: training ids to forget (any int sequence, or a path to a .txt/.npy file).
        ``method``: a registered method (default: the store's first configured method);
        ``config``: overrides of its config for this request. A request refused by the gates returns
        a receipt with ``status == "refused"`` (``receipt.exit_code == 3``) and leaves the model as it was.
        ``audit``: "relearn", "full" or "full:K": an applied request's receipt also records an audit of
        the deletion (``receipt.extra["audit"]``; docs/deletion-requests.md).
        """
        from .request import run_request

        return run_request(self, forget_ids, method, record_ids=record_ids, fallback=fallback, overrides=config,
                           audit=audit)

    # ---- display -----------------------------------------------------------------------------
    def summary(self) -> dict[str, Any]:
        count, base_ra, current_ra = self.since_retrain()
        statuses = [e["status"] for e in self.entries if e.get("kind") == "request"]
        return {"store": str(self.path), "model": self.info["model"].get("model"), "version": self.version,
                "model_hash": self.model_hash, "original_hash": self.info["original_hash"],
                "training_ids": self.info["training_ids"]["count"], "forgotten": int(self.head.get("num_forgotten", 0)),
                "requests": len(statuses), "applied": statuses.count("applied"), "refused": statuses.count("refused"),
                "noop": statuses.count("noop"), "since_retrain": count, "signed": bool(self.info.get("signed")),
                "head_hash": self.entries[-1].get("hash"),
                "retain_drift": None if current_ra is None else base_ra - current_ra}
