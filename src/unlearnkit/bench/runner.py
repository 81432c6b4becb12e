"""Run a benchmark: originals, retrain oracles and every (method, scenario, seed), all cached.

Layout of an output directory::

    OUT/bench.json                         config, its hash, environment (rewritten each run)
    OUT/cache/originals/<hash>/            original checkpoint per (dataset, model, recipe, seed)
    OUT/cache/oracles/<hash>/              retrain oracle per (original, scenario, retrain config)
    OUT/cache/sparse_originals/<hash>/     OMP's sparse original per (original, its pruning/retraining fields, seed)
    OUT/cache/partial/<hash>/fit<k>.pt     epoch checkpoints of an original, oracle or sparse original still
                                           training (same hash as its cache folder; removed once it is saved)
    OUT/results/<scenario>/<method>/seed<k>.json   one record per run (atomic write)
    OUT/results/<scenario>/original/seed<k>.json   the original evaluated on the same request
    OUT/results/<scenario>/omp_sparse_original/seed<k>.json   OMP's sparse original, evaluated likewise

A result is reused when its stored ``fingerprint`` matches: a hash of the method,
its config, the scenario, the seed, the original's weights hash, the oracle's
weights hash, the unlearnkit version, the record format and which evaluator
produced the metrics. Records with an error are always recomputed (a fixed or
newly registered method then runs); ``overwrite=True`` recomputes everything,
originals and oracles included. Since each record is written as soon as it is
done, an interrupted run resumes where it stopped. The long trainings (originals, oracles,
sparse originals) also resume within themselves: they train under ``resume.resumable`` and
continue from their last completed epoch (one "resuming ..." line), bit for bit.

The retrain method's record *is* the oracle's run (same config, same seed): the
oracle is never trained twice. A method with a one-off per-model step (OMP's
sparse original: the pruned original retrained on all of D) gets it built once,
cached like the originals and passed to every request; it is evaluated on each
request as its own "before" row, and its cost is not in the method's run time.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
import traceback
from dataclasses import dataclass, field as dc_field
from pathlib import Path
from typing import Any, Callable

import torch

from ..checkpoint import load_checkpoint, read_meta
from ..data.checks import in_output_probe
from ..errors import UnlearnkitError
from ..performance import channels_last, move_dataset_to, set_channels_last
from ..progress import progress_bar
from ..resume import resumable
from ..training import accuracy, predict_logits
from ..utils import atomic_write_json, environment_info, package_version, resolve_device, stable_hash, state_dict_hash
from .budget import apply_budget, budget_target
from .config import BenchConfig, load_bench_config

RECORD_FORMAT = 1
PARTIAL_MAX_OVERHEAD = 0.01  # epoch checkpoints take at most ~1% of a training's time (see resume.resumable)
ORIGINAL = "original"
SPARSE_ORIGINAL_SUFFIX = "_sparse_original"


def sparse_original_name(method: str) -> str:
    """The record name of a method's sparse original (e.g. ``omp_sparse_original``)."""
    return method + SPARSE_ORIGINAL_SUFFIX


def is_before_row(name: str) -> bool:
    """The original or a method's sparse original: models before unlearning, not results of a request."""
    return name == ORIGINAL or name.endswith(SPARSE_ORIGINAL_SUFFIX)


@dataclass
class RunSummary:
    """What a ``run_benchmark`` call did (tests use it to check the cache)."""

    out: Path
    originals_trained: int = 0
    oracles_trained: int = 0
    sparse_originals_trained: int = 0
    computed: int = 0
    cached: int = 0
    errors: list[str] = dc_field(default_factory=list)
    resumed: list[str] = dc_field(default_factory=list)  # the "resuming ..." lines of resumed trainings
    seconds: float = 0.0

    @property
    def trained_anything(self) -> bool:
        return bool(self.originals_trained or self.oracles_trained or self.sparse_originals_trained or self.computed)


def scenario_slug(spec: str) -> str:
    return spec.replace(":", "-").replace(",", "_")


def result_path(out: Path, scenario: str, method: str, seed: int) -> Path:
    return Path(out) / "results" / scenario_slug(scenario) / method / f"seed{seed}.json"


