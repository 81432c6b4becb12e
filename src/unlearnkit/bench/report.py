"""Reports of a benchmark run: Markdown (+ PNG files) and one self-contained HTML file.

Per scenario, a table of UA, RA, TA, MIA-Efficacy and Avg.Gap (definitions of
"Model Sparsity Can Simplify Machine Unlearning", Jia et al., NeurIPS 2023), run
time (RTE, seconds), speed-up over retrain, peak memory and trainable parameters,
each as mean ± std over seeds. Bold marks, among the unlearning methods (retrain
and the original excluded), the value closest to retrain's for UA, RA, TA and
MIA-Efficacy (the gap is what these metrics are judged by) and the lowest Avg.Gap.
Plots: Avg.Gap against run time (the efficiency frontier), forget against retain
accuracy, and per-class test accuracy of the original (before) and of every
method (after).
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import os
from pathlib import Path
from typing import Any

from ..errors import UnlearnkitError
from ..utils import atomic_write_bytes, atomic_write_text
from .runner import ORIGINAL, is_before_row, load_records, scenario_slug, sparse_original_name

# (column title, metric name, decimals)
COLUMNS = [("UA", "ua", 2), ("RA", "ra", 2), ("TA", "ta", 2), ("MIA-Eff.", "mia_efficacy", 2),
           ("Avg.Gap", "avg_gap", 2), ("RTE (s)", "rte_seconds", 1), ("of which prep. (s)", "prepare_seconds", 1),
           ("Passes (f+b)", "sample_passes", 0), ("Fwd-only", "forward_passes", 0),
           ("Cost ÷ retrain", "cost_fraction", 3), ("Time ÷ retrain", "time_fraction", 3)]
CLOSEST_TO_RETRAIN = ("ua", "ra", "ta", "mia_efficacy")
LOWEST = ("avg_gap",)


def _base(name: str) -> str:
    """Metric names may carry a suffix (``ua@1``); tables use the base name."""
    return name.split("@", 1)[0]


def _aggregate(values: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    try:
        from ..metrics import aggregate

        return aggregate(values)
    except ImportError:
        pass
    out: dict[str, dict[str, float]] = {}
    for name in sorted({k for v in values for k in v}):
        xs = [float(v[name]) for v in values if name in v and v[name] is not None and not math.isnan(float(v[name]))]
        if not xs:
            continue
        mean = sum(xs) / len(xs)
        std = math.sqrt(sum((x - mean) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else 0.0
        out[name] = {"mean": mean, "std": std, "ci95": 1.96 * std / math.sqrt(len(xs)), "n": len(xs)}
    return out


FORWARD_ONLY_WEIGHT = 1 / 3  # a forward-only pass against a forward + backward one (a backward ~ 2 forwards)


def run_cost(record: dict) -> dict[str, float]:
    """A record's cost: forward + backward sample passes, forward-only passes (when counted), seconds."""
    result = record.get("result") or {}
    metrics = {_base(k): v for k, v in (record.get("metrics") or {}).items()}
    cost = {}
    for name, value in (("sample_passes", result.get("sample_passes", metrics.get("sample_passes"))),
                        ("forward_passes", result.get("forward_passes")),
                        ("seconds", result.get("seconds", metrics.get("rte_seconds")))):
        if value is not None:
            cost[name] = float(value)
    return cost


def _work(cost: dict[str, float]) -> float:
    return cost["sample_passes"] + FORWARD_ONLY_WEIGHT * cost.get("forward_passes", 0.0)


def cost_fractions(cost: dict[str, float], retrain: dict[str, float] | None) -> dict[str, float]:
    """Cost as a fraction of the same seed and scenario's retrain oracle.

    ``cost_fraction`` = work / retrain's work, work = f+b passes + FORWARD_ONLY_WEIGHT x forward-only
    passes (these count as 0 where a record predates their counting); ``time_fraction`` = seconds /
    retrain's seconds.
    """
    out: dict[str, float] = {}
    if not retrain:
        return out
    if retrain.get("sample_passes") and "sample_passes" in cost:
        out["cost_fraction"] = _work(cost) / _work(retrain)
    if retrain.get("seconds") and "seconds" in cost:
        out["time_fraction"] = cost["seconds"] / retrain["seconds"]
    return out


