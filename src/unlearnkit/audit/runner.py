"""``unlearnkit.audit``: per-example forgetting quality, U-LiRA and a relearning attack.

K originals (seeds seed..seed+K-1) and their K retrain oracles come from the benchmark
cache (``BenchRunner.original`` / ``BenchRunner.oracle``: trained once, then loaded);
each original is unlearned by the audited method (with seed + ``UNLEARN_SEED_OFFSET``,
so auditing "retrain" compares fresh retrains with the oracles, not the oracles with
themselves). One forget set is used for all K models. Output directory::

    OUT/audit.json          config, every figure, per-example epsilons (atomic writes)
    OUT/report.md           the report; plots in OUT/report_files/
    OUT/cache/              originals and oracles (or --cache-dir, e.g. a benchmark's cache)
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import Subset

from ..bench.config import BenchConfig
from ..config import Config, Interval, Options, field
from ..errors import InvalidConfigError, UnlearnkitError
from ..progress import progress_bar
from ..training import accuracy, predict_logits
from ..utils import atomic_write_json, environment_info, package_version
from . import epsilon as eps_mod
from .lira import ulira
from .relearn import relearn_curve, steps_to_level, summarise_steps

AUDIT_KIND = "unlearnkit-audit"
AUDIT_FORMAT = 1
UNLEARN_SEED_OFFSET = 1000
RELEARN_FACTOR = 0.5  # relearning in under this share of the oracles' steps means hidden, not removed
MethodFn = Callable[[nn.Module, Any, int], nn.Module]  # (original, UnlearningData, seed) -> unlearned model


SHARED_WITH_BENCH = ("dataset", "dataset_args", "data_root", "model", "model_kwargs", "recipe", "device")


def bench_field(name: str):
    """BenchConfig's declaration of ``name`` (default and help): an audit's originals are a benchmark's."""
    declared = next(f for f in dataclasses.fields(BenchConfig) if f.name == name)
    default = declared.default if declared.default_factory is dataclasses.MISSING else declared.default_factory()
    return field(default, declared.metadata["help"])


@dataclass(kw_only=True)
class AuditConfig(Config):
    """What an audit trains, unlearns and attacks."""

    method: str = field("finetune", "The audited method (a registered name).")
    method_args: dict = field({}, "Config overrides of the audited method, e.g. {lr: 0.01, epochs: 3}.")
    scenario: str = field("class:3", "Forget spec: class:K[,K], random:F or ids:FILE (.txt or .npy of training ids).")
    k: int = field(8, "Originals, unlearned models and retrain oracles (each K); at least 3.")
    seed: int = field(0, "First seed: model i uses seed + i.")
    forget_seed: int = field(0, "Seed of a random forget set; one set is used for all K models.")
    dataset: str = bench_field("dataset")
    dataset_args: dict = bench_field("dataset_args")
    data_root: str | None = bench_field("data_root")
    model: str = bench_field("model")
    model_kwargs: dict = bench_field("model_kwargs")
    recipe: dict = bench_field("recipe")
    retrain: dict = field({}, "Overrides of the retrain oracles' config (default: the originals' recipe).")
    delta: float = field(eps_mod.DELTA, "The delta of the (epsilon, delta) estimate.")
    attacks: Literal["competition", "all"] = field(
        "competition", "Threshold attacks: the competition's family, or every single and double threshold.")
    relearn_steps: int = field(30, "SGD steps of the relearning attack.")
    relearn_fraction: float = field(0.1, "Part of the forget set the attacker fine-tunes on (the rest is scored).")
    relearn_lr: float = field(0.01, "Learning rate of the relearning attack (SGD, momentum 0.9).")
    relearn_batch_size: int = field(16, "Batch size of the relearning attack.")
    relearn_level: float = field(0.9, "Relearned when held-out forget accuracy reaches this share of the original's.")
    device: str = bench_field("device")

    constraints = {
        **{name: BenchConfig.constraints[name] for name in SHARED_WITH_BENCH},
        "method": [str], "method_args": [dict], "scenario": [str], "k": [Interval(int, 3, None)],
        "seed": [Interval(int, 0, None)], "forget_seed": [Interval(int, 0, None)],
        "retrain": [dict], "delta": [Interval(float, 0, 1, closed="neither")],
        "attacks": [Options("competition", "all")], "relearn_steps": [Interval(int, 1, None)],
        "relearn_fraction": [Interval(float, 0, 1, closed="neither")], "relearn_lr": [Interval(float, 0, None, closed="neither")],
        "relearn_batch_size": [Interval(int, 1, None)], "relearn_level": [Interval(float, 0, 1, closed="right")],
    }

    def _check_consistency(self) -> None:
        from ..bench.config import valid_scenario
        from ..data.forget import SPEC_HELP

        if self.scenario.startswith("ids:"):
            self.forget_ids()  # a missing or unreadable file is a one-line error before anything is trained
        elif not valid_scenario(self.scenario):
            raise InvalidConfigError(f"Audit: scenario {self.scenario!r} is not a forget spec; allowed: {SPEC_HELP}.")
        self.bench_config()  # dataset, model, recipe, scenario and retrain overrides, one-line errors

    def bench_config(self):
        """The benchmark config whose cache holds this audit's originals and oracles."""
        # the bench knows class:/random: specs only; its scenarios are never run by the audit, which
        # names its oracles itself (oracle_scenario_key), so an ids: audit validates with a stand-in
        scenario = "random:0.5" if self.scenario.startswith("ids:") else self.scenario
        try:
            return BenchConfig(name="audit", **{name: getattr(self, name) for name in SHARED_WITH_BENCH},
                               scenarios=[scenario], methods={"retrain": self.retrain},
                               seeds=list(range(self.seed, self.seed + self.k)))
        except InvalidConfigError as e:
            raise InvalidConfigError(f"Audit: {e}") from None

    def forget_ids(self) -> np.ndarray:
        from ..data.forget import read_ids_file

        return read_ids_file(self.scenario[len("ids:"):])

    def oracle_scenario_key(self) -> str:
        """The scenario name under which oracles are cached: a random set is named with its own seed,
        an ids set with the hash of its sorted ids (not the file's name)."""
        if self.scenario.startswith("class:"):
            return self.scenario
        if self.scenario.startswith("ids:"):
            from ..store.files import ids_sha256

            return f"ids:sha256={ids_sha256(np.unique(self.forget_ids()))}"
        return f"{self.scenario}@forget_seed={self.forget_seed}"