# ---- evaluation: unlearnkit.evaluate when it exists, else accuracies only -------------------
def _evaluator():
    try:
        from .. import evaluate  # the public entry point, once the metrics package exports it
    except ImportError:
        try:
            from ..metrics import evaluate
        except ImportError:
            return None
    evaluate = getattr(evaluate, "evaluate", evaluate)  # a module of that name: take its function
    return evaluate if callable(evaluate) else None


def evaluator_name() -> str:
    return "evaluate" if _evaluator() is not None else "accuracy-only"


def _fallback_metrics(model, data, reference, result) -> dict[str, float]:
    """Accuracies and costs only (used until ``unlearnkit.evaluate`` is available)."""
    test = data.test_retain if data.request.kind == "class" and data.test_retain is not None else data.test
    m = {"forget_acc": accuracy(model, data.forget), "ra": accuracy(model, data.retain), "ta": accuracy(model, test)}
    m["ua"] = 100.0 - m["forget_acc"]
    if data.request.kind == "class":
        m["ta_forget_class"] = accuracy(model, data.test_forget)
    if reference is not None:
        ref = _fallback_metrics(reference, data, None, None)
        gaps = {f"gap_{k}": abs(m[k] - ref[k]) for k in ("ua", "ra", "ta")}
        m.update(gaps)
        m["avg_gap"] = sum(gaps.values()) / len(gaps)
    if result is not None:
        m.update(rte_seconds=result.seconds, peak_memory_mb=result.peak_memory_mb,
                 trainable_params=float(result.trainable_params), sample_passes=float(result.sample_passes))
    return m


def evaluate_model(model, data, *, reference=None, result=None, seed: int = 0,
                   batch_size: int = 512) -> tuple[dict[str, float], dict]:
    """(flat metric dict, full evaluation record)."""
    evaluate = _evaluator()
    if evaluate is None:
        metrics = _fallback_metrics(model, data, reference, result)
        return metrics, {"metrics": metrics, "evaluator": "accuracy-only"}
    ev = evaluate(model, data, reference=reference, result=result, seed=seed, batch_size=batch_size)
    record = ev.to_dict() if hasattr(ev, "to_dict") else {"metrics": dict(ev.metrics)}
    return {k: float(v) for k, v in ev.metrics.items() if isinstance(v, (int, float))}, record


class ForwardOnlyCounter:
    """A forward pre-hook counting the samples a model sees with autograd off (a forward-only pass).

    Installed on the original before a method copies it (``copy.deepcopy`` keeps hooks, so the
    method's working copy and any teacher copied from it count too): evaluation checks, PGU's
    Gram passes, SCRUB's teacher and RFA-LoRA's frozen pass. Forward + backward passes are the
    methods' own ``sample_passes``; passes inside torch.func transforms (SSD's per-sample
    gradients, which are forward + backward and already counted) and the data checks' one-sample
    probe of the model's outputs are skipped.
    """

    def __init__(self) -> None:
        self.samples = 0

    def __deepcopy__(self, memo):  # a copied model keeps counting into this one counter
        return self

    def __call__(self, module, args, kwargs) -> None:
        if (torch.is_grad_enabled() or torch._C._functorch.peek_interpreter_stack() is not None
                or in_output_probe()):
            return
        self.samples += _batch_length(args, kwargs)

    def attach(self, model) -> None:
        model.register_forward_pre_hook(self, with_kwargs=True)

    def detach(self, *models) -> None:
        """Remove this counter from ``models`` (also from copies, whose hook dicts hold it under the same key)."""
        for model in models:
            if model is None:
                continue
            for key, hook in list(model._forward_pre_hooks.items()):
                if hook is self:
                    del model._forward_pre_hooks[key]
                    model._forward_pre_hooks_with_kwargs.pop(key, None)


def _batch_length(args, kwargs) -> int:
    for value in (*args, *kwargs.values()):
        if isinstance(value, dict):
            value = next((v for v in value.values() if isinstance(v, torch.Tensor)), None)
        if isinstance(value, torch.Tensor) and value.dim() > 0:
            return int(value.shape[0])
    return 0


