"""One deletion request, end to end: check the ids, choose the method, unlearn, gate, commit.

The commit order of an accepted request: write ``models/<new version>`` complete; prepare the
pointer's undo file; swap ``CURRENT``; append the sealed receipt to the ledger. When the append
fails (disk full, short write), ``CURRENT`` is renamed back and the new version removed: the
client gets an error saying the request was not applied, which is the truth. Only when even that
rename fails does the request stay applied, and then the receipt says so (``ledger_pending``) and
the next open records it from ``models/<version>/receipt.json`` (roll forward).
"""

from __future__ import annotations

import contextlib
import os
import time
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import Subset

from ..errors import UnlearnkitError
from ..utils import environment_info, state_dict_hash
from . import files as F
from .core import Store, contained_weights, now
from .gates import check_gates
from .ledger import line_of
from .receipt import Receipt, has_batchnorm, recalibrate_batchnorm
from .versions import PGU_CACHE_FILE, PGU_STAGING_PREFIX, RECEIPT_FILE, version_files

FIGURES = {"forget_acc@1": "forget_acc", "ua@1": "UA", "ra@1": "RA", "ta@1": "TA", "mia_efficacy@2": "MIA-Efficacy"}


@dataclass
class Attempt:
    method: str
    model: nn.Module | None
    record: dict
    passed: bool


def run_request(store: Store, forget_ids, method: str | None, *, record_ids: bool | None,
                fallback: bool | None, overrides: dict, audit: str | None = None) -> Receipt:
    from ..audit.deletion import check_full_audit_possible, parse_audit_spec
    from ..methods import make_config

    audit_spec = parse_audit_spec(audit, store.config.audit_k)
    if audit_spec is not None and audit_spec.mode == "full":
        check_full_audit_possible(store.info)
    ids = parse_ids(store, forget_ids)
    name = method or store.config.methods[0]
    make_config(name, store.config.method_configs.get(name), **overrides)  # a bad parameter fails before anything runs
    try:
        with store._locked():
            store.sync()  # another process may have acted since open
            return RequestRun(store, ids, method, record_ids, fallback, overrides, audit_spec).run()
    except OSError as e:  # the lock file could not be made (read-only store), or a read failed
        raise F.not_applied("The request", e) from e
    finally:
        for p in store.versions.models.glob(PGU_STAGING_PREFIX + "*"):
            with contextlib.suppress(OSError):
                p.unlink()


def parse_ids(store: Store, forget_ids) -> np.ndarray:
    if isinstance(forget_ids, (str, os.PathLike)):
        from ..data.forget import read_ids_file

        spec = str(forget_ids)
        forget_ids = read_ids_file(spec[4:] if spec.startswith("ids:") else spec)
    arr = np.asarray(forget_ids if not isinstance(forget_ids, torch.Tensor) else forget_ids.numpy())
    if arr.size == 0:
        raise UnlearnkitError("The deletion request is empty: give at least one training id.")
    if arr.dtype.kind not in "iu":
        raise UnlearnkitError(f"Forget ids must be integers; got dtype {arr.dtype}.")
    ids = np.unique(arr.astype(np.int64).ravel())
    unknown = np.setdiff1d(ids, store.training_ids)
    if len(unknown):
        raise UnlearnkitError(f"Forget id {int(unknown[0])} is not a training id of this store "
                              f"({len(unknown)} such ids); nothing was changed.")
    return ids