@dataclass
class AuditResult:
    out: Path
    results: dict
    report: Path | None = None

    @property
    def forgetting_quality(self) -> float:
        return self.results["forgetting_quality"]["forgetting_quality"]


# ---- output directory ----------------------------------------------------------------------
def is_audit_dir(path: Path) -> bool:
    import json

    try:
        return json.loads((path / "audit.json").read_text()).get("kind") == AUDIT_KIND
    except (OSError, ValueError, AttributeError):
        return False


def prepare_out_dir(out: Path, overwrite: bool) -> None:
    """Refuse a non-empty folder that is not a previous audit (``overwrite`` writes into it anyway)."""
    if out.exists() and not out.is_dir():
        raise UnlearnkitError(f"Audit output {str(out)!r} is a file; give a directory.")
    if out.is_dir() and any(out.iterdir()) and not is_audit_dir(out) and not overwrite:
        raise UnlearnkitError(f"Audit output {str(out)!r} is not empty and holds no previous audit (audit.json); "
                              "give an empty or new directory, or pass --overwrite to write into it.")
    out.mkdir(parents=True, exist_ok=True)


def check_method(config: AuditConfig) -> None:
    """Unknown method names and bad overrides fail before any folder is written or model trained."""
    from ..errors import unknown_name_error
    from ..methods import list_methods
    from ..workflow import method_config_for

    if config.method not in list_methods():
        raise unknown_name_error("method", config.method, list_methods())
    meta = {"recipe": config.bench_config().recipe_for(config.seed).to_dict()}
    method_config_for(config.method, meta, config.method_args)


# ---- per-model measurements ------------------------------------------------------------------
def forget_statistics(model: nn.Module, forget) -> np.ndarray:
    logits, labels = predict_logits(model, forget)
    return eps_mod.logit_scaled_confidence(logits, labels)


def utility(model: nn.Module, data) -> dict[str, float]:
    test = data.test_retain if data.request.kind == "class" and data.test_retain is not None else data.test
    return {"forget_acc": accuracy(model, data.forget), "ra": accuracy(model, data.retain), "ta": accuracy(model, test)}


def relearn_splits(data, config: AuditConfig):
    """(relearn part of the forget set, held-out rest, as many retain samples as the relearn part)."""
    return split_for_relearning(data, config.relearn_fraction, config.forget_seed, repr(config.scenario))


def split_for_relearning(data, fraction: float, seed: int, named: str):
    """``relearn_splits`` for any UnlearningData; ``named`` says whose forget set it is in the error."""
    rng = np.random.default_rng(seed)
    n_forget = len(data.forget)
    if n_forget < 2:
        raise UnlearnkitError(f"The relearning attack needs at least 2 forget samples; {named} has {n_forget}.")
    order = rng.permutation(n_forget)
    n = min(n_forget - 1, max(1, round(fraction * n_forget)))
    retain_pick = rng.permutation(len(data.retain))[:n]
    return (Subset(data.forget, order[:n].tolist()), Subset(data.forget, order[n:].tolist()),
            Subset(data.retain, retain_pick.tolist()))