def counted_unlearn(model, retain, forget, method: str, **kwargs):
    """``unlearnkit.unlearn`` with its forward-only sample passes counted: (result, forward-only passes)."""
    from ..api import unlearn

    counter = ForwardOnlyCounter()
    counter.attach(model)
    result = None
    try:
        result = unlearn(model, retain, forget, method, **kwargs)
    finally:
        counter.detach(model, getattr(result, "model", None))
    return result, counter.samples


def per_class_accuracy(model, dataset, num_classes: int) -> list[float]:
    logits, labels = predict_logits(model, dataset)
    pred = logits.argmax(1)
    out = []
    for c in range(num_classes):
        sel = labels == c
        out.append(100.0 * (pred[sel] == c).float().mean().item() if sel.any() else float("nan"))
    return out


# ---- the runner --------------------------------------------------------------------------------
class BenchRunner:
    def __init__(self, config: BenchConfig, out: str | Path, *, overwrite: bool = False,
                 device: str | None = None, cache_dir: str | Path | None = None,
                 on_result: Callable[[dict], None] | None = None,
                 rows: dict[str, dict[str, tuple[str, dict]]] | None = None, cached_only: bool = False):
        self.config = config
        self.cached_only = cached_only  # load originals and oracles from the cache, never train one
        self._rows = rows
        self.out = Path(out)
        self.cache = Path(cache_dir) if cache_dir is not None else self.out / "cache"
        self.overwrite = overwrite
        self.device = resolve_device(device or config.device)
        self.on_result = on_result
        self.summary = RunSummary(self.out)
        self._splits = None
        self._heldout = None
        self._loaded_fingerprint = None

    def rows(self, scenario: str) -> dict[str, tuple[str, dict]]:
        """Label -> (method, overrides) of the runs on ``scenario``: the config's methods, unless the runner
        was given its own rows per scenario (tuning grid points, tuned choices)."""
        if self._rows is not None:
            return self._rows[scenario]
        return {name: (name, overrides) for name, overrides in self.config.methods.items()}

    @property
    def heldout(self):
        """The held-out validation images (``heldout`` test images set apart), or None."""
        _ = self.splits  # loading the splits carves the held-out set
        return self._heldout

    # -- data ----------------------------------------------------------------------------------
    @property
    def splits(self):
        if self._splits is None:
            from ..data import load_dataset
            from ..workflow import dataset_fingerprint

            splits = load_dataset(self.config.dataset, root=self.config.data_root, **self.config.dataset_args)
            self._loaded_fingerprint = dataset_fingerprint(splits)
            if self.config.heldout:  # carved first, so TA's images (and test_subset's) never include it
                if self.config.heldout >= len(splits.test):
                    raise UnlearnkitError(f"heldout: {self.config.heldout} images asked for, but the test set has "
                                          f"{len(splits.test)}; take fewer than that.")
                self._heldout, rest = _split_balanced(splits.test, self.config.heldout, seed=HELDOUT_SEED)
                splits = dataclasses.replace(splits, test=rest)
            if self.config.test_subset and self.config.test_subset < len(splits.test):
                splits = dataclasses.replace(splits, test=_balanced_subset(splits.test, self.config.test_subset))
            if self.config.data_on_device and self.device.type != "cpu":
                for part in (splits.train, splits.test, self._heldout):
                    if part is not None:
                        move_dataset_to(part, self.device)
            self._splits = splits
        return self._splits

    # -- originals and oracles -------------------------------------------------------------------
    def original(self, seed: int):
        """(model, meta, key): trained once per (dataset, model, recipe, seed), then loaded."""
        from ..workflow import train_original

        c = self.config
        key = stable_hash({**c.original_key(seed), "version": package_version()})

        def train(resume):
            t0 = time.perf_counter()
            model, meta, _ = train_original(c.dataset, c.model, c.recipe_for(seed), seed=seed,
                                            device=str(self.device), dataset_args=c.dataset_args,
                                            model_kwargs=c.model_kwargs, splits=self.splits,
                                            init=c.init_record())
            seconds = time.perf_counter() - t0 + resume.seconds_before
            # the dataset as `unlearnkit eval` and `forget` load it from the checkpoint's record, before the
            # benchmark set its held-out images and test subset apart (it trains on the same training set)
            meta = {**meta, "dataset": {**meta["dataset"], "fingerprint": self._loaded_fingerprint}}
            return model, meta, {"seed": seed, "train_seconds": seconds,
                                 "test_accuracy": accuracy(model, self.splits.test)}, None

        model, meta, _ = self._train_once("originals", key, f"original seed {seed}", train)
        return model, meta, key

    def oracle(self, original_meta: dict, original_key: str, scenario: str, seed: int, data):
        """(model, UnlearnResult): retrain from scratch on the retain set, once per scenario and seed."""
        from ..methods import UnlearnResult
        from ..workflow import method_options_for, retrain_start

        config = self.config.method_config("retrain", original_meta)
        if config is None:
            raise UnlearnkitError("The 'retrain' method is not registered; the benchmark needs it as the oracle.")
        key = stable_hash({"original": original_key, "scenario": scenario, "seed": seed,
                           "config": config.key_dict(), "version": package_version()})

        def train(resume):
            base, _ = load_checkpoint(self.cache / "originals" / original_key, num_classes=self.splits.num_classes,
                                      device=self.device)
            result, forward_passes = counted_unlearn(base, data.retain, data.forget, "retrain", config=config,
                                                     device=str(self.device), seed=seed,
                                                     **method_options_for("retrain", original_meta))
            result.seconds += resume.seconds_before  # the epochs trained before an interruption count too
            extra = {"oracle": {"scenario": scenario, "seed": seed, "start": retrain_start(original_meta)},
                     "result": result.to_dict(), "forward_passes": forward_passes}
            result.forward_passes = forward_passes  # after to_dict: the checkpoint's result lacks it
            return result.model, original_meta, extra, result

        model, meta, result = self._train_once("oracles", key, f"retrain oracle {scenario} seed {seed}", train)
        if result is None:  # loaded
            result = UnlearnResult(model=model, **meta["result"])
            result.forward_passes = meta.get("forward_passes")  # None: an oracle cached before it was counted
        return model, result

    def sparse_original(self, method: str, config, original, original_meta: dict, original_key: str, seed: int):
        """(model, facts, key): ``method``'s sparse original, trained once on all of D per original, config and seed."""
        from ..methods.omp import sparse_original

        key = stable_hash({"original": original_key, "method": method, "sparse": config.sparse_key(), "seed": seed,
                           "version": package_version()})

        def train(resume):
            model, pruning, facts = sparse_original(original, self.splits.train, config, seed=seed,
                                                    device=str(self.device))
            facts = {**facts, "seconds": facts["seconds"] + resume.seconds_before, "pruning": pruning.to_dict()}
            return model, original_meta, {"sparse_original": facts}, facts

        model, meta, facts = self._train_once("sparse_originals", key, f"{method} sparse original seed {seed}", train)
        return model, (meta["sparse_original"] if facts is None else facts), key

    def _train_once(self, folder: str, key: str, label: str, train: Callable):
        """(model, checkpoint meta, what ``train`` handed back) of the cache unit ``cache/folder/key``.

        Saved before (and no ``overwrite``): loaded, handing back None. Else ``train(resume)`` runs
        under epoch checkpoints (``resume``: the open ``resume.Resumable``) and returns (model, meta,
        extra checkpoint fields, anything for the caller); the model is saved with those fields, its
        ``bench_key`` and what was resumed, the epoch checkpoints removed, and ``summary.<folder>_trained``
        counted.
        """
        from ..workflow import save_model

        path = self.cache / folder / key
        if not self.overwrite and _is_checkpoint(path):
            model, meta = load_checkpoint(path, num_classes=self.splits.num_classes, device=self.device)
            return model, meta, None
        if self.cached_only:
            raise UnlearnkitError(f"The {label} is not in the cache ({path}) and this runner trains nothing "
                                  "(cached_only): let the benchmark run that trains it finish first.")
        with self._resumable(key, label) as resume:
            model, meta, extra, handed_back = train(resume)
        save_model(path, model, meta, {**extra, "bench_key": key, **self._resumed_meta(resume)})
        resume.clear()
        counter = f"{folder}_trained"
        setattr(self.summary, counter, getattr(self.summary, counter) + 1)
        return model, read_meta(path), handed_back

    def _resumable(self, key: str, label: str):
        """Epoch checkpoints of the training of the cache unit ``key`` (``--overwrite`` starts it afresh)."""
        directory = self.cache / "partial" / key
        if self.overwrite:
            shutil.rmtree(directory, ignore_errors=True)
        return resumable(directory, key=key, label=label, max_overhead=PARTIAL_MAX_OVERHEAD)

    def _resumed_meta(self, resume) -> dict:
        """What the checkpoint records of a resumed training (nothing for one trained in one go)."""
        if not resume.resumed:
            return {}
        self.summary.resumed += [n for n in resume.notes if n.startswith("resuming ")]
        return {"resumed": [{k: r[k] for k in ("slot", "epoch", "epochs")} for r in resume.resumed]}

    # -- records ----------------------------------------------------------------------------------
    def _cached(self, path: Path, fingerprint: str) -> dict | None:
        if self.overwrite or not path.is_file():
            return None
        try:
            record = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            return None
        if record.get("fingerprint") != fingerprint or record.get("status") != "ok":
            return None
        return record

    def _fingerprint(self, **parts) -> str:
        if self.config.heldout:  # only when set: records written without one keep their fingerprints
            parts["heldout"] = self.config.heldout
        return stable_hash({**parts, "version": package_version(), "format": RECORD_FORMAT,
                            "evaluator": evaluator_name(), "dataset": self.config.dataset,
                            "dataset_args": self.config.dataset_args, "test_subset": self.config.test_subset})

    def _write(self, path: Path, record: dict) -> None:
        atomic_write_json(path, record)
        if record.get("status") == "ok":
            self.summary.computed += 1
        else:
            self.summary.errors.append(f"{record['method']} {record['scenario']} seed {record['seed']}: "
                                       f"{record['error']['type']}: {record['error']['message']}")
        if self.on_result is not None:
            self.on_result(record)

    # -- the suite ----------------------------------------------------------------------------------
    def run(self) -> RunSummary:
        layout_before = channels_last()
        set_channels_last(self.config.channels_last)
        try:
            return self._run_suite()
        finally:
            set_channels_last(layout_before)

    def _run_suite(self) -> RunSummary:
        c = self.config
        t_start = time.perf_counter()
        c.init_record()  # a missing init weights file fails here, before any data is loaded
        self.out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.out / "bench.json", {
            "config": c.to_dict(), "config_hash": c.config_hash(), "environment": environment_info(),
            "device": str(self.device), "evaluator": evaluator_name(), "version": package_version()})
        per_seed = 1 + sum(2 + len(self.rows(s)) for s in c.scenarios)  # original; per scenario: oracle, original
        # eval, methods
        with progress_bar(len(c.seeds) * per_seed, f"bench {c.name}") as bar:
            for seed in c.seeds:
                bar.update(status=f"seed {seed}: original")
                original, meta, okey = self.original(seed)
                bar.advance(1)
                weights = meta.get("weights_sha") or state_dict_hash(original)
                for scenario in c.scenarios:
                    self._scenario(bar, original, meta, okey, weights, scenario, seed)
        if c.tuning:
            self._tune_then_run_tuned()
        self.summary.seconds = time.perf_counter() - t_start
        return self.summary

    # -- defaults and tuned ---------------------------------------------------------------------
    def _tune_then_run_tuned(self) -> None:
        """The grid on the validation seeds (OUT/tuning/), the choice (OUT/tuning.json), then the chosen
        configs on the reported seeds (OUT/tuned/); all cached like the defaults."""
        from .tuning import choose, grid_rows, tuned_rows, validation_scenarios

        c = self.config
        val_map = validation_scenarios(c, self.splits.num_classes)
        val_scenarios = list(dict.fromkeys(val_map.values()))
        common = {**c.to_dict(), "tuning": {}, "variants": {}}
        val_config = BenchConfig.from_dict({**common, "name": f"{c.name}/tuning", "seeds": c.tuning["seeds"],
                                            "scenarios": val_scenarios})
        self._sub_run(val_config, "tuning", grid_rows(c, val_scenarios))
        tuning = choose(c, load_records(self.out / "tuning"), val_map)
        atomic_write_json(self.out / "tuning.json", tuning)
        rows = tuned_rows(c, tuning)
        tuned_methods = {"retrain": c.methods.get("retrain", {}), **{m: c.methods[m] for m in c.tuning["grid"]}}
        tuned_config = BenchConfig.from_dict({**common, "name": f"{c.name}/tuned", "methods": tuned_methods})
        self._sub_run(tuned_config, "tuned", rows)

    def _sub_run(self, config: BenchConfig, folder: str, rows) -> None:
        sub = BenchRunner(config, self.out / folder, overwrite=self.overwrite, device=str(self.device),
                          cache_dir=self.cache, on_result=self.on_result, rows=rows)
        sub._splits, sub._heldout = self._splits, self._heldout  # the same data, loaded once
        sub._loaded_fingerprint = self._loaded_fingerprint
        part = sub._run_suite()
        for name in ("originals_trained", "oracles_trained", "sparse_originals_trained", "computed", "cached"):
            setattr(self.summary, name, getattr(self.summary, name) + getattr(part, name))
        self.summary.errors += [f"[{folder}] {e}" for e in part.errors]
        self.summary.resumed += part.resumed

    def _scenario(self, bar, original, meta, okey, weights, scenario: str, seed: int) -> None:
        from ..methods import method_options
        from ..workflow import forget_data

        c = self.config
        data = forget_data(self.splits, scenario, seed)
        state: dict[str, Any] = {}

        def need_oracle():
            if "model" not in state:
                bar.update(status=f"seed {seed} {scenario}: retrain oracle")
                state["model"], state["result"] = self.oracle(meta, okey, scenario, seed, data)
            return state["model"], state["result"]

        # the original, evaluated on this request (the "before" of the report)
        oracle_config = c.method_config("retrain", meta)
        oracle_id = stable_hash({"original": okey, "config": oracle_config.key_dict() if oracle_config else None})
        path = result_path(self.out, scenario, ORIGINAL, seed)
        fp = self._fingerprint(method=ORIGINAL, scenario=scenario, seed=seed, original=weights, oracle=oracle_id)
        if self._cached(path, fp) is None:
            oracle_model, _ = need_oracle()
            bar.update(status=f"seed {seed} {scenario}: evaluate original")
            metrics, evaluation = evaluate_model(original, data, reference=oracle_model, seed=seed,
                                                  batch_size=c.eval_batch_size)
            self._write(path, self._record(ORIGINAL, scenario, seed, fp, meta, status="ok", metrics=metrics,
                                           evaluation=evaluation, config=None, result=None,
                                           per_class=per_class_accuracy(original, self.splits.test,
                                                                        self.splits.num_classes)))
        else:
            self.summary.cached += 1
        bar.advance(2)

        for label, (method, overrides) in self.rows(scenario).items():
            path = result_path(self.out, scenario, label, seed)
            try:
                config, config_error = c.method_config(method, meta, overrides=overrides), None
            except UnlearnkitError as e:  # registered after the config was loaded, with overrides it rejects
                config, config_error = None, {"type": type(e).__name__, "message": str(e)}
            budget = None
            if config is not None and c.budget and method != "retrain":
                target = budget_target(c.budget, oracle_config, len(data.retain))
                config, budget = apply_budget(method, config, overrides, target, len(data.retain), len(data.forget))
                budget = budget.to_dict()
            config_dict = config.key_dict() if config is not None else overrides
            options: dict[str, Any] = {}
            if config is not None and self.heldout is not None and "check_data" in method_options(method):
                options["check_data"] = self.heldout
            if config is not None and hasattr(config, "sparse_key"):
                try:
                    options["sparse_model"] = self._sparse_row(bar, method, config, original, meta, okey, weights,
                                                               oracle_id, need_oracle, data, scenario, seed, label)
                except Exception as e:  # recorded on the method's row below
                    config, config_error = None, {"type": type(e).__name__, "message": str(e).splitlines()[0][:500]}
            fp = self._fingerprint(method=method, scenario=scenario, seed=seed, original=weights, oracle=oracle_id,
                                   config=config_dict)
            if self._cached(path, fp) is not None:
                self.summary.cached += 1
                bar.advance(1)
                continue
            bar.update(status=f"seed {seed} {scenario}: {label}")
            if config is None:
                from ..methods import list_methods

                error = config_error or {"type": "UnknownMethod",
                                         "message": f"unknown method {method!r}; registered: {', '.join(list_methods())}"}
                self._write(path, self._record(label, scenario, seed, fp, meta, status="error", error=error,
                                               config=config_dict))
                bar.advance(1)
                continue
            try:
                oracle_model, oracle_result = need_oracle()
                record = self._run_method(method, config, original, data, oracle_model, oracle_result, seed,
                                          options)
                self._write(path, self._record(label, scenario, seed, fp, meta, status="ok", budget=budget, **record))
            except Exception as e:  # a failing method is recorded and the suite goes on
                message = (str(e).strip().splitlines() or [""])[0][:500]
                error = {"type": type(e).__name__, "message": message,
                         "traceback": traceback.format_exc(limit=-4).splitlines()[-8:]}
                self._write(path, self._record(label, scenario, seed, fp, meta, status="error", error=error,
                                               config=config_dict))
            bar.advance(1)

    def _sparse_row(self, bar, method, config, original, meta, okey, weights, oracle_id, need_oracle, data,
                    scenario: str, seed: int, label: str):
        """Build (or load) ``method``'s sparse original and record it on this request; returns the model."""
        bar.update(status=f"seed {seed} {scenario}: {label} sparse original")
        model, facts, skey = self.sparse_original(method, config, original, meta, okey, seed)
        name = sparse_original_name(label)
        path = result_path(self.out, scenario, name, seed)
        fp = self._fingerprint(method=name, scenario=scenario, seed=seed, original=weights, oracle=oracle_id,
                               sparse=skey)
        if self._cached(path, fp) is not None:
            self.summary.cached += 1
            return model
        oracle_model, _ = need_oracle()
        metrics, evaluation = evaluate_model(model, data, reference=oracle_model, seed=seed,
                                             batch_size=self.config.eval_batch_size)
        result = {"prepare_seconds": facts.get("seconds"), "sample_passes": facts.get("sample_passes"),
                  "sparse_original": facts}
        self._write(path, self._record(name, scenario, seed, fp, meta, status="ok", metrics=metrics,
                                       evaluation=evaluation, config=config.sparse_key(), result=result,
                                       per_class=per_class_accuracy(model, self.splits.test,
                                                                    self.splits.num_classes)))
        return model

    def _run_method(self, method, config, original, data, oracle_model, oracle_result, seed,
                    options: dict | None = None) -> dict:
        if method == "retrain":
            result = oracle_result  # the oracle is retrain with this very config and seed
            forward_passes = getattr(oracle_result, "forward_passes", None)
        else:
            result, forward_passes = counted_unlearn(original, data.retain, data.forget, method, config=config,
                                                     device=str(self.device), seed=seed, **(options or {}))
        metrics, evaluation = evaluate_model(result.model, data, reference=oracle_model, result=result, seed=seed,
                                             batch_size=self.config.eval_batch_size)
        return {"metrics": metrics, "evaluation": evaluation, "config": result.config,
                "result": {**result.to_dict(), "forward_passes": forward_passes},
                "per_class": per_class_accuracy(result.model, self.splits.test, self.splits.num_classes)}

    def _record(self, method, scenario, seed, fingerprint, meta, *, status, config, metrics=None, evaluation=None,
                result=None, per_class=None, error=None, budget=None) -> dict:
        from ..workflow import retrain_start

        extra = {"budget": budget} if budget is not None else {}
        return {**extra, "format": RECORD_FORMAT, "fingerprint": fingerprint, "status": status, "method": method,
                "scenario": scenario, "seed": seed, "config": config, "metrics": metrics or {},
                "evaluation": evaluation, "result": result, "per_class_test_acc": per_class, "error": error,
                "original": {"weights_sha": meta.get("weights_sha"), "test_accuracy": meta.get("test_accuracy"),
                             "train_seconds": meta.get("train_seconds"), "init": meta.get("init")},
                "oracle_start": retrain_start(meta),
                "classes": getattr(self.splits.test, "classes", None), "version": package_version(),
                "created": time.strftime("%Y-%m-%dT%H:%M:%S")}


