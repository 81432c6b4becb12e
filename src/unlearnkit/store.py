"""Deletion requests as a workflow: a model store with a ledger, receipts, acceptance gates and rollback.

A model owner honours a stream of deletion requests on one production model and must
show what was done. A *store* is a directory::

    STORE/
      store.json          what the store serves: model, dataset, forget-able training ids, gates, policy
      ledger.jsonl        append-only, one JSON receipt per line (each with its own checksum)
      CURRENT             the name of the current model version (written atomically)
      models/v000003/     the current model: model.safetensors + checkpoint.json (a normal checkpoint),
                          forgotten_ids.txt (every id forgotten so far), receipt.json, and
                          pgu_gram.safetensors (PGU's Gram cache, once a PGU request built it)
      .lock               the file lock held by the process acting on the store

``Store.create(path, checkpoint)`` (``unlearnkit store-init``) starts one from a checkpoint
written by ``unlearnkit train``; ``Store.open(path).request(ids, method=...)``
(``unlearnkit request``) runs one deletion request end to end and returns a ``Receipt``.

One request, under the store's lock:

1. reconcile the store (see crash safety below) and check the current model file against the
   sha256 recorded in the ledger; refuse ids outside the training ids and an empty request;
   ids forgotten by an earlier request are reported and not forgotten again;
2. choose the method: a full ``retrain`` when the retrain policy says so, else the requested one
   (and, with ``fallback``, the next ones of the configured ``methods`` list);
3. run it on the current model with retain = training ids minus everything forgotten so far,
   recalibrate BatchNorm running statistics on the retain data (``recalibrate_bn``), evaluate
   UA / RA / TA / MIA-Efficacy (``unlearnkit.evaluate``) and check the acceptance gates;
4. accepted: write ``models/vNNNNNN`` (temp dir + rename), point ``CURRENT`` at it (atomic
   replace), append the receipt to the ledger (one ``write`` of the whole line, then fsync),
   delete the previous model's files (they still hold the forgotten data's influence);
   refused: the model is not touched and the ledger records the refusal with its figures.

Crash safety: a process killed at any point leaves either the old model or the new one, and
opening the store reconciles it with the ledger: a half-written ledger line (no final newline,
or not JSON) is cut off with a warning; a ``CURRENT`` newer than the ledger is rolled forward
when its version directory holds the complete receipt of a request that started from the
ledger's model (the receipt is appended, marked ``recovered``), and rolled back otherwise;
staging and orphan directories are removed. A corrupted line in the middle of the ledger, or a
model file whose sha256 differs from the ledger's, is a one-line error and nothing is changed.

Our choices (not from a paper):
* The receipt holds the sha256 of the sorted forget ids (``sha256("\\n".join(ids) + "\\n")``,
  i.e. ``sort -nu ids.txt | sha256sum`` of a one-id-per-line file), not the ids, unless
  ``record_ids``. The store does keep the cumulative forgotten ids (indices into the training
  set, not data) beside the current model: it needs them for the retain set.
* Gates compare with the current model (``RA before``) on the request's retain set; the
  forget gate compares forget accuracy with the new model's test accuracy (held-out data).
* A retrain, whether asked for or triggered by the policy, is exact and is applied without
  gates (its figures are still recorded). The policy is checked before a request: when
  ``retrain_after`` requests were unlearned since the last retrain, or the cumulative retain
  accuracy drop since then exceeds ``max_drift``, that request is served by a full retrain.
* BatchNorm recalibration: running statistics are reset and re-estimated as a cumulative
  average over one pass of the retain data in train mode (no gradients, no augmentation),
  so no statistic of the forget data survives in the buffers.
* PGU (``unlearnkit.pgu``): the Gram cache lives with the model version. A PGU request builds it
  on first use over the remaining training ids; every accepted request (of any method) downdates
  it by its forget ids with ``PGUCache.subtract``; a retrain drops it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import tempfile
import time
import uuid
import warnings
from dataclasses import dataclass
from dataclasses import field as dc_field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import Dataset, Subset

from .checkpoint import META, MODEL_META_KEYS, WEIGHTS, read_meta
from .config import Config, InstanceOf, Interval, Options, field
from .errors import UnlearnkitError
from .utils import atomic_write_text, environment_info, state_dict_hash, to_jsonable

__all__ = ["Store", "StoreConfig", "Receipt", "recalibrate_batchnorm", "ids_sha256", "EXIT_REFUSED"]

STORE_FORMAT = 1
STORE_FILE = "store.json"
LEDGER_FILE = "ledger.jsonl"
CURRENT_FILE = "CURRENT"
MODELS_DIR = "models"
LOCK_FILE = ".lock"
RECEIPT_FILE = "receipt.json"
FORGOTTEN_FILE = "forgotten_ids.txt"
TRAINING_IDS_FILE = "training_ids.txt"
PGU_CACHE_FILE = "pgu_gram.safetensors"
EXIT_REFUSED = 3  # CLI exit code of a request refused by its acceptance gates
_FIGURES = {"forget_acc@1": "forget_acc", "ua@1": "UA", "ra@1": "RA", "ta@1": "TA", "mia_efficacy@2": "MIA-Efficacy"}
_KILL_ENV = "UNLEARNKIT_STORE_KILL_AT"  # testing hook: SIGKILL this process at the named step


def _crash_point(step: str) -> None:
    """Named points of a request (tests monkeypatch this, or set $UNLEARNKIT_STORE_KILL_AT to kill there)."""
    if os.environ.get(_KILL_ENV) == step:
        os.kill(os.getpid(), signal.SIGKILL)


# ---- configuration -------------------------------------------------------------------------------
@dataclass(kw_only=True)
class StoreConfig(Config):
    """What a store does with each request: methods, acceptance gates, retrain policy, clean-up."""

    methods: list = field(["finetune"], "Methods; the first is the default, the rest the fallback order.")
    method_configs: dict = field({}, "Per-method config overrides, e.g. {'finetune': {'epochs': 2}}.")
    fallback: bool = field(False, "When a method fails its gates (or errors), try the next one in `methods`.")
    forget_margin: float | None = field(2.0, "Gate: forget accuracy <= test accuracy + this (points); None: off.")
    max_retain_drop: float | None = field(5.0, "Gate: retain accuracy may drop at most this (points); None: off.")
    min_mia_efficacy: float | None = field(None, "Gate: MIA-Efficacy >= this (%); None: off.")
    retrain_after: int | None = field(None, "Serve a request by a full retrain once this many requests were "
                                            "unlearned since the last retrain; None: never.")
    max_drift: float | None = field(None, "Serve a request by a full retrain once retain accuracy dropped more "
                                          "than this (points) since the last retrain; None: never.")
    recalibrate_bn: bool | str = field("auto", "Re-estimate BatchNorm statistics on the retain data after "
                                               "unlearning ('auto': when the model has BatchNorm).")
    record_ids: bool = field(False, "Write the forget ids themselves into receipts (default: only their hash).")
    keep_old_models: bool = field(False, "Keep superseded model versions (they still hold forgotten data).")
    seed: int = field(0, "Seed of every request's method and evaluation.")
    device: str = field("auto", "cpu, cuda, cuda:N or auto.")
    lock_timeout: float = field(60.0, "Seconds a second process waits for the store's lock before failing.")

    constraints = {
        "methods": [InstanceOf(list, "a non-empty list of method names")],
        "method_configs": [InstanceOf(dict, "a dict {method: {parameter: value}}")],
        "fallback": [bool],
        "forget_margin": [Interval(float, -100, 100), None],
        "max_retain_drop": [Interval(float, 0, 100), None],
        "min_mia_efficacy": [Interval(float, 0, 100), None],
        "retrain_after": [Interval(int, 1, None), None],
        "max_drift": [Interval(float, 0, 100), None],
        "recalibrate_bn": [Options("auto"), bool],
        "record_ids": [bool],
        "keep_old_models": [bool],
        "seed": [Interval(int, 0, None)],
        "device": [str],
        "lock_timeout": [Interval(float, 0, None)],
    }

    def _check_consistency(self) -> None:
        from .methods import method_spec

        if not self.methods:
            raise UnlearnkitError("The 'methods' parameter of StoreConfig must name at least one method.")
        for name in self.methods:
            method_spec(name)  # unknown name -> one-line error listing the registered ones
        from .methods import make_config

        for name, overrides in self.method_configs.items():
            method_spec(name)
            if not isinstance(overrides, dict):
                raise UnlearnkitError(f"method_configs[{name!r}] must be a dict of parameters; got {overrides!r}.")
            make_config(name, overrides)  # unknown or out-of-range parameters fail here, not mid-request


# ---- small helpers -------------------------------------------------------------------------------
def ids_sha256(ids: Sequence[int] | np.ndarray) -> str:
    """sha256 of the sorted unique ids, one decimal per line (= ``sort -nu ids.txt | sha256sum``)."""
    ids = np.unique(np.asarray(ids, dtype=np.int64))
    return hashlib.sha256("".join(f"{int(i)}\n" for i in ids).encode()).hexdigest()


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _entry_checksum(entry: dict) -> str:
    body = {k: v for k, v in entry.items() if k != "checksum"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _read_ids_text(path: Path) -> np.ndarray:
    text = path.read_text().split()
    return np.array([int(t) for t in text], dtype=np.int64)


def _ids_text(ids: np.ndarray) -> str:
    return "".join(f"{int(i)}\n" for i in np.unique(ids))


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, data: Dataset, *, batch_size: int = 256) -> int:
    """Reset every BatchNorm's running statistics and re-estimate them on ``data`` (in place).

    One pass in train mode without gradients or augmentation; the statistics are the
    cumulative average over the batches (``momentum=None``), so nothing of the previous
    buffers (e.g. forget-data statistics) remains. Returns the number of BatchNorm layers.
    """
    from .data.loading import iterate_batches
    from .utils import model_device

    layers = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not layers or len(data) == 0:
        return 0
    was_training = model.training
    momenta = [m.momentum for m in layers]
    for m in layers:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    try:
        for x, _ in iterate_batches(data, batch_size, device=model_device(model)):
            model(x)
    finally:
        for m, mom in zip(layers, momenta):
            m.momentum = mom
        model.train(was_training)
    return len(layers)


# ---- receipts ------------------------------------------------------------------------------------
@dataclass
class Receipt:
    """The record of one deletion request (one ledger line). ``status``: applied, refused or noop."""

    request_id: str
    time: str
    status: str
    forget: dict[str, Any]
    method: str | None
    config: dict[str, Any] = dc_field(default_factory=dict)
    model_before: str | None = None
    model_after: str | None = None
    version: str | None = None
    figures: dict[str, float] = dc_field(default_factory=dict)
    gates: dict[str, Any] = dc_field(default_factory=dict)
    attempts: list[dict] = dc_field(default_factory=list)
    cost: dict[str, Any] = dc_field(default_factory=dict)
    versions: dict[str, Any] = dc_field(default_factory=dict)
    extra: dict[str, Any] = dc_field(default_factory=dict)

    @property
    def applied(self) -> bool:
        return self.status == "applied"

    @property
    def exit_code(self) -> int:
        return EXIT_REFUSED if self.status == "refused" else 0

    def to_dict(self) -> dict[str, Any]:
        out = {"kind": "request", "request_id": self.request_id, "time": self.time, "status": self.status,
               "forget": self.forget, "method": self.method, "config": self.config,
               "model_before": self.model_before, "model_after": self.model_after, "version": self.version,
               "figures": self.figures, "gates": self.gates, "attempts": self.attempts, "cost": self.cost,
               "versions": self.versions}
        out.update(self.extra)
        return to_jsonable(out)

    @classmethod
    def from_dict(cls, entry: dict) -> "Receipt":
        known = {"request_id", "time", "status", "forget", "method", "config", "model_before", "model_after",
                 "version", "figures", "gates", "attempts", "cost", "versions"}
        extra = {k: v for k, v in entry.items() if k not in known and k not in ("kind", "checksum")}
        return cls(**{k: entry[k] for k in known if k in entry}, extra=extra)


@dataclass
class _Attempt:
    method: str
    model: nn.Module | None
    record: dict
    passed: bool


# ---- the store -----------------------------------------------------------------------------------
class Store:
    """A model store: current model, ledger of deletion requests, gates and policy (see module doc)."""

    def __init__(self, path: Path, info: dict, *, data_root: str | None = None):
        import filelock

        self.path = Path(path)
        self.info = info
        self.config = StoreConfig.from_dict(info["config"])
        self.data_root = data_root
        self._lock = filelock.FileLock(str(self.path / LOCK_FILE))
        self._splits = None
        self.entries: list[dict] = []
        self.notes: list[str] = []

    # ---- creation and opening ----------------------------------------------------------------
    @classmethod
    def create(cls, path: str | os.PathLike, checkpoint: str | os.PathLike, *, training_ids=None,
               data_root: str | None = None, **config) -> "Store":
        """Start a store at ``path`` (must not exist, or be empty) from a checkpoint of ``unlearnkit train``.

        ``training_ids``: the forget-able training ids (default: the whole training set).
        ``config``: fields of ``StoreConfig`` (gates, methods, retrain policy, ...).
        """
        from .workflow import load_original

        path = Path(path)
        if (path / STORE_FILE).exists():
            old = json.loads((path / STORE_FILE).read_text())
            raise UnlearnkitError(f"{str(path)!r} is already a store (of model {old.get('original_hash')}); "
                                  "use another directory.")
        if path.exists() and (not path.is_dir() or any(path.iterdir())):
            raise UnlearnkitError(f"{str(path)!r} exists and is not an empty directory; use another directory.")
        store_config = StoreConfig(**config)
        model, meta, splits = load_original(checkpoint, data_root=data_root, device="cpu")
        n = len(splits.train)
        if training_ids is None:
            ids = np.arange(n, dtype=np.int64)
        else:
            ids = np.asarray(training_ids)
            if ids.dtype.kind not in "iu" or ids.size == 0:
                raise UnlearnkitError("training_ids must be a non-empty array of integer sample ids.")
            ids = np.unique(ids.astype(np.int64))
            if ids[0] < 0 or ids[-1] >= n:
                bad = ids[0] if ids[0] < 0 else ids[-1]
                raise UnlearnkitError(f"Training id {int(bad)} is out of range; the dataset has ids 0..{n - 1}.")
        from .training import accuracy

        original_hash = state_dict_hash(model)
        info = {"format_version": STORE_FORMAT, "created": _now(), "original_hash": original_hash,
                "model": {k: meta[k] for k in ("model", "model_args", "num_classes") if k in meta},
                "dataset": meta["dataset"], "recipe": meta.get("recipe"),
                "training_ids": {"count": int(len(ids)), "sha256": ids_sha256(ids),
                                 "file": None if training_ids is None else TRAINING_IDS_FILE},
                "config": store_config.to_dict()}
        path.mkdir(parents=True, exist_ok=True)
        store = cls(path, info, data_root=data_root)
        with store._locked():
            if training_ids is not None:
                atomic_write_text(path / TRAINING_IDS_FILE, _ids_text(ids))
            (path / MODELS_DIR).mkdir(exist_ok=True)
            base_ra = accuracy(model, Subset(splits.train, ids.tolist()))
            version = "v000000"
            model_sha, forgotten_sha = store._write_version(version, model, meta, np.zeros(0, np.int64), None,
                                                            receipt=None)
            atomic_write_text(path / CURRENT_FILE, version + "\n")
            store._append({"kind": "init", "request_id": "init", "time": _now(), "status": "init",
                           "model_after": original_hash, "version": version, "model_sha256": model_sha,
                           "forgotten_sha256": forgotten_sha, "num_forgotten": 0,
                           "figures": {"RA": base_ra}, "baseline_ra": base_ra, "checkpoint": str(checkpoint),
                           "versions": environment_info()})
            atomic_write_text(path / STORE_FILE, json.dumps(to_jsonable(info), indent=2, sort_keys=True) + "\n")
        store._splits = splits
        return Store.open(path, data_root=data_root)

    @classmethod
    def open(cls, path: str | os.PathLike, *, data_root: str | None = None,
             lock_timeout: float | None = None) -> "Store":
        """Open a store, reconcile it after a crash if needed, and check its current model file.

        ``lock_timeout`` overrides the store's: seconds to wait for another process's request.
        """
        path = Path(path)
        if not (path / STORE_FILE).is_file():
            raise UnlearnkitError(f"{str(path)!r} is not an unlearnkit store (no {STORE_FILE}); "
                                  "create one with `unlearnkit store-init`.")
        try:
            info = json.loads((path / STORE_FILE).read_text())
        except json.JSONDecodeError as e:
            raise UnlearnkitError(f"{path / STORE_FILE} is not valid JSON: {e}") from None
        if info.get("format_version") != STORE_FORMAT:
            raise UnlearnkitError(f"Store {str(path)!r} has format {info.get('format_version')!r}; "
                                  f"this unlearnkit reads {STORE_FORMAT}.")
        store = cls(path, info, data_root=data_root)
        if lock_timeout is not None:
            store.config = store.config.replace(lock_timeout=float(lock_timeout))
        if not store._consistent():
            with store._locked():
                store._reconcile()
        store._verify_current()
        return store

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

    # ---- ledger ------------------------------------------------------------------------------
    def _read_ledger(self, *, repair: bool) -> tuple[list[dict], int | None]:
        """Parse the ledger; returns (entries, byte offset where a half-written last line starts or None)."""
        path = self.path / LEDGER_FILE
        if not path.is_file():
            raise UnlearnkitError(f"Store {str(self.path)!r} has no {LEDGER_FILE}; it is not a complete store.")
        data = path.read_bytes()
        entries, offset, cut = [], 0, None
        lines = data.split(b"\n")
        for i, raw in enumerate(lines):
            last = i == len(lines) - 1
            if last and raw == b"":
                break
            try:
                entry = json.loads(raw.decode("utf-8"))
                ok = isinstance(entry, dict) and entry.get("checksum") == _entry_checksum(entry)
            except (UnicodeDecodeError, json.JSONDecodeError):
                ok = False
            if last:  # the last line lacks its newline: its write was interrupted (one write per line)
                cut = offset
                break
            if not ok:
                raise UnlearnkitError(f"{path} line {i + 1} is corrupted (not a complete, checksummed entry); "
                                      "the store was not changed. Restore the ledger from a backup.")
            entries.append(entry)
            offset += len(raw) + 1
        if not entries or entries[0].get("kind") != "init":
            raise UnlearnkitError(f"{path} does not start with the store's init entry; it is corrupted.")
        if cut is not None and repair:
            with open(path, "r+b") as f:
                f.truncate(cut)
                f.flush()
                os.fsync(f.fileno())
            msg = f"{LEDGER_FILE}: removed a half-written last line ({len(data) - cut} bytes) left by an interrupted request"
            self.notes.append(msg)
            warnings.warn(msg, stacklevel=3)
        return entries, cut

    def _append(self, entry: dict) -> None:
        entry = to_jsonable(entry)
        entry["checksum"] = _entry_checksum(entry)
        line = (json.dumps(entry, sort_keys=True, separators=(",", ":")) + "\n").encode()
        fd = os.open(self.path / LEDGER_FILE, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)
        self.entries.append(entry)

    @property
    def head(self) -> dict:
        """The ledger entry of the current model (init, or the last applied request)."""
        return next(e for e in reversed(self.entries) if e["status"] in ("init", "applied"))

    # ---- consistency -------------------------------------------------------------------------
    def _current_name(self) -> str | None:
        try:
            return (self.path / CURRENT_FILE).read_text().strip() or None
        except FileNotFoundError:
            return None

    def _consistent(self) -> bool:
        entries, cut = self._read_ledger(repair=False)
        self.entries = entries
        if cut is not None or self._current_name() != self.head["version"]:
            return False
        return not self._leftovers()

    def _leftovers(self) -> list[Path]:
        """Model directories other than the current one that should not be there (staging, orphans, old)."""
        models, current = self.path / MODELS_DIR, self.head["version"]
        if not models.is_dir():
            return []
        return [p for p in models.iterdir() if p.name != current
                and (p.name.startswith(".") or p.name > current or not self.config.keep_old_models)]

    def _reconcile(self) -> None:
        """Bring CURRENT and the model directories in line with the ledger (caller holds the lock)."""
        self.entries, _ = self._read_ledger(repair=True)
        head = self.head
        current = self._current_name()
        if current != head["version"]:
            receipt_path = self.path / MODELS_DIR / str(current) / RECEIPT_FILE
            staged = None
            if current and receipt_path.is_file():
                with contextlib.suppress(OSError, json.JSONDecodeError):
                    staged = json.loads(receipt_path.read_text())
            known = {e.get("request_id") for e in self.entries}
            if (isinstance(staged, dict) and staged.get("model_before") == head["model_after"]
                    and staged.get("request_id") not in known and staged.get("version") == current
                    and _file_sha256(self.path / MODELS_DIR / current / WEIGHTS) == staged.get("model_sha256")):
                staged["recovered"] = True
                self._append({k: v for k, v in staged.items() if k != "checksum"})
                msg = f"rolled forward to {current}: request {staged['request_id']} had swapped the model but not yet written its ledger entry"
            else:
                atomic_write_text(self.path / CURRENT_FILE, head["version"] + "\n")
                msg = f"rolled back to {head['version']}: an interrupted request had left {current!r} as current"
            self.notes.append(msg)
            warnings.warn(msg, stacklevel=3)
        self._clean_models()

    def _clean_models(self) -> None:
        for p in self._leftovers():
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)

    def _verify_current(self) -> None:
        head = self.head
        vdir = self.path / MODELS_DIR / head["version"]
        weights = vdir / WEIGHTS
        if not weights.is_file():
            raise UnlearnkitError(f"The current model file {weights} is missing; the store is damaged.")
        if _file_sha256(weights) != head["model_sha256"]:
            raise UnlearnkitError(f"Model file {weights} does not match the sha256 recorded in the ledger "
                                  "(corrupted or replaced by another model's file); nothing was changed.")
        forgotten = vdir / FORGOTTEN_FILE
        if not forgotten.is_file() or _file_sha256(forgotten) != head["forgotten_sha256"]:
            raise UnlearnkitError(f"{forgotten} is missing or does not match the sha256 recorded in the ledger; "
                                  "the store is damaged.")
        if (vdir / PGU_CACHE_FILE).is_file():
            self._check_pgu_cache(vdir / PGU_CACHE_FILE)
        meta = read_meta(vdir)
        if meta.get("model") != self.info["model"].get("model") or meta.get("weights_sha") != head["model_after"]:
            raise UnlearnkitError(f"{vdir} holds another model than this store's ({meta.get('model')!r}, "
                                  f"weights {meta.get('weights_sha')}); nothing was changed.")

    # ---- state -------------------------------------------------------------------------------
    @property
    def version(self) -> str:
        return self.head["version"]

    @property
    def model_hash(self) -> str:
        return self.head["model_after"]

    @property
    def version_dir(self) -> Path:
        return self.path / MODELS_DIR / self.version

    @property
    def forgotten_ids(self) -> np.ndarray:
        return _read_ids_text(self.version_dir / FORGOTTEN_FILE)

    @property
    def training_ids(self) -> np.ndarray:
        spec = self.info["training_ids"]
        if spec.get("file"):
            ids = _read_ids_text(self.path / spec["file"])
            if ids_sha256(ids) != spec["sha256"]:
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
            from .data import load_dataset
            from .workflow import dataset_fingerprint

            ds = self.info["dataset"]
            splits = load_dataset(ds["name"], root=self.data_root, **ds.get("args", {}))
            if ds.get("fingerprint") and ds["fingerprint"] != dataset_fingerprint(splits):
                raise UnlearnkitError(f"Store {str(self.path)!r} was made for other {ds['name']} data "
                                      "(fingerprint mismatch).")
            self._splits = splits
        return self._splits

    def load_model(self, device: str | torch.device = "cpu") -> nn.Module:
        """The current model (its weights checked against the ledger's fingerprint)."""
        from .checkpoint import load_checkpoint

        model, _ = load_checkpoint(self.version_dir, device=device)
        if state_dict_hash(model) != self.model_hash:
            raise UnlearnkitError(f"The weights in {self.version_dir} do not match the ledger's fingerprint "
                                  f"{self.model_hash}; nothing was changed.")
        return model

    def _since_retrain(self) -> tuple[int, float, float | None]:
        """(requests unlearned since the last retrain/init, baseline RA, RA of the current model)."""
        count, base = 0, None
        for e in reversed(self.entries):
            if e["status"] == "init" or (e["status"] == "applied" and e.get("method") == "retrain"):
                base = e.get("baseline_ra", e.get("figures", {}).get("RA"))
                break
            if e["status"] == "applied":
                count += 1
        return count, float(base), self.head.get("figures", {}).get("RA")

    # ---- the request -------------------------------------------------------------------------
    def request(self, forget_ids, method: str | None = None, *, record_ids: bool | None = None,
                fallback: bool | None = None, **config) -> Receipt:
        """Run one deletion request end to end; returns its ``Receipt`` (also appended to the ledger).

        ``forget_ids``: training ids to forget (any int sequence, or a path to a .txt/.npy file).
        ``method``: a registered method (default: the store's first configured method);
        ``config``: overrides of its config for this request. A request refused by the gates returns
        a receipt with ``status == "refused"`` (``receipt.exit_code == 3``) and leaves the model as it was.
        """
        from .methods import make_config

        ids = self._parse_ids(forget_ids)
        make_config(method or self.config.methods[0], self.config.method_configs.get(method or self.config.methods[0]),
                    **config)  # a bad parameter is an error before anything runs, not a refused attempt
        with self._locked():
            self._reconcile()  # another process may have acted since open
            self._verify_current()
            return self._request_locked(ids, method, record_ids, fallback, config)

    def _parse_ids(self, forget_ids) -> np.ndarray:
        if isinstance(forget_ids, (str, os.PathLike)):
            from .data.forget import read_ids_file

            spec = str(forget_ids)
            forget_ids = read_ids_file(spec[4:] if spec.startswith("ids:") else spec)
        arr = np.asarray(forget_ids if not isinstance(forget_ids, torch.Tensor) else forget_ids.numpy())
        if arr.size == 0:
            raise UnlearnkitError("The deletion request is empty: give at least one training id.")
        if arr.dtype.kind not in "iu":
            raise UnlearnkitError(f"Forget ids must be integers; got dtype {arr.dtype}.")
        ids = np.unique(arr.astype(np.int64).ravel())
        unknown = np.setdiff1d(ids, self.training_ids)
        if len(unknown):
            raise UnlearnkitError(f"Forget id {int(unknown[0])} is not a training id of this store "
                                  f"({len(unknown)} such ids); nothing was changed.")
        return ids

    def _request_locked(self, ids, method, record_ids, fallback, overrides) -> Receipt:
        from .data.forget import ForgetRequest, UnlearningData

        cfg = self.config
        start = time.perf_counter()
        seq = sum(1 for e in self.entries if e.get("kind") == "request") + 1
        request_id = f"R{seq:06d}-{uuid.uuid4().hex[:8]}"
        forgotten = self.forgotten_ids
        already = ids[np.isin(ids, forgotten)]
        new = ids[~np.isin(ids, forgotten)]
        record_ids = cfg.record_ids if record_ids is None else record_ids
        forget_info = {"sha256": ids_sha256(ids), "num_ids": int(len(ids)), "num_new": int(len(new)),
                       "num_already_forgotten": int(len(already))}
        if len(already):
            forget_info["already_forgotten_sha256"] = ids_sha256(already)
        if record_ids:
            forget_info["ids"] = ids.tolist()
            forget_info["already_forgotten"] = already.tolist()
        base = dict(request_id=request_id, time=_now(), forget=forget_info, model_before=self.model_hash,
                    versions=environment_info())
        if len(new) == 0:
            receipt = Receipt(status="noop", method=None, model_after=self.model_hash, version=self.version,
                              extra={"note": "every id was forgotten by an earlier request"}, **base)
            self._append(receipt.to_dict())
            return receipt

        splits = self.splits()
        after_forgotten = np.union1d(forgotten, new)
        retain_ids = np.setdiff1d(self.training_ids, after_forgotten)
        if len(retain_ids) == 0:
            raise UnlearnkitError("This request would forget every remaining training id; nothing was changed.")
        data = UnlearningData(train=splits.train, retain=Subset(splits.train, retain_ids.tolist()),
                              forget=Subset(splits.train, new.tolist()), test=splits.test,
                              request=ForgetRequest("ids", new, (), f"ids:sha256={forget_info['sha256'][:16]}"),
                              num_classes=splits.num_classes, retain_ids=retain_ids)
        from .utils import resolve_device

        device = resolve_device(cfg.device)
        model = self.load_model(device)
        meta = read_meta(self.version_dir)
        before = self._figures(model, data, metrics=["forget_acc", "ra"])

        count, base_ra, current_ra = self._since_retrain()
        drift = None if current_ra is None else base_ra - current_ra
        policy = None
        if cfg.retrain_after is not None and count >= cfg.retrain_after:
            policy = f"retrain_after={cfg.retrain_after}: {count} requests unlearned since the last retrain"
        elif cfg.max_drift is not None and drift is not None and drift > cfg.max_drift:
            policy = f"max_drift={cfg.max_drift:g}: retain accuracy dropped {drift:.2f} points since the last retrain"
        if policy or method == "retrain":
            candidates = ["retrain"]
        else:
            first = method or cfg.methods[0]
            use_fallback = cfg.fallback if fallback is None else fallback
            candidates = [first] + ([m for m in cfg.methods if m != first] if use_fallback else [])

        attempts: list[_Attempt] = []
        try:
            return self._run_candidates(candidates, attempts, seq, request_id, start, model, meta, data, before,
                                        method, overrides, device, forgotten, after_forgotten, base, policy, drift)
        finally:
            for p in self.path.joinpath(MODELS_DIR).glob(".pgu-*"):
                p.unlink(missing_ok=True)

    def _run_candidates(self, candidates, attempts, seq, request_id, start, model, meta, data, before, method,
                        overrides, device, forgotten, after_forgotten, base, policy, drift) -> Receipt:
        splits = self.splits()
        pgu_cache_path = None
        for name in candidates:
            if name == "pgu" and pgu_cache_path is None:
                pgu_cache_path = self._pgu_cache(model, splits, np.setdiff1d(self.training_ids, forgotten))
            mine = overrides if name == (method or candidates[0]) else {}
            attempt = self._attempt(name, model, meta, data, before, mine, device, pgu_cache_path)
            attempts.append(attempt)
            if attempt.passed:
                break
        chosen = next((a for a in attempts if a.passed), None)
        last = chosen or attempts[-1]
        receipt = Receipt(status="applied" if chosen else "refused", method=last.method,
                          config=last.record.get("config", {}), figures=last.record.get("figures", {}),
                          gates=last.record.get("gates", {}), attempts=[a.record for a in attempts], **base)
        receipt.extra["figures_before"] = before
        receipt.extra["retain_drift"] = drift
        if policy:
            receipt.extra["retrain_policy"] = policy
        if chosen is None:
            receipt.model_after, receipt.version = self.model_hash, self.version
            receipt.cost = {"seconds_total": time.perf_counter() - start}
            self._append(receipt.to_dict())
            return receipt

        new_model = chosen.model
        receipt.model_after = state_dict_hash(new_model)
        receipt.version = f"v{seq:06d}"
        if chosen.method == "retrain":
            receipt.extra["baseline_ra"] = receipt.figures.get("RA")
        cache_bytes, cache_note = self._downdated_cache(chosen.method, model, new_model, data, pgu_cache_path)
        if cache_note:
            receipt.extra["pgu_cache"] = cache_note
        receipt.cost = {**chosen.record.get("cost", {}), "seconds_total": time.perf_counter() - start}
        self._apply(receipt, new_model, meta, after_forgotten, cache_bytes)
        return receipt

    def _figures(self, model, data, metrics=None, result=None) -> dict[str, float]:
        from .metrics import evaluate

        keys = metrics or [k.split("@")[0] for k in _FIGURES]
        ev = evaluate(model, data, result=result, seed=self.config.seed, metrics=keys)
        return {_FIGURES[k]: float(v) for k, v in ev.metrics.items() if k in _FIGURES}

    def _gates(self, figures: dict, before: dict) -> dict[str, Any]:
        cfg, checks = self.config, {}
        if cfg.forget_margin is not None:
            limit = figures["TA"] + cfg.forget_margin
            checks["forget_acc"] = {"value": figures["forget_acc"], "limit": limit, "rule": "<= TA + forget_margin",
                                    "passed": figures["forget_acc"] <= limit}
        if cfg.max_retain_drop is not None:
            drop = before["RA"] - figures["RA"]
            checks["retain_drop"] = {"value": drop, "limit": cfg.max_retain_drop, "rule": "<= max_retain_drop",
                                     "passed": drop <= cfg.max_retain_drop}
        if cfg.min_mia_efficacy is not None:
            checks["mia_efficacy"] = {"value": figures["MIA-Efficacy"], "limit": cfg.min_mia_efficacy,
                                      "rule": ">= min_mia_efficacy",
                                      "passed": figures["MIA-Efficacy"] >= cfg.min_mia_efficacy}
        return checks

    def _attempt(self, name, model, meta, data, before, overrides, device, pgu_cache_path) -> _Attempt:
        from .api import unlearn
        from .workflow import method_config_for, method_options_for

        cfg = self.config
        record: dict[str, Any] = {"method": name}
        values = {**cfg.method_configs.get(name, {}), **overrides}
        if name == "pgu":
            values = {**values, "cache": str(pgu_cache_path), "update_cache": False}
        recipe_meta = {"recipe": self.info["recipe"]} if self.info.get("recipe") else meta
        config = method_config_for(name, recipe_meta, values)
        record["config"] = {k: v for k, v in config.to_dict().items() if k != "cache"}
        try:
            result = unlearn(model, data.retain, data.forget, name, config=config, device=device, seed=cfg.seed,
                             **method_options_for(name, meta))
        except UnlearnkitError as e:  # a diverged attempt (or one the method refuses) is a failed attempt
            record.update(error=str(e), passed=False)
            return _Attempt(name, None, record, False)
        out = result.model
        if set(out.state_dict()) != set(model.state_dict()):
            record.update(error="the method returned a model with other parameters (adapters not merged?)",
                          passed=False)
            return _Attempt(name, None, record, False)
        recalibrate = cfg.recalibrate_bn if cfg.recalibrate_bn != "auto" else has_batchnorm(out)
        record["bn_recalibrated"] = bool(recalibrate and recalibrate_batchnorm(out, data.retain))
        _crash_point("after_unlearn")
        figures = self._figures(out, data, result=result)
        record["figures"] = figures
        record["cost"] = {"seconds": result.seconds, "prepare_seconds": result.prepare_seconds,
                          "sample_passes": result.sample_passes, "peak_memory_mb": result.peak_memory_mb,
                          "peak_cuda_memory_mb": result.peak_cuda_memory_mb, "device": result.device}
        if name == "retrain":
            record["gates"] = {"skipped": "a retrain from scratch is exact"}
            passed = True
        else:
            record["gates"] = self._gates(figures, before)
            passed = all(g["passed"] for g in record["gates"].values())
        record["passed"] = passed
        return _Attempt(name, out, record, passed)

    # ---- PGU cache (public API of unlearnkit.pgu only) ---------------------------------------
    def _pgu_cache(self, model, splits, remaining_ids) -> Path:
        """The current version's PGU cache file, built over the remaining training ids if absent."""
        path = self.version_dir / PGU_CACHE_FILE
        if path.is_file():
            self._check_pgu_cache(path)
            return path
        from . import pgu

        staging = self.path / MODELS_DIR / f".pgu-{uuid.uuid4().hex[:8]}.safetensors"
        pgu.prepare(model, Subset(splits.train, remaining_ids.tolist()), ids=remaining_ids, path=staging,
                    seed=self.config.seed)
        return staging

    def _check_pgu_cache(self, path: Path) -> None:
        if _file_sha256(path) != self.head.get("pgu_cache_sha256"):
            raise UnlearnkitError(f"PGU cache {path} does not match the sha256 recorded in the ledger "
                                  "(corrupted or replaced); nothing was changed. Delete it to have it rebuilt.")

    def _downdated_cache(self, method, model_before, model_after, data, cache_path) -> tuple[bytes | None, str | None]:
        if method == "retrain":
            return None, "dropped (the model was retrained)" if (self.version_dir / PGU_CACHE_FILE).is_file() else None
        path = cache_path or self.version_dir / PGU_CACHE_FILE
        if not Path(path).is_file():
            return None, None
        if cache_path is None:
            self._check_pgu_cache(path)
        from . import pgu

        cache = pgu.PGUCache.load(path)
        cache.subtract(data.forget, ids=data.request.ids, model=model_before, model_after=model_after, save=False)
        return cache.to_bytes(), f"downdated by {len(data.request.ids)} ids ({len(cache.subtracted)} in all)"

    # ---- the atomic swap ---------------------------------------------------------------------
    def _write_version(self, version: str, model: nn.Module, meta: dict, forgotten: np.ndarray,
                       cache_bytes: bytes | None, receipt: dict | None) -> tuple[str, str]:
        """Write models/<version> (temp dir, fsync, rename); returns (weights sha256, forgotten-ids sha256)."""
        from safetensors.torch import save

        models = self.path / MODELS_DIR
        state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
        weights = save(state)
        model_sha = hashlib.sha256(weights).hexdigest()
        forgotten_text = _ids_text(forgotten)
        forgotten_sha = hashlib.sha256(forgotten_text.encode()).hexdigest()
        keep = {k: meta[k] for k in MODEL_META_KEYS if k in meta}
        record = {"format_version": 1, "model_class": type(model).__name__, "weights_sha": state_dict_hash(state),
                  "environment": environment_info(), **keep,
                  "lineage": {"version": version, "store_original": self.info["original_hash"],
                              "request_id": receipt["request_id"] if receipt else None,
                              "parent": receipt["model_before"] if receipt else None}}
        files = {WEIGHTS: weights, META: (json.dumps(to_jsonable(record), indent=2, sort_keys=True) + "\n").encode(),
                 FORGOTTEN_FILE: forgotten_text.encode()}
        if cache_bytes is not None:
            files[PGU_CACHE_FILE] = cache_bytes
        if receipt is not None:
            full = {**receipt, "model_sha256": model_sha, "forgotten_sha256": forgotten_sha,
                    "num_forgotten": int(len(np.unique(forgotten)))}
            files[RECEIPT_FILE] = (json.dumps(to_jsonable(full), sort_keys=True) + "\n").encode()
        tmp = Path(tempfile.mkdtemp(dir=models, prefix=f".{version}."))
        try:
            for name, blob in files.items():
                with open(tmp / name, "wb") as f:
                    f.write(blob)
                    f.flush()
                    os.fsync(f.fileno())
            _fsync_dir(tmp)
            target = models / version
            if target.exists():  # a leftover of an interrupted request with this number
                shutil.rmtree(target)
            os.replace(tmp, target)
            _fsync_dir(models)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return model_sha, forgotten_sha

    def _apply(self, receipt: Receipt, model: nn.Module, meta: dict, forgotten: np.ndarray,
               cache_bytes: bytes | None) -> None:
        if cache_bytes is not None:
            receipt.extra["pgu_cache_sha256"] = hashlib.sha256(cache_bytes).hexdigest()
        entry = receipt.to_dict()
        model_sha, forgotten_sha = self._write_version(receipt.version, model, meta, forgotten, cache_bytes, entry)
        receipt.extra.update(model_sha256=model_sha, forgotten_sha256=forgotten_sha, num_forgotten=int(len(forgotten)))
        entry = receipt.to_dict()
        _crash_point("after_model_write")
        atomic_write_text(self.path / CURRENT_FILE, receipt.version + "\n")
        _fsync_dir(self.path)
        _crash_point("after_pointer")
        self._append(entry)
        _crash_point("after_ledger")
        self._clean_models()

    # ---- display -----------------------------------------------------------------------------
    def summary(self) -> dict[str, Any]:
        count, base_ra, current_ra = self._since_retrain()
        statuses = [e["status"] for e in self.entries if e.get("kind") == "request"]
        return {"store": str(self.path), "model": self.info["model"].get("model"), "version": self.version,
                "model_hash": self.model_hash, "original_hash": self.info["original_hash"],
                "training_ids": self.info["training_ids"]["count"], "forgotten": int(self.head.get("num_forgotten", 0)),
                "requests": len(statuses), "applied": statuses.count("applied"), "refused": statuses.count("refused"),
                "noop": statuses.count("noop"), "since_retrain": count,
                "retain_drift": None if current_ra is None else base_ra - current_ra}