def summarise(records: list[dict]) -> dict[str, Any]:
    """Per scenario: methods in order (original, retrain, then config order), aggregates and errors."""
    scenarios: dict[str, dict[str, Any]] = {}
    retrain_cost = {(r["scenario"], r["seed"]): run_cost(r) for r in records
                    if r.get("method") == "retrain" and r.get("status") == "ok"}
    for r in records:
        s = scenarios.setdefault(r["scenario"], {"methods": {}, "errors": [], "per_class": {}})
        m = s["methods"].setdefault(r["method"], {"runs": [], "errors": []})
        if r.get("status") == "ok":
            run = {_base(k): v for k, v in (r.get("metrics") or {}).items()}
            prepare = (r.get("result") or {}).get("prepare_seconds")
            if prepare is not None:  # masks, teachers, Gram matrices: the part a store can do ahead of requests
                run["prepare_seconds"] = float(prepare)
            if not is_before_row(r["method"]):
                cost = run_cost(r)
                if "forward_passes" in cost:
                    run["forward_passes"] = cost["forward_passes"]
                run.update(cost_fractions(cost, retrain_cost.get((r["scenario"], r["seed"]))))
            budget = r.get("budget")
            if budget:
                m.setdefault("budget", []).append(budget)
                if "sample_passes" in run and budget.get("target"):
                    run["budget_share"] = 100.0 * float(run["sample_passes"]) / budget["target"]
            if r["method"] == ORIGINAL:
                run["original_test_accuracy"] = (r.get("original") or {}).get("test_accuracy")
            m["runs"].append(run)
            if r.get("per_class_test_acc"):
                s["per_class"].setdefault(r["method"], []).append(r["per_class_test_acc"])
        else:
            err = r.get("error") or {}
            m["errors"].append(err)
            s["errors"].append((r["method"], r["seed"], err.get("type", "Error"), err.get("message", "")))
    for s in scenarios.values():
        for m in s["methods"].values():
            m["agg"] = _aggregate(m["runs"]) if m["runs"] else {}
        retrain = s["methods"].get("retrain", {}).get("agg", {})
        rte = retrain.get("rte_seconds", {}).get("mean")
        for name, m in s["methods"].items():
            t = m["agg"].get("rte_seconds", {}).get("mean")
            m["speedup"] = (rte / t) if (rte and t and not is_before_row(name)) else None
    return scenarios


def _label(name: str) -> str:
    """Row label: the models before unlearning say so (the original, a method's sparse original)."""
    if name == ORIGINAL:
        return "original (before)"
    if is_before_row(name):
        return name.replace("_sparse_original", " sparse original (before)")
    return name


def _order(methods: dict, config_order: list[str]) -> list[str]:
    sparse = [sparse_original_name(n) for n in config_order if sparse_original_name(n) in methods]
    first = [n for n in (ORIGINAL, *sparse, "retrain") if n in methods]
    rest = [n for n in config_order if n in methods and n not in first]
    return first + rest + sorted(n for n in methods if n not in first and n not in rest)


def _best(s: dict) -> dict[str, str]:
    """Metric -> the method to print in bold."""
    candidates = {n: m for n, m in s["methods"].items() if not is_before_row(n) and n != "retrain" and m["agg"]}
    ref = s["methods"].get("retrain", {}).get("agg", {})
    best = {}
    for metric in CLOSEST_TO_RETRAIN + LOWEST:
        scored = []
        for n, m in candidates.items():
            v = m["agg"].get(metric, {}).get("mean")
            if v is None or math.isnan(v):
                continue
            if metric in LOWEST:
                scored.append((v, n))
            elif metric in ref:
                scored.append((abs(v - ref[metric]["mean"]), n))
        if scored:
            best[metric] = min(scored)[1]
    return best


