"""Audit every registered method on digits (the `smoke` config's CNN and method settings), one table.

    python benchmarks/audit_digits.py --k 8 --out runs/audit-digits [--methods finetune,ssd]

Each method's audit goes to OUT/<method>/ (report.md, audit.json); originals and oracles are
trained once into OUT/cache and shared. The table (Markdown) is printed and written to OUT/table.md;
it has a row for every method audited in OUT with this K and scenario, so running the missing
methods only (--methods) merges them with the earlier rows.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import unlearnkit as uk
from unlearnkit.bench import load_bench_config


def row(method: str, r: dict) -> str:
    fq, lira, rel, pop = r["forgetting_quality"], r["ulira"], r["relearn"], r["population"]
    pop = {k.split("@", 1)[0]: v for k, v in pop.items()}
    steps = rel["unlearned"]["forget"]["median_steps"]
    steps_text = f"> {rel['horizon']}" if steps > rel["horizon"] else f"{steps:g}"
    return (f"| {method} | {pop.get('ua', float('nan')):.1f} | {pop.get('mia_efficacy', float('nan')):.1f} | "
            f"{pop.get('avg_gap', float('nan')):.2f} | {fq['forgetting_quality']:.3f} | {fq['median_epsilon']:.2f} | "
            f"{r['utility']['ra_ratio']:.3f} | {r['utility']['ta_ratio']:.3f} | {lira['accuracy']:.1f} | "
            f"{lira['tpr_at_0.01_fpr']:.1f} | {steps_text} | {r['seconds']:.0f} |")


HEADER = ["| method | UA | MIA-Eff. | Avg.Gap | F | median eps | RA ratio | TA ratio | U-LiRA acc. | "
          "TPR@1%FPR | relearn steps | s |", "|" + "---|" * 12]


def earlier_rows(out: Path, k: int, scenario: str) -> dict[str, dict]:
    """Method -> results of the finished audits in OUT of this K and scenario (retrain, then registry order)."""
    from unlearnkit.methods import list_methods

    rows = {}
    for method in sorted(list_methods(), key=lambda m: m != "retrain"):
        try:
            record = json.loads((out / method / "audit.json").read_text())
        except (OSError, ValueError):
            continue
        if record.get("status") == "ok" and record["config"]["k"] == k and record["config"]["scenario"] == scenario:
            rows[method] = record["results"]
    return rows


def main() -> None:
    from unlearnkit.methods import list_methods

    parser = argparse.ArgumentParser()
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--out", default="runs/audit-digits")
    parser.add_argument("--methods", default=None, help="comma-separated; default every registered method")
    parser.add_argument("--scenario", default="class:3")
    args = parser.parse_args()
    torch.set_num_threads(1)
    smoke = load_bench_config("smoke")
    names = list_methods() if args.methods is None else args.methods.split(",")
    out = Path(args.out)
    common = dict(k=args.k, dataset=smoke.dataset, model=smoke.model, model_kwargs=smoke.model_kwargs,
                  recipe=smoke.recipe, scenario=args.scenario, retrain=smoke.methods.get("retrain", {}), device="cpu")
    t0 = time.perf_counter()
    for method in names:
        result = uk.audit(method, out / method, cache_dir=out / "cache", method_args=smoke.methods.get(method, {}),
                          **common)
        print(row(method, result.results), flush=True)
    results = earlier_rows(out, args.k, args.scenario)
    lines = HEADER + [row(method, r) for method, r in results.items()] + [""]
    if "retrain" in results:
        lines.append(f"retrain oracle relearn steps (median): "
                     f"{results['retrain']['relearn']['retrain']['forget']['median_steps']:g}")
    lines.append(f"this run: {', '.join(names)} in {time.perf_counter() - t0:.0f} s")
    (out / "table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