class _Auditor:
    def __init__(self, config: AuditConfig, out: Path, cache_dir: Path | None, method_fn: MethodFn | None):
        from ..bench.runner import BenchRunner

        self.config = config
        self.method_fn = method_fn
        self.bench = BenchRunner(config.bench_config(), out, cache_dir=cache_dir or out / "cache")
        self.device = self.bench.device
        splits = self.bench.splits
        from ..data import make_unlearning_data

        self.data = make_unlearning_data(splits.train, splits.test, config.scenario, seed=config.forget_seed,
                                         num_classes=splits.num_classes)
        self.relearn_set, self.heldout, self.retain_control = relearn_splits(self.data, config)

    def unlearn(self, original: nn.Module, meta: dict, seed: int) -> nn.Module:
        from ..api import unlearn
        from ..workflow import method_config_for, method_options_for

        if self.method_fn is not None:
            return self.method_fn(original, self.data, seed)
        c = self.config
        method_config = method_config_for(c.method, meta, c.method_args)
        result = unlearn(original, self.data.retain, self.data.forget, c.method, config=method_config,
                         device=str(self.device), seed=seed, **method_options_for(c.method, meta))
        return result.model

    def relearn(self, model: nn.Module, train_set, seed: int) -> list[float]:
        c = self.config
        return relearn_curve(model, train_set, self.heldout, steps=c.relearn_steps, lr=c.relearn_lr,
                             batch_size=c.relearn_batch_size, seed=seed, device=self.device)

    def measure(self, model: nn.Module, seed: int, *, attack: bool, reference: nn.Module | None = None) -> dict:
        out = {"stats": forget_statistics(model, self.data.forget), "utility": utility(model, self.data),
               "heldout_acc": accuracy(model, self.heldout)}
        if reference is not None:  # the benchmark's population metrics (UA, MIA-Efficacy, Avg.Gap, ...)
            from ..bench.runner import evaluate_model

            out["population"], _ = evaluate_model(model, self.data, reference=reference, seed=seed)
        if attack:
            out["relearn_forget"] = self.relearn(model, self.relearn_set, seed)
            out["relearn_retain"] = self.relearn(model, self.retain_control, seed)
        return out

    def run(self) -> dict:
        c = self.config
        rows: dict[str, list[dict]] = {"original": [], "unlearned": [], "retrain": []}
        t0 = time.perf_counter()
        with progress_bar(3 * c.k, f"audit {c.method} K={c.k}") as bar:
            for i in range(c.k):
                seed = c.seed + i
                bar.update(status=f"model {i + 1}/{c.k}: original")
                original, meta, key = self.bench.original(seed)
                rows["original"].append(self.measure(original, seed, attack=False))
                bar.advance(1, status=f"model {i + 1}/{c.k}: retrain oracle")
                oracle, _ = self.bench.oracle(meta, key, c.oracle_scenario_key(), seed, self.data)
                rows["retrain"].append(self.measure(oracle, seed, attack=True))
                bar.advance(1, status=f"model {i + 1}/{c.k}: {c.method}")
                torch.manual_seed(seed + UNLEARN_SEED_OFFSET)
                unlearned = self.unlearn(original, meta, seed + UNLEARN_SEED_OFFSET)
                rows["unlearned"].append(self.measure(unlearned, seed, attack=True, reference=oracle))
                bar.advance(1)
        results = summarise(c, rows)
        results["seconds"] = time.perf_counter() - t0
        results["trained"] = {"originals": self.bench.summary.originals_trained,
                              "oracles": self.bench.summary.oracles_trained}
        results["sizes"] = {"forget": len(self.data.forget), "relearn": len(self.relearn_set),
                            "heldout": len(self.heldout), "retain": len(self.data.retain)}
        return results


# ---- figures -------------------------------------------------------------------------------------
def _stack(rows: list[dict], key: str) -> np.ndarray:
    return np.stack([r[key] for r in rows])


def _mean_utility(rows: list[dict]) -> dict[str, float]:
    return {k: float(np.mean([r["utility"][k] for r in rows])) for k in rows[0]["utility"]}


def _relearn_summary(rows: list[dict], level: float, horizon: int) -> dict:
    out = {}
    for attack in ("relearn_forget", "relearn_retain"):
        curves = [r[attack] for r in rows]
        out[attack.split("_")[1]] = {**summarise_steps([steps_to_level(cv, level) for cv in curves], horizon),
                                     "mean_curve": np.mean(curves, 0).tolist()}
    return out