def _fmt(stat: dict | None, decimals: int) -> str:
    if not stat or stat.get("n", 1) == 0 or math.isnan(stat["mean"]):
        return "–"
    mean, std = stat["mean"], stat.get("std", 0.0)
    spec = ",.0f" if decimals == 0 else f".{decimals}f"  # counts get thousands separators
    if stat.get("n", 1) > 1:
        return f"{mean:{spec}} ± {std:{spec}}"
    return f"{mean:{spec}}"


def _budget_cell(m: dict) -> str:
    """The f+b passes a method used as a share of the budget, and what set its epochs (or steps)."""
    plans = m.get("budget") or []
    if not plans:
        return "–"
    plan = plans[0]
    share = m["agg"].get("budget_share", {}).get("mean")
    used = f"{share:.0f}%" if share is not None and not math.isnan(share) else "–"
    if plan["how"] == "derived":
        values = sorted({p["value"] for p in plans})
        knob = "max steps (a cap)" if plan["knob"] == "max_steps" else plan["knob"]
        return f"{used} ({knob} {'/'.join(map(str, values))} from the budget)"
    if plan["how"] == "set by the config":
        return f"{used} ({plan['knob']} {plan['value']} set by the config)"
    return f"{used} ({plan['how']})"


def budget_line(s: dict) -> str | None:
    targets = sorted({p["target"] for m in s["methods"].values() for p in m.get("budget", [])})
    if not targets:
        return None
    return (f"Budget: {'/'.join(f'{t:,}' for t in targets)} forward + backward sample passes per method "
            "(per seed where it is a fraction of retrain's); 'Of budget' = the passes a method used ÷ the budget.")


def originals_line(s: dict) -> str | None:
    """The original's fit of its data and the gap a method has to close (its UA against retrain's)."""
    agg = s["methods"].get(ORIGINAL, {}).get("agg") or {}
    if not agg:
        return None
    parts = [f"retain (train) accuracy {_fmt(agg.get('ra'), 2)}",
             f"forget-set accuracy {_fmt(agg.get('forget_acc'), 2)}",
             f"test accuracy {_fmt(agg.get('original_test_accuracy'), 2)} (whole test set)"]
    line = "Original: " + ", ".join(parts) + "."
    if "gap_ua" in agg:
        line += (f" Gap to close: |UA(original) − UA(retrain)| = {_fmt(agg['gap_ua'], 2)} points "
                 "(the original's UA gap to the retrain oracle; a method cannot do better than close it).")
    return line


def table_rows(s: dict, config_order: list[str]) -> tuple[list[str], list[list[tuple[str, bool]]]]:
    """Header and rows of (text, bold) cells for one scenario."""
    budgeted = any(m.get("budget") for m in s["methods"].values())
    header = (["Method"] + [c[0] for c in COLUMNS] + ["Speed-up", "Peak mem (MB)", "Trainable params"]
              + (["Of budget"] if budgeted else []) + ["Seeds"])
    best = _best(s)
    rows = []
    for name in _order(s["methods"], config_order):
        m = s["methods"][name]
        agg = m["agg"]
        label = _label(name)
        if not m["runs"]:
            err = m["errors"][0] if m["errors"] else {}
            rows.append([(label, False), (f"error: {err.get('type', '?')}", False)] + [("", False)] * (len(header) - 2))
            continue
        row = [(label, False)]
        for _, metric, dec in COLUMNS:
            row.append((_fmt(agg.get(metric), dec), best.get(metric) == name))
        row.append((f"{m['speedup']:.1f}x" if m["speedup"] else "–", False))
        row.append((_fmt(agg.get("peak_memory_mb"), 0), False))
        tp = agg.get("trainable_params", {}).get("mean")
        row.append((f"{int(round(tp)):,}" if tp is not None else "–", False))
        if budgeted:
            row.append((_budget_cell(m), False))
        n_err = len(m["errors"])
        row.append((f"{len(m['runs'])}" + (f" (+{n_err} failed)" if n_err else ""), False))
        rows.append(row)
    return header, rows