class RequestRun:
    """The work of one request under the store's lock."""

    def __init__(self, store: Store, ids: np.ndarray, method, record_ids, fallback, overrides, audit_spec=None):
        self.store, self.cfg = store, store.config
        self.ids, self.method, self.fallback, self.overrides = ids, method, fallback, overrides
        self.audit_spec = audit_spec
        self.record_ids = self.cfg.record_ids if record_ids is None else record_ids
        self.start = time.perf_counter()
        seq = sum(1 for e in store.entries if e.get("kind") == "request") + 1
        self.request_id = f"R{seq:06d}-{uuid.uuid4().hex[:8]}"
        self.forgotten = store.forgotten_ids

    def run(self) -> Receipt:
        store, ids = self.store, self.ids
        already, new = ids[np.isin(ids, self.forgotten)], ids[~np.isin(ids, self.forgotten)]
        forget_info = {"sha256": F.ids_sha256(ids), "num_ids": int(len(ids)), "num_new": int(len(new)),
                       "num_already_forgotten": int(len(already))}
        if len(already):
            forget_info["already_forgotten_sha256"] = F.ids_sha256(already)
        if self.record_ids:
            forget_info.update(ids=ids.tolist(), already_forgotten=already.tolist())
        self.base = dict(request_id=self.request_id, time=now(), forget=forget_info, model_before=store.model_hash,
                         versions=environment_info())
        if len(new) == 0:
            receipt = Receipt(status="noop", method=None, model_after=store.model_hash, version=store.version,
                              extra={"note": "every id was forgotten by an earlier request"}, **self.base)
            self._audit_skipped(receipt, "nothing new was forgotten")
            return self._record(receipt)
        self.data = self._data(new, forget_info["sha256"])
        from ..utils import resolve_device

        self.device = resolve_device(self.cfg.device)
        self.model = store.load_model(self.device)
        from ..checkpoint import read_meta

        self.meta = read_meta(store.version_dir)
        self.before = self._figures(self.model, metrics=["forget_acc", "ra"])
        return self._run_candidates(self._candidates())

    def _data(self, new: np.ndarray, sha: str):
        from ..data.forget import ForgetRequest, UnlearningData

        splits = self.store.splits()
        self.after_forgotten = np.union1d(self.forgotten, new)
        retain_ids = np.setdiff1d(self.store.training_ids, self.after_forgotten)
        if len(retain_ids) == 0:
            raise UnlearnkitError("This request would forget every remaining training id; nothing was changed.")
        return UnlearningData(train=splits.train, retain=Subset(splits.train, retain_ids.tolist()),
                              forget=Subset(splits.train, new.tolist()), test=splits.test,
                              request=ForgetRequest("ids", new, (), f"ids:sha256={sha[:16]}"),
                              num_classes=splits.num_classes, retain_ids=retain_ids)

    def _candidates(self) -> list[str]:
        cfg = self.cfg
        count, base_ra, current_ra = self.store.since_retrain()
        self.drift = None if current_ra is None else base_ra - current_ra
        self.policy = None
        if cfg.retrain_after is not None and count >= cfg.retrain_after:
            self.policy = f"retrain_after={cfg.retrain_after}: {count} requests unlearned since the last retrain"
        elif cfg.max_drift is not None and self.drift is not None and self.drift > cfg.max_drift:
            self.policy = (f"max_drift={cfg.max_drift:g}: retain accuracy dropped {self.drift:.2f} points since "
                           "the last retrain")
        if self.policy or self.method == "retrain":
            return ["retrain"]
        first = self.method or cfg.methods[0]
        use_fallback = cfg.fallback if self.fallback is None else self.fallback
        return [first] + ([m for m in cfg.methods if m != first] if use_fallback else [])

    def _run_candidates(self, candidates: list[str]) -> Receipt:
        attempts: list[Attempt] = []
        self.pgu_cache_path = None
        for name in candidates:
            if name == "pgu" and self.pgu_cache_path is None:
                self.pgu_cache_path = self._pgu_cache(np.setdiff1d(self.store.training_ids, self.forgotten))
            mine = self.overrides if name == (self.method or candidates[0]) else {}
            attempts.append(self._attempt(name, mine))
            if attempts[-1].passed:
                break
        chosen = next((a for a in attempts if a.passed), None)
        last = chosen or attempts[-1]
        receipt = Receipt(status="applied" if chosen else "refused", method=last.method,
                          config=last.record.get("config", {}), figures=last.record.get("figures", {}),
                          gates=last.record.get("gates", {}), attempts=[a.record for a in attempts], **self.base)
        receipt.extra.update(figures_before=self.before, retain_drift=self.drift)
        if self.policy:
            receipt.extra["retrain_policy"] = self.policy
        if chosen is None:
            receipt.model_after, receipt.version = self.store.model_hash, self.store.version
            receipt.cost = {"seconds_total": time.perf_counter() - self.start}
            self._audit_skipped(receipt, "the request was refused; the model is unchanged")
            return self._record(receipt)
        receipt.model_after = state_dict_hash(chosen.model)
        if chosen.method == "retrain":
            receipt.extra["baseline_ra"] = receipt.figures.get("RA")
        cache_bytes, cache_note = self._downdated_cache(chosen.method, chosen.model)
        if cache_note:
            receipt.extra["pgu_cache"] = cache_note
        receipt.cost = {**chosen.record.get("cost", {}), "seconds_total": time.perf_counter() - self.start}
        if self.audit_spec is None:
            return self._commit(receipt, chosen.model, cache_bytes)
        receipt.extra["audit"] = self._audit(chosen)
        try:
            return self._commit(receipt, chosen.model, cache_bytes)
        except UnlearnkitError:
            from ..audit.deletion import remove_audit_dir

            remove_audit_dir(self.store.path, self.request_id)
            raise

    # ---- request --audit (unlearnkit.audit.deletion) -------------------------------------------
    def _audit(self, chosen: Attempt) -> dict:
        """The audit of the accepted attempt, sealed into the receipt with the rest of it.

        An audit that fails does not stop the deletion it audits: its error is the record."""
        from ..audit import deletion

        start = time.perf_counter()
        out: dict[str, Any] = {"requested": self.audit_spec.mode}
        try:
            out["relearn"] = deletion.relearn_audit(self.model, chosen.model, self.data, seed=self.cfg.seed,
                                                    device=self.device, after_is_retrain=chosen.method == "retrain")
        except UnlearnkitError as e:
            out["relearn"] = {"error": str(e)}
        if self.audit_spec.mode == "full":
            try:
                out["full"] = deletion.full_audit(self.store, self.after_forgotten, chosen.method,
                                                  chosen.record.get("config", {}), self.audit_spec.k, self.request_id)
            except UnlearnkitError as e:
                out["full"] = {"error": str(e)}
                deletion.remove_audit_dir(self.store.path, self.request_id)
        out["seconds"] = time.perf_counter() - start
        return out

    def _audit_skipped(self, receipt: Receipt, why: str) -> None:
        if self.audit_spec is not None:
            receipt.extra["audit"] = {"requested": self.audit_spec.mode, "skipped": why}

    def _figures(self, model, metrics=None, result=None) -> dict[str, float]:
        from ..metrics import evaluate

        keys = metrics or [k.split("@")[0] for k in FIGURES]
        ev = evaluate(model, self.data, result=result, seed=self.cfg.seed, metrics=keys)
        return {FIGURES[k]: float(v) for k, v in ev.metrics.items() if k in FIGURES}

    def _attempt(self, name: str, overrides: dict) -> Attempt:
        from ..api import unlearn
        from ..workflow import method_config_for, method_options_for

        cfg, store = self.cfg, self.store
        record: dict[str, Any] = {"method": name}
        values = {**cfg.method_configs.get(name, {}), **overrides}
        if name == "pgu":
            values = {**values, "cache": str(self.pgu_cache_path), "update_cache": False}
        recipe_meta = {"recipe": store.info["recipe"]} if store.info.get("recipe") else self.meta
        config = method_config_for(name, recipe_meta, values)
        record["config"] = {k: v for k, v in config.to_dict().items() if k != "cache"}
        options = method_options_for(name, contained_weights(self.meta, store.path, f"store {str(store.path)!r}")
                                     if name == "retrain" else self.meta)
        try:
            result = unlearn(self.model, self.data.retain, self.data.forget, name, config=config, device=self.device,
                             seed=cfg.seed, **options)
        except UnlearnkitError as e:  # a diverged attempt (or one the method refuses) is a failed attempt
            record.update(error=str(e), passed=False)
            return Attempt(name, None, record, False)
        out = result.model
        if set(out.state_dict()) != set(self.model.state_dict()):
            record.update(error="the method returned a model with other parameters (adapters not merged?)",
                          passed=False)
            return Attempt(name, None, record, False)
        recalibrate = cfg.recalibrate_bn if cfg.recalibrate_bn != "auto" else has_batchnorm(out)
        record["bn_recalibrated"] = bool(recalibrate and recalibrate_batchnorm(out, self.data.retain))
        F.crash_point("after_unlearn")
        figures = self._figures(out, result=result)
        record["figures"] = figures
        record["cost"] = {"seconds": result.seconds, "prepare_seconds": result.prepare_seconds,
                          "sample_passes": result.sample_passes, "peak_memory_mb": result.peak_memory_mb,
                          "peak_cuda_memory_mb": result.peak_cuda_memory_mb, "device": result.device}
        if name == "retrain":
            record["gates"] = {"skipped": "a retrain from scratch is exact"}
            passed = True
        else:
            record["gates"] = check_gates(cfg, figures, self.before, len(self.data.forget))
            passed = all(g["passed"] for g in record["gates"].values())
        record["passed"] = passed
        return Attempt(name, out, record, passed)

    # ---- PGU cache (public API of unlearnkit.pgu only) ---------------------------------------
    def _pgu_cache(self, remaining_ids: np.ndarray) -> Path:
        """The current version's PGU cache file, built over the remaining training ids if absent."""
        store = self.store
        path = store.version_dir / PGU_CACHE_FILE
        if path.is_file():
            store.check_pgu_cache(path)
            return path
        from ..components import gradient_projection as pgu

        staging = store.versions.models / f"{PGU_STAGING_PREFIX}{uuid.uuid4().hex[:8]}.safetensors"
        pgu.prepare(self.model, Subset(store.splits().train, remaining_ids.tolist()), ids=remaining_ids,
                    path=staging, seed=self.cfg.seed)
        return staging

    def _downdated_cache(self, method: str, model_after: nn.Module) -> tuple[bytes | None, str | None]:
        current = self.store.version_dir / PGU_CACHE_FILE
        if method == "retrain":
            return None, "dropped (the model was retrained)" if current.is_file() else None
        path = self.pgu_cache_path or current
        if not Path(path).is_file():
            return None, None
        if self.pgu_cache_path is None:
            self.store.check_pgu_cache(path)
        from ..components import gradient_projection as pgu

        cache = pgu.PGUCache.load(path)
        ids = self.data.request.ids
        cache.subtract(self.data.forget, ids=ids, model=self.model, model_after=model_after, save=False)
        return cache.to_bytes(), f"downdated by {len(ids)} ids ({len(cache.subtracted)} in all)"

    # ---- recording ---------------------------------------------------------------------------
    def _record(self, receipt: Receipt) -> Receipt:
        """Append a receipt that changes no model (refused, noop)."""
        entry = self.store.ledger.seal(receipt.to_dict())
        try:
            self.store.ledger.append(entry)
        except OSError as e:
            raise UnlearnkitError(f"Request {receipt.request_id} was {receipt.status} (model unchanged), but its "
                                  f"receipt could not be written to the ledger: {F.describe(e)}.") from e
        receipt.extra.update({k: entry[k] for k in ("seq", "prev", "hash")})
        return receipt

    def _commit(self, receipt: Receipt, model: nn.Module, cache_bytes: bytes | None) -> Receipt:
        store, versions = self.store, self.store.versions
        old = store.version
        receipt.version = versions.next_name(store.entries)
        lineage = {"version": receipt.version, "store_original": store.info["original_hash"],
                   "request_id": receipt.request_id, "parent": receipt.model_before}
        files, hashes = version_files(model, self.meta, self.after_forgotten, cache_bytes, lineage)
        receipt.extra.update(hashes)
        entry = store.ledger.seal(receipt.to_dict())
        files[RECEIPT_FILE] = line_of(entry)
        what = f"Request {receipt.request_id}: writing models/{receipt.version}"
        try:
            vdir = versions.write(receipt.version, files)
        except OSError as e:
            raise F.not_applied(what, e) from e
        F.crash_point("after_model_write")
        try:
            undo = versions.swap(receipt.version, old)
        except OSError as e:
            F.remove(vdir)
            raise F.not_applied(f"Request {receipt.request_id}: pointing CURRENT at {receipt.version}", e) from e
        F.crash_point("after_pointer")
        try:
            store.ledger.append(entry)
        except OSError as e:
            return self._ledger_failed(receipt, e, undo, vdir, old)
        F.remove(undo)
        receipt.extra.update({k: entry[k] for k in ("seq", "prev", "hash")})
        F.crash_point("after_ledger")
        store.clean()
        return receipt

    def _ledger_failed(self, receipt: Receipt, error: OSError, undo: Path, vdir: Path, old: str) -> Receipt:
        try:
            self.store.versions.undo(undo)
        except OSError as e2:  # the new model stays current: say so, and the next open records the receipt
            note = (f"the ledger append failed ({F.describe(error)}) and CURRENT could not be put back "
                    f"({F.describe(e2)}): the request is applied; the next open of the store records its receipt "
                    f"from models/{receipt.version}/{RECEIPT_FILE}")
            receipt.extra["ledger_pending"] = note
            warnings.warn(note, stacklevel=4)
            return receipt
        F.remove(vdir)
        raise UnlearnkitError(f"Request {receipt.request_id} was NOT applied: appending its receipt to the ledger "
                              f"failed ({F.describe(error)}); CURRENT points to {old} again and the model is "
                              "unchanged. Free space and send the request again.") from error