def summarise(c: AuditConfig, rows: dict[str, list[dict]]) -> dict:
    """Every audit figure from the per-model statistics, accuracies and relearning curves."""
    unlearned, retrained, original = (_stack(rows[g], "stats") for g in ("unlearned", "retrain", "original"))
    fq = eps_mod.forgetting_quality(unlearned, retrained, c.delta, c.attacks)
    fq_original = eps_mod.forgetting_quality(original, retrained, c.delta, c.attacks)
    util = {g: _mean_utility(rows[g]) for g in rows}
    ra_ratio = util["unlearned"]["ra"] / util["retrain"]["ra"] if util["retrain"]["ra"] else float("nan")
    ta_ratio = util["unlearned"]["ta"] / util["retrain"]["ta"] if util["retrain"]["ta"] else float("nan")
    level = c.relearn_level * float(np.mean([r["heldout_acc"] for r in rows["original"]]))
    population = {name: float(np.mean([r["population"][name] for r in rows["unlearned"]]))
                  for name in rows["unlearned"][0].get("population", {})}
    lira = ulira(unlearned, retrained)
    lira_original = ulira(original, retrained)
    return {
        "forgetting_quality": {
            "forgetting_quality": fq["forgetting_quality"],
            "null_ceiling": eps_mod.null_forgetting_quality(c.k, attacks=c.attacks),
            "original": fq_original["forgetting_quality"],
            "max_scored_epsilon": eps_mod.max_scored_epsilon(c.k),
            "epsilons": fq["epsilons"].tolist(), "scores": fq["scores"].tolist(),
            "original_epsilons": fq_original["epsilons"].tolist(),
            "median_epsilon": float(np.median(fq["epsilons"])),
        },
        "utility": {**util, "ra_ratio": ra_ratio, "ta_ratio": ta_ratio,
                    "score": fq["forgetting_quality"] * ra_ratio * ta_ratio},
        "population": population,
        "ulira": lira,
        "ulira_original": {k: v for k, v in lira_original.items() if k not in ("roc", "per_example_accuracy")},
        "relearn": {"level": level, "horizon": c.relearn_steps,
                    "unlearned": _relearn_summary(rows["unlearned"], level, c.relearn_steps),
                    "retrain": _relearn_summary(rows["retrain"], level, c.relearn_steps),
                    "original_heldout_acc": level / c.relearn_level},
    }


def relearns_faster(results: dict) -> bool:
    """True when fine-tuning on the relearn set restores the forget accuracy in under half the oracles' steps.

    Half, not merely fewer: fresh retrains and the oracles differ by a step or two by chance.
    """
    r = results["relearn"]
    return r["unlearned"]["forget"]["median_steps"] < RELEARN_FACTOR * r["retrain"]["forget"]["median_steps"]


# ---- entry point ----------------------------------------------------------------------------------
def audit(method: str | MethodFn = "finetune", out: str | Path = "runs/audit", *,
          config: AuditConfig | dict | None = None, overwrite: bool = False, cache_dir: str | Path | None = None,
          report: bool = True, **fields) -> AuditResult:
    """Audit ``method``: forgetting quality, U-LiRA and relearning over K models; writes OUT/audit.json.

    ``method`` is a registered name or a callable ``fn(original, data, seed) -> model``
    (e.g. a wrapper under test). ``fields`` (or ``config``) set ``AuditConfig`` fields.
    """
    method_fn = method if callable(method) else None
    values = config.to_dict() if isinstance(config, AuditConfig) else dict(config or {})
    values.update(fields)
    values["method"] = getattr(method, "__name__", "custom") if method_fn is not None else method
    cfg = AuditConfig.from_dict(values)
    if method_fn is None:
        check_method(cfg)
    out = Path(out)
    prepare_out_dir(out, overwrite)
    header = {"kind": AUDIT_KIND, "format": AUDIT_FORMAT, "config": cfg.to_dict(), "custom_method": method_fn is not None,
              "version": package_version(), "environment": environment_info()}
    atomic_write_json(out / "audit.json", {**header, "status": "running"})
    auditor = _Auditor(cfg, out, Path(cache_dir) if cache_dir is not None else None, method_fn)
    header["device"] = str(auditor.device)
    results = auditor.run()
    atomic_write_json(out / "audit.json", {**header, "status": "ok", "results": results,
                                           "created": time.strftime("%Y-%m-%dT%H:%M:%S")})
    path = None
    if report:
        from .report import write_audit_report

        path = write_audit_report(out)
    return AuditResult(out=out, results=results, report=path)