# ---- plots ------------------------------------------------------------------------------------------
def figure_png(fig) -> bytes:
    """A matplotlib figure as PNG bytes (the figure is closed); the benchmark and audit reports embed them."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def pareto_points(s: dict, config_order: list[str]) -> list[tuple[str, float, float]]:
    """(method, mean cost fraction, mean Avg.Gap) of every method with both, retrain and the 'before' rows excluded."""
    points = []
    for meth in _order(s["methods"], config_order):
        agg = s["methods"][meth]["agg"]
        if is_before_row(meth) or meth == "retrain" or "avg_gap" not in agg or "cost_fraction" not in agg:
            continue
        x, y = agg["cost_fraction"]["mean"], agg["avg_gap"]["mean"]
        if not (math.isnan(x) or math.isnan(y)):
            points.append((meth, max(x, 1e-6), y))
    return points


def pareto_front(points: list[tuple[str, float, float]]) -> list[tuple[str, float, float]]:
    """The points no other point beats on both cost and Avg.Gap, by increasing cost."""
    front, best = [], math.inf
    for p in sorted(points, key=lambda p: (p[1], p[2])):
        if p[2] < best:
            front.append(p)
            best = p[2]
    return front


def _label_axes(ax, title: str, xlabel: str, ylabel: str, *, log_x: bool = False) -> None:
    if log_x:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)


def make_plots(summary: dict, config_order: list[str]) -> dict[str, bytes]:
    """name -> PNG bytes."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    names = list(summary)
    plots: dict[str, bytes] = {}
    n = len(names)
    cmap = plt.get_cmap("tab20")
    all_methods = sorted({m for s in summary.values() for m in s["methods"]})
    color = {m: cmap(i % 20) for i, m in enumerate(all_methods)}

    fig, axes = plt.subplots(1, n, figsize=(5 * n, 4), squeeze=False)
    for ax, scen in zip(axes[0], names):
        for meth in _order(summary[scen]["methods"], config_order):
            agg = summary[scen]["methods"][meth]["agg"]
            if is_before_row(meth) or "avg_gap" not in agg or "rte_seconds" not in agg:
                continue
            x, y = max(agg["rte_seconds"]["mean"], 1e-3), agg["avg_gap"]["mean"]
            ax.errorbar(x, y, xerr=agg["rte_seconds"].get("std", 0), yerr=agg["avg_gap"].get("std", 0), fmt="o",
                        color=color[meth], capsize=2)
            ax.annotate(meth, (x, y), textcoords="offset points", xytext=(4, 3), fontsize=8)
        _label_axes(ax, scen, "run time RTE (s, log)", "Avg.Gap to retrain (lower is better)", log_x=True)
    fig.suptitle("Efficiency frontier: Avg.Gap vs run time")
    plots["avg_gap_vs_time"] = figure_png(fig)

    fig, axes = plt.subplots(1, n, figsize=(5 * n, 4), squeeze=False)
    for ax, scen in zip(axes[0], names):
        points = pareto_points(summary[scen], config_order)
        for meth, x, y in points:
            ax.plot(x, y, "o", color=color[meth])
            ax.annotate(meth, (x, y), textcoords="offset points", xytext=(4, 3), fontsize=8)
        front = pareto_front(points)
        if len(front) > 1:
            ax.step([p[1] for p in front], [p[2] for p in front], where="post", color="0.5", lw=1, ls="--")
        _label_axes(ax, scen, "cost ÷ retrain (sample passes, log)", "Avg.Gap to retrain (lower is better)",
                    log_x=True)
    fig.suptitle("Pareto: Avg.Gap vs cost as a fraction of retrain (dashed: the non-dominated methods)")
    plots["pareto_cost"] = figure_png(fig)

    fig, axes = plt.subplots(1, n, figsize=(5 * n, 4), squeeze=False)
    for ax, scen in zip(axes[0], names):
        for meth in _order(summary[scen]["methods"], config_order):
            agg = summary[scen]["methods"][meth]["agg"]
            if "forget_acc" not in agg or "ra" not in agg:
                continue
            x, y = agg["forget_acc"]["mean"], agg["ra"]["mean"]
            ax.errorbar(x, y, xerr=agg["forget_acc"].get("std", 0), yerr=agg["ra"].get("std", 0),
                        fmt="s" if is_before_row(meth) or meth == "retrain" else "o", color=color[meth], capsize=2)
            ax.annotate(meth, (x, y), textcoords="offset points", xytext=(4, 3), fontsize=8)
        _label_axes(ax, scen, "forget-set accuracy (%)", "retain-set accuracy (%)")
    fig.suptitle("Forget vs retain accuracy per method")
    plots["forget_vs_retain"] = figure_png(fig)

    for scen in names:
        per_class = summary[scen]["per_class"]
        rows = [m for m in _order(summary[scen]["methods"], config_order) if m in per_class]
        if not rows:
            continue
        import numpy as np

        grid = np.array([np.nanmean(np.array(per_class[m], dtype=float), axis=0) for m in rows])
        fig, ax = plt.subplots(figsize=(1.0 + 0.6 * grid.shape[1], 0.8 + 0.4 * len(rows)))
        im = ax.imshow(grid, vmin=0, vmax=100, cmap="viridis", aspect="auto")
        for i in range(grid.shape[0]):
            for j in range(grid.shape[1]):
                ax.text(j, i, f"{grid[i, j]:.0f}", ha="center", va="center", fontsize=7,
                        color="white" if grid[i, j] < 60 else "black")
        ax.set_yticks(range(len(rows)), [_label(r) for r in rows])
        ax.set_xticks(range(grid.shape[1]))
        ax.set_xlabel("class")
        ax.set_title(f"{scen}: per-class test accuracy (%), before and after")
        fig.colorbar(im, ax=ax, fraction=0.03)
        plots[f"per_class_{scenario_slug(scen)}"] = figure_png(fig)
    return plots


