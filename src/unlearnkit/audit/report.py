"""The audit report: OUT/report.md with its plots beside it in OUT/report_files/.

Plots: the per-example epsilon histogram (method and untouched original), the U-LiRA
ROC (log axes, the chance diagonal), and the relearning curves (held-out forget accuracy
against fine-tuning steps, method and retrain oracle, forget and retain-only attacks).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..bench.report import figure_png
from ..errors import UnlearnkitError
from ..utils import atomic_write_bytes, atomic_write_text

PLOTS = ("epsilon_hist.png", "lira_roc.png", "relearn.png")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def plot_epsilons(results: dict, method: str) -> bytes:
    plt = _pyplot()
    fq = results["forgetting_quality"]
    cap = max(max(fq["epsilons"] + fq["original_epsilons"] + [1.0]), fq["max_scored_epsilon"])
    bins = np.arange(0.0, cap + 0.5, 0.5)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.hist(fq["original_epsilons"], bins=bins, alpha=0.5, label="original (untouched)", color="tab:red")
    ax.hist(fq["epsilons"], bins=bins, alpha=0.7, label=method, color="tab:blue")
    ax.axvline(fq["max_scored_epsilon"], color="k", ls="--", lw=1, label="scores 0 from here")
    ax.set(xlabel="per-example epsilon", ylabel="forget examples", title="Per-example epsilon")
    ax.legend(fontsize=8, loc="upper center")
    return figure_png(fig)


def plot_roc(results: dict, method: str) -> bytes:
    plt = _pyplot()
    roc = results["ulira"]["roc"]
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    floor = 1.0 / max(results["ulira"]["num_decisions"], 1)
    fpr = np.maximum(roc["fpr"], floor)
    tpr = np.maximum(roc["tpr"], floor)
    ax.loglog(fpr, tpr, label=f"{method} (acc {results['ulira']['accuracy']:.1f}%)")
    ax.loglog([floor, 1], [floor, 1], "k--", lw=1, label="chance")
    ax.set(xlabel="false-positive rate", ylabel="true-positive rate", title="U-LiRA ROC")
    ax.legend(fontsize=8, loc="lower right")
    return figure_png(fig)


def plot_relearn(results: dict, method: str) -> bytes:
    plt = _pyplot()
    r = results["relearn"]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for group, label, color in (("unlearned", method, "tab:blue"), ("retrain", "retrain oracle", "tab:green")):
        for attack, style in (("forget", "-"), ("retain", ":")):
            curve = r[group][attack]["mean_curve"]
            ax.plot(range(len(curve)), curve, style, color=color, label=f"{label}, fine-tuned on {attack}")
    ax.axhline(r["level"], color="k", ls="--", lw=1, label="relearned level")
    ax.set(xlabel="fine-tuning steps", ylabel="held-out forget accuracy (%)", title="Relearning attack")
    ax.legend(fontsize=7, loc="center right")
    return figure_png(fig)


def _steps(summary: dict, horizon: int) -> str:
    median = summary["median_steps"]
    text = f"> {horizon}" if median > horizon else f"{median:g}"
    return f"{text} ({summary['reached']}/{summary['models']} reached)"


def _population_line(population: dict) -> list[str]:
    """The benchmark's population metrics, mean over the K unlearned models (each against its oracle)."""
    names = {"ua": "UA", "mia_efficacy": "MIA-Efficacy", "avg_gap": "Avg.Gap"}
    base = {k.split("@", 1)[0]: v for k, v in population.items()}
    parts = [f"{title} {base[key]:.2f}" for key, title in names.items() if key in base]
    return [f"Population metrics (mean over the K unlearned models, each against its oracle): {', '.join(parts)}.",
            ""] if parts else []