HELDOUT_SEED = 1  # apart from test_subset's seed 0


def _balanced_indices(dataset, size: int, seed: int):
    import numpy as np

    from ..data import dataset_labels

    labels = dataset_labels(dataset).numpy()
    classes = np.unique(labels)
    rng = np.random.default_rng(seed)
    per_class = max(1, size // len(classes))
    return np.sort(np.concatenate([rng.permutation(np.flatnonzero(labels == c))[:per_class] for c in classes]))


def _balanced_subset(dataset, size: int):
    """A fixed (seed 0) class-balanced subset of ``size`` samples, for cheaper evaluation."""
    from torch.utils.data import Subset

    return Subset(dataset, _balanced_indices(dataset, size, 0).tolist())


def _split_balanced(dataset, size: int, seed: int):
    """(a fixed class-balanced subset of ``size`` samples, the other samples)."""
    import numpy as np
    from torch.utils.data import Subset

    picked = _balanced_indices(dataset, size, seed)
    rest = np.setdiff1d(np.arange(len(dataset)), picked)
    return Subset(dataset, picked.tolist()), Subset(dataset, rest.tolist())


def _is_checkpoint(path: Path) -> bool:
    try:
        read_meta(path)
        return True
    except UnlearnkitError:
        return False


def run_benchmark(config: BenchConfig | str | Path | dict, out: str | Path, *, overwrite: bool = False,
                  device: str | None = None, cache_dir: str | Path | None = None,
                  on_result: Callable[[dict], None] | None = None) -> RunSummary:
    """Run (or resume) a benchmark into ``out``; returns what was trained, computed and reused.

    A config with ``variants`` runs each variant into ``out/<label>/`` with one cache, ``out/cache``.
    """
    config = load_bench_config(config)
    variants = config.variant_configs()
    if not variants:
        return BenchRunner(config, out, overwrite=overwrite, device=device, cache_dir=cache_dir,
                           on_result=on_result).run()
    out = Path(out)
    cache = Path(cache_dir) if cache_dir is not None else out / "cache"
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "bench.json", {
        "config": config.to_dict(), "config_hash": config.config_hash(), "environment": environment_info(),
        "variants": list(variants), "version": package_version()})
    total = RunSummary(out)
    for label, sub in variants.items():
        part = BenchRunner(sub, out / label, overwrite=overwrite, device=device, cache_dir=cache,
                           on_result=on_result).run()
        for name in ("originals_trained", "oracles_trained", "sparse_originals_trained", "computed", "cached",
                     "seconds"):
            setattr(total, name, getattr(total, name) + getattr(part, name))
        total.errors += [f"[{label}] {e}" for e in part.errors]
        total.resumed += part.resumed
    return total


def load_records(out: str | Path) -> list[dict]:
    """Every result record under ``out/results`` (sorted by scenario, method, seed)."""
    root = Path(out) / "results"
    if not root.is_dir():
        raise UnlearnkitError(f"{str(out)!r} holds no benchmark results (no results/ folder); run `unlearnkit bench`.")
    records = []
    for p in sorted(root.glob("*/*/seed*.json")):
        try:
            records.append(json.loads(p.read_text()))
        except (OSError, json.JSONDecodeError) as e:
            raise UnlearnkitError(f"Cannot read result {str(p)!r}: {e}") from None
    return records