# ---- writers -------------------------------------------------------------------------------------------
def _read_bench(out: Path) -> dict:
    path = out / "bench.json"
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        return {}


def _env_lines(bench: dict) -> list[tuple[str, str]]:
    env = bench.get("environment", {})
    cfg = bench.get("config", {})
    lines = [("config", f"{cfg.get('name', '?')} (hash {bench.get('config_hash', '?')})"),
             ("dataset", f"{cfg.get('dataset')} {json.dumps(cfg.get('dataset_args', {}))}"),
             ("model", f"{cfg.get('model')} {json.dumps(cfg.get('model_kwargs', {}))}"),
             ("recipe of the original", json.dumps(cfg.get("recipe", {}))),
             ("seeds", ", ".join(map(str, cfg.get("seeds", [])))),
             ("device", str(bench.get("device", "?"))),
             ("metrics by", str(bench.get("evaluator", "?")))]
    hw = f"{env.get('processor', '?')}, {env.get('cpu_count', '?')} CPUs, torch threads {env.get('torch_threads', '?')}"
    if env.get("gpu"):
        hw += f", GPU {env['gpu']} x{env.get('gpu_count', 1)}"
    lines.append(("hardware", hw))
    lines.append(("platform", str(env.get("platform", "?"))))
    versions = ", ".join(f"{k} {env[k]}" for k in ("unlearnkit", "python", "torch", "numpy", "scikit-learn") if k in env)
    lines.append(("versions", versions))
    return lines


NOTE = ("UA = 100 − forget accuracy, RA = retain accuracy, TA = test accuracy (without the forgotten class for class "
        "forgetting), MIA-Eff. = % of the forget set a membership classifier calls non-member, Avg.Gap = mean "
        "|metric − retrain| over UA, RA, TA, MIA (all in %; lower Avg.Gap is better). RTE = wall-clock seconds of the "
        "unlearning (retrain: training from scratch), of which prep. = the method's prepare step (pruning, masks, a "
        "teacher copy; for pgu the Gram matrices, which `unlearnkit prepare` computes once ahead of all requests). "
        "Passes (f+b) = forward + backward sample passes the method's training counted; Fwd-only = samples through "
        "the model with autograd off during the run (evaluation checks, Gram passes, teachers, frozen passes; "
        "– = not counted by the run that wrote the record); Cost ÷ retrain = (f+b + Fwd-only / 3) / the same sum "
        "of the retrain oracle, and Time ÷ retrain = RTE / the oracle's RTE, both against the same seed and "
        "scenario's oracle. "
        "Bold: closest to retrain (UA, RA, TA, MIA-Eff.) or lowest (Avg.Gap) among the unlearning methods. "
        "Mean ± std over seeds.")