def render_markdown(record: dict) -> str:
    c, r = record["config"], record["results"]
    fq, util, lira, rel = r["forgetting_quality"], r["utility"], r["ulira"], r["relearn"]
    method = c["method"]
    lines = [
        f"# Audit of `{method}` ({c['dataset']}, {c['model']}, `{c['scenario']}`, K={c['k']})", "",
        f"{r['sizes']['forget']} forget examples; {c['k']} originals, {c['k']} unlearned models and {c['k']} "
        f"retrain oracles (seeds {c['seed']}..{c['seed'] + c['k'] - 1}); {r['seconds']:.0f} s on {record.get('device')}"
        f" ({r['trained']['originals']} originals and {r['trained']['oracles']} oracles trained, the rest from the cache).",
        "", "## Forgetting quality (competition style)", "",
        "| | forgetting quality F | null ceiling at this K | untouched original | median epsilon |",
        "|---|---|---|---|---|",
        f"| {method} | {fq['forgetting_quality']:.3f} | {fq['null_ceiling']:.3f} | {fq['original']:.3f} | "
        f"{fq['median_epsilon']:.2f} |", "",
        f"delta = {c['delta']:g}; attacks: {c['attacks']}; epsilons at or above {fq['max_scored_epsilon']:g} score 0. "
        "The null ceiling is F for two samples of one distribution (a perfect unlearner) at this K.", "",
        "![epsilon histogram](report_files/epsilon_hist.png)", "",
        "## Utility relative to retrain", "",
        "| model | forget acc. | RA | TA |", "|---|---|---|---|",
    ]
    for group in ("original", "unlearned", "retrain"):
        u = util[group]
        name = method if group == "unlearned" else group
        lines.append(f"| {name} | {u['forget_acc']:.2f} | {u['ra']:.2f} | {u['ta']:.2f} |")
    lines += ["", f"RA ratio {util['ra_ratio']:.3f}, TA ratio {util['ta_ratio']:.3f}; "
              f"competition score F x RA ratio x TA ratio = {util['score']:.3f}.", "",
              *_population_line(r.get("population", {})),
              "## U-LiRA", "",
              "| | attack accuracy | AUC | TPR @ 1% FPR | TPR @ 0.1% FPR |", "|---|---|---|---|---|"]
    for name, l in ((method, lira), ("untouched original", r["ulira_original"])):
        lines.append(f"| {name} | {l['accuracy']:.1f}% | {l['auc']:.3f} | {l['tpr_at_0.01_fpr']:.1f}% | "
                     f"{l['tpr_at_0.001_fpr']:.1f}% |")
    lines += ["", "50% = indistinguishable from retrain; "
              f"{lira['num_decisions']} decisions (K targets of each kind x forget examples).", "",
              "![U-LiRA ROC](report_files/lira_roc.png)", "",
              "## Relearning attack", "",
              f"Fine-tune {c['relearn_steps']} SGD steps (lr {c['relearn_lr']:g}, batch {c['relearn_batch_size']}) on "
              f"{r['sizes']['relearn']} forget examples (or as many retain examples); relearned when accuracy on the "
              f"other {r['sizes']['heldout']} forget examples reaches {rel['level']:.1f}% "
              f"({c['relearn_level']:g} x the originals' {rel['original_heldout_acc']:.1f}%).", "",
              "| model | steps, fine-tuned on forget | steps, fine-tuned on retain only |", "|---|---|---|"]
    for group, name in (("unlearned", method), ("retrain", "retrain oracle")):
        lines.append(f"| {name} | {_steps(rel[group]['forget'], rel['horizon'])} | "
                     f"{_steps(rel[group]['retain'], rel['horizon'])} |")
    from .runner import relearns_faster

    lines += ["", ("**The forgotten data comes back in under half the retrain oracles' steps: hidden, not removed.**"
                   if relearns_faster(r) else "Relearning is not twice as fast as on the retrain oracles."), "",
              "![relearning curves](report_files/relearn.png)", ""]
    return "\n".join(lines)


def write_audit_report(out: str | Path) -> Path:
    """Write OUT/report.md and its plots from OUT/audit.json; returns the report's path."""
    out = Path(out)
    try:
        record = json.loads((out / "audit.json").read_text())
    except (OSError, ValueError) as e:
        raise UnlearnkitError(f"Cannot read {str(out / 'audit.json')!r}: {e}") from None
    if record.get("status") != "ok":
        raise UnlearnkitError(f"{str(out)!r} holds no finished audit (status {record.get('status')!r}).")
    method = record["config"]["method"]
    files = out / "report_files"
    for name, draw in zip(PLOTS, (plot_epsilons, plot_roc, plot_relearn)):
        atomic_write_bytes(files / name, draw(record["results"], method))
    path = out / "report.md"
    atomic_write_text(path, render_markdown(record))
    return path