HTML_HEAD = ("<!doctype html><html><head><meta charset='utf-8'><title>{title}</title><style>"
             "body{{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}}"
             "table{{border-collapse:collapse;margin:1em 0;font-size:14px}}"
             "th,td{{border:1px solid #ccc;padding:4px 8px;text-align:right}}th{{background:#f3f3f3}}"
             "td:first-child,th:first-child{{text-align:left}}img{{max-width:100%}}"
             ".note{{color:#555;font-size:13px}}.err{{color:#a00}}</style></head><body>")


def _results(out: Path) -> tuple[dict, dict, list[str]]:
    """(bench.json, per-scenario summary, method order) of one benchmark folder's records."""
    records = load_records(out)
    if not records:
        raise UnlearnkitError(f"{str(out)!r} holds no result records yet; run `unlearnkit bench` first.")
    bench = _read_bench(out)
    cfg = bench.get("config") or {}
    config_order = list(cfg.get("methods", {}))
    scen_order = cfg.get("scenarios", [])
    if cfg:  # only what the latest config asks for (records of dropped methods or seeds stay on disk)
        records = [r for r in records if r.get("scenario") in scen_order and r.get("seed") in cfg.get("seeds", [])
                   and (r.get("method") in (ORIGINAL, *config_order, *map(sparse_original_name, config_order)))]
        if not records:
            raise UnlearnkitError(f"{str(out)!r} holds no results for its config {cfg.get('name')!r} yet.")
    summary = summarise(records)
    summary = {k: summary[k] for k in sorted(summary, key=lambda s: (s not in scen_order,
                                                                       scen_order.index(s) if s in scen_order else 0, s))}
    return bench, summary, config_order


def _sections(bench: dict, summary: dict, config_order: list[str], plots: dict[str, bytes], level: int,
              prefix: str = "") -> tuple[list[str], list[str]]:
    """Markdown lines and HTML parts of one benchmark's tables and plots (files named ``prefix + plot``)."""
    hx, h = "#" * level, html.escape
    md: list[str] = []
    parts: list[str] = []
    for scen, s in summary.items():
        header, rows = table_rows(s, config_order)
        md += [f"{hx} Scenario `{scen}`", ""]
        parts.append(f"<h{level}>Scenario <code>{h(scen)}</code></h{level}>")
        for line in (originals_line(s), budget_line(s)):
            if line:
                md += [line, ""]
                parts.append(f"<p>{h(line)}</p>")
        md += ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
        md += ["| " + " | ".join(f"**{t}**" if b and t else t for t, b in row) + " |" for row in rows]
        md.append("")
        parts.append("<table><tr>" + "".join(f"<th>{h(c)}</th>" for c in header) + "</tr>")
        parts += ["<tr>" + "".join(f"<td>{'<b>' + h(t) + '</b>' if b and t else h(t)}</td>" for t, b in row)
                  + "</tr>" for row in rows]
        parts.append("</table>")
        if s["errors"]:
            md += ["Failed runs:", ""] + [f"- `{m}` seed {seed}: {t}: {msg}" for m, seed, t, msg in s["errors"]] + [""]
            parts.append("<p>Failed runs:</p><ul class='err'>" + "".join(
                f"<li><code>{h(m)}</code> seed {seed}: {h(t)}: {h(msg)}</li>" for m, seed, t, msg in s["errors"])
                + "</ul>")
        name = f"per_class_{scenario_slug(scen)}"
        if name in plots:
            md += [f"![per-class accuracy, {scen}](report_files/{prefix}{name}.png)", ""]
            parts.append(_img(plots[name], f"per-class accuracy, {scen}"))
    md += [f"{hx} Plots", "", f"![Pareto: Avg.Gap vs cost fraction](report_files/{prefix}pareto_cost.png)", "",
           f"![Avg.Gap vs time](report_files/{prefix}avg_gap_vs_time.png)", "",
           f"![forget vs retain accuracy](report_files/{prefix}forget_vs_retain.png)", "", f"{hx} Environment", ""]
    md += [f"- **{k}**: {v}" for k, v in _env_lines(bench)] + [""]
    parts.append(f"<h{level}>Plots</h{level}>")
    parts.append(_img(plots["pareto_cost"], "Pareto: Avg.Gap vs cost fraction"))
    parts.append(_img(plots["avg_gap_vs_time"], "Avg.Gap vs time"))
    parts.append(_img(plots["forget_vs_retain"], "forget vs retain accuracy"))
    parts.append(f"<h{level}>Environment</h{level}><table>" + "".join(
        f"<tr><th>{h(k)}</th><td style='text-align:left'>{h(v)}</td></tr>" for k, v in _env_lines(bench)) + "</table>")
    return md, parts


def _write(out: Path, bench: dict, md_body: list[str], html_body: list[str],
           plots: dict[str, bytes]) -> tuple[Path, Path]:
    """report.md, report_files/*.png and the self-contained report.html of ``out``."""
    title = f"unlearnkit benchmark: {(bench.get('config') or {}).get('name', out.name)}"
    md = [f"# {title}", "", NOTE, ""] + md_body
    parts = [HTML_HEAD.format(title=html.escape(title)),
             f"<h1>{html.escape(title)}</h1><p class='note'>{html.escape(NOTE)}</p>"] + html_body + ["</body></html>"]
    files = out / "report_files"
    for name, png in plots.items():
        atomic_write_bytes(files / f"{name}.png", png)
    md_path, html_path = out / "report.md", out / "report.html"
    atomic_write_text(md_path, "\n".join(md))
    atomic_write_text(html_path, "\n".join(parts))
    _readable(md_path, html_path, *(files / f"{name}.png" for name in plots))
    return md_path, html_path


def _tuning_sections(out: Path, level: int) -> tuple[list[str], list[str]]:
    """The grid and the choice (OUT/tuning.json) as one table per reported scenario."""
    path = out / "tuning.json"
    if not path.is_file():
        return [], []
    tuning = json.loads(path.read_text())
    hx, h = "#" * level, html.escape
    sizes: dict[str, int] = {}
    for p in tuning.get("points", []):
        if p["scenario"] == next(iter(tuning["choice"]), None):
            sizes[p["method"]] = sizes.get(p["method"], 0) + 1
    header = ["Method", "Validation scenario", "Grid", "Chosen", "Val. Avg.Gap", "Val. cost ÷ retrain"]
    md = [f"{hx} Tuning", "", f"Validation seeds {', '.join(map(str, tuning['seeds']))}; criterion: "
          f"{tuning['criterion']}. Grid and every point's scores: `tuning.json`.", ""]
    parts = [f"<h{level}>Tuning</h{level}><p class='note'>{h(md[2])}</p>"]
    for scenario, chosen in tuning["choice"].items():
        rows = []
        for method, c in chosen.items():
            grid = " × ".join(f"{k} {v}" for k, v in tuning["grid"][method].items())
            picked = (", ".join(f"{k}={v}" for k, v in c["point"].items()) if c.get("point") is not None
                      else c.get("fallback", "–"))
            rows.append([method, tuning["scenarios"][scenario], f"{grid} ({sizes.get(method, '?')} points)", picked,
                         f"{c['avg_gap']:.2f}" if c.get("avg_gap") is not None else "–",
                         f"{c['cost_fraction']:.3f}" if c.get("cost_fraction") is not None else "–"])
        md += [f"Scenario `{scenario}`:", "", "| " + " | ".join(header) + " |",
               "|" + "|".join(["---"] * len(header)) + "|"] + ["| " + " | ".join(r) + " |" for r in rows] + [""]
        parts.append(f"<p>Scenario <code>{h(scenario)}</code>:</p><table><tr>"
                     + "".join(f"<th>{h(c)}</th>" for c in header) + "</tr>"
                     + "".join("<tr>" + "".join(f"<td>{h(c)}</td>" for c in r) + "</tr>" for r in rows) + "</table>")
    return md, parts


def _plots_of(out: Path, summary: dict, order: list[str], drawn: dict | None) -> dict[str, bytes]:
    """The plots of one results folder, drawn once per report (``drawn`` remembers them)."""
    if drawn is None:
        return make_plots(summary, order)
    if str(out) not in drawn:
        drawn[str(out)] = make_plots(summary, order)
    return drawn[str(out)]


def _benchmark(out: Path, level: int, prefix: str = "",
               drawn: dict | None = None) -> tuple[dict, list[str], list[str], dict[str, bytes]]:
    """(bench.json, Markdown lines, HTML parts, plots) of one benchmark folder: the defaults and, when the
    config had a tuning section, the tuning choice and the tuned tables (OUT/tuned/)."""
    bench, summary, order = _results(out)
    plots = _plots_of(out, summary, order, drawn)
    if not (out / "tuned" / "results").is_dir():
        return (bench, *_sections(bench, summary, order, plots, level, prefix), plots)
    hx = "#" * level
    md, parts = _sections(bench, summary, order, plots, level + 1, prefix)
    md = [f"{hx} Defaults", "", "Each method with its configured settings (the paper defaults unless the config "
          "overrides them).", ""] + md
    parts = [f"<h{level}>Defaults</h{level}>"] + parts
    t_md, t_parts = _tuning_sections(out, level + 1)
    t_bench, t_summary, t_order = _results(out / "tuned")
    t_plots = _plots_of(out / "tuned", t_summary, t_order, drawn)
    s_md, s_parts = _sections(t_bench, t_summary, t_order, t_plots, level + 1, prefix + "tuned_")
    md += [f"{hx} Tuned", "", "The tuned methods with the grid point chosen on the validation seeds, run on the "
           "reported seeds (methods without a grid: see Defaults).", ""] + t_md + s_md
    parts += [f"<h{level}>Tuned</h{level}>"] + t_parts + s_parts
    plots = {**plots, **{f"tuned_{k}": v for k, v in t_plots.items()}}
    return bench, md, parts, plots


def write_report(out: str | Path) -> tuple[Path, Path]:
    """Write ``report.md`` (+ ``report_files/*.png``) and a self-contained ``report.html`` into ``out``.

    For a benchmark with variants, each ``out/<label>/`` gets its own report and ``out`` one that
    holds every variant's tables and plots (each plot drawn once, written to both).
    """
    out = Path(out)
    bench = _read_bench(out)
    if not bench.get("variants"):
        bench, md, parts, plots = _benchmark(out, 2)
        return _write(out, bench, md, parts, plots)
    variants = [v for v in bench["variants"] if (out / v / "results").is_dir()]
    if not variants:
        raise UnlearnkitError(f"{str(out)!r} holds no result records yet; run `unlearnkit bench` first.")
    md: list[str] = []
    parts: list[str] = []
    files: dict[str, bytes] = {}
    drawn: dict = {}
    for label in variants:
        v_bench, v_md, v_parts, plots = _benchmark(out / label, 2, drawn=drawn)
        _write(out / label, v_bench, v_md, v_parts, plots)
        _, v_md, v_parts, _ = _benchmark(out / label, 3, prefix=f"{label}_", drawn=drawn)
        md += [f"## Variant `{label}`", ""] + v_md
        parts += [f"<h2>Variant <code>{html.escape(label)}</code></h2>"] + v_parts
        files.update({f"{label}_{name}": png for name, png in plots.items()})
    return _write(out, bench, md, parts, files)


def _readable(*paths: Path) -> None:
    for p in paths:
        try:
            os.chmod(p, 0o644)  # temp files are created 0600; a report is meant to be shared
        except OSError:
            pass


def _img(png: bytes, alt: str) -> str:
    return f"<p><img alt='{html.escape(alt)}' src='data:image/png;base64,{base64.b64encode(png).decode()}'></p>"
