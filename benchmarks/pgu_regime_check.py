"""PGU on a benchmark's cached original and retrain oracle: the current code against an older checkout, side by side.

Issue 15 asked for a cheap PGU "with Avg.Gap no worse than today's"; today's was measured on a regime whose
originals do not fit their data (cifar10-cpu). This script runs PGU on the seed's original and oracles that a
benchmark run (e.g. ``cifar10-memorise``) has already cached, with the benchmark's own splits (held-out test
images set apart, TA on the rest, the forgotten class removed from TA), the same call the runner makes
(retain and forget sets, ``check_data`` = the held-out images) and its evaluation (``evaluate_model`` against
the oracle), and prints per row: prepare and request seconds, forward+backward sample-passes, forward-only
samples (prepare and request apart) and UA/RA/TA/MIA-Efficacy/Avg.Gap, with the request as a fraction of the
oracle's RTE and sample-passes.

    python benchmarks/pgu_regime_check.py --bench /work/runs/cifar10-memorise --work /work/runs/pgu5 \\
        --scenario random:0.1 --set --set energy=0.97 --out benchmarks/results/pgu_regime_check_random10.json
    # + an older implementation (a detached worktree of it), run in a subprocess with PYTHONPATH=OLD_SRC:
    python benchmarks/pgu_regime_check.py ... --old-src /work/wt-pguold/src --old-set

Nothing is ever trained and nothing is written into --bench: the cached originals and oracles are copied to
WORK/cache first (an uncached original is an error; an oracle still training in the benchmark run is waited
for up to --wait minutes, the requests run first since they do not need it). Each ``--set KEY=VALUE ...``
is one row of the current PGU (no pairs: its defaults; without --set one row at the defaults, none when
--old-src is given); each ``--old-set ...`` one row of the old one, whose request runs in a fresh process
importing the old package (its weights and facts come back through WORK/old/; the process checks it reads
the same images and labels) and is evaluated here with the current evaluation code. One torch thread by
default; seconds are wall time on whatever else the machine runs, so compare rows of one invocation and
read the sample counts, which are exact.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch


class ForwardOnlySamples:
    """Samples a model sees with autograd off (the benchmark runner's ForwardOnlyCounter, re-stated so that
    the request-only mode runs with any unlearnkit version on the path)."""

    def __init__(self) -> None:
        self.samples = 0

    def __deepcopy__(self, memo):  # the method's working copy counts into this one counter
        return self

    def __call__(self, module, args, kwargs) -> None:
        if torch.is_grad_enabled() or torch._C._functorch.peek_interpreter_stack() is not None:
            return
        for value in (*args, *kwargs.values()):
            if isinstance(value, torch.Tensor) and value.dim() > 0:
                self.samples += int(value.shape[0])
                return


def run_request(model, retain, forget, heldout, overrides: dict, seed: int):
    """(UnlearnResult, forward-only samples of prepare, of the request): PGU as the runner calls it."""
    from unlearnkit.methods import create_method

    counter = ForwardOnlySamples()
    handle = model.register_forward_pre_hook(counter, with_kwargs=True)
    try:
        method = create_method("pgu", model, dict(overrides), device="cpu", seed=seed, check_data=heldout)
        method.prepare(retain, forget)
        prepare_forward = counter.samples
        result = method.unlearn()
    finally:
        handle.remove()
    for key, hook in list(result.model._forward_pre_hooks.items()):  # the copy holds the hook under its key
        if hook is counter:
            del result.model._forward_pre_hooks[key]
            result.model._forward_pre_hooks_with_kwargs.pop(key, None)
    return result, prepare_forward, counter.samples - prepare_forward


def data_checksum(retain, forget, heldout) -> list[float]:
    """A few sums that differ if the old package reads other images or labels than the current one."""
    def labels(ds):
        return float(sum(int(ds[i][1]) * (i % 7 + 1) for i in range(len(ds))))

    def pixels(ds):
        return float(sum(ds[i][0].double().sum().item() for i in range(min(64, len(ds)))))

    return [round(v, 3) for v in (labels(forget), labels(heldout), pixels(forget), pixels(retain), len(retain))]


# ---- request-only mode (runs under the old package) -----------------------------------------------------
def request_only(spec_path: Path) -> None:
    """Run the old PGU on the splits the main process wrote; save its weights and facts next to the spec."""
    import unlearnkit as uk
    from safetensors.torch import load_file, save_file
    from torch.utils.data import Subset

    spec = json.loads(spec_path.read_text())
    torch.set_num_threads(spec["threads"])
    splits = uk.load_dataset(spec["dataset"], **spec["dataset_args"])
    retain, forget = Subset(splits.train, spec["retain_ids"]), Subset(splits.train, spec["forget_ids"])
    heldout = Subset(splits.test, spec["heldout_ids"])
    checksum = data_checksum(retain, forget, heldout)
    if checksum != spec["checksum"]:
        raise SystemExit(f"the old package reads other data: checksum {checksum} != {spec['checksum']}")
    model = uk.create_model(spec["model"], **spec["model_args"])
    model.load_state_dict(load_file(spec["weights"]))
    model.eval()
    result, prepare_forward, request_forward = run_request(model, retain, forget, heldout, spec["overrides"],
                                                           spec["seed"])
    out = spec_path.parent
    save_file({k: v.contiguous() for k, v in result.model.state_dict().items()}, str(out / "model.safetensors"))
    facts = {**result.to_dict(), "prepare_forward": prepare_forward, "request_forward": request_forward,
             "unlearnkit": uk.__file__}
    (out / "result.json").write_text(json.dumps(facts, default=str))


# ---- main mode (the current package) ----------------------------------------------------------------------
def copy_cache(bench: Path, work: Path) -> Path:
    """Copy the finished originals and oracles of ``bench``'s cache to WORK/cache (never written in place)."""
    for folder in ("originals", "oracles"):
        for unit in sorted((bench / "cache" / folder).glob("*")):
            target = work / "cache" / folder / unit.name
            finished = (unit / "checkpoint.json").is_file() and (unit / "model.safetensors").is_file()
            if unit.name.startswith(".") or target.exists() or not finished:  # "." names: a save in progress
                continue
            tmp = target.with_name(target.name + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.copytree(unit, tmp)
            tmp.rename(target)
    return work / "cache"


def cached_only_runner(config, work: Path, cache: Path):
    from unlearnkit.bench.runner import BenchRunner

    return BenchRunner(config, work / "bench", cache_dir=cache, device="cpu", cached_only=True)


def summary(metrics: dict) -> dict:
    names = {"ua@1": "UA", "ra@1": "RA", "ta@1": "TA", "mia_efficacy@2": "MIA", "avg_gap@2": "Avg.Gap"}
    return {short: metrics.get(key) for key, short in names.items()}


def request_row(label, result: dict, prepare_forward, request_forward, metrics, oracle_seconds, oracle_passes):
    info = result["info"]
    prepare_s, total_s = result["prepare_seconds"], result["seconds"]
    request_s = total_s - prepare_s
    return {"run": label, "prepare_seconds": prepare_s, "request_seconds": request_s,
            "sample_passes": result["sample_passes"], "prepare_forward_samples": prepare_forward,
            "request_forward_samples": request_forward, "steps": info.get("pgu_steps"),
            "request_vs_retrain_seconds": request_s / oracle_seconds,
            "prepare_request_vs_retrain_seconds": total_s / oracle_seconds,
            "request_vs_retrain_passes": result["sample_passes"] / oracle_passes,
            "forward_vs_retrain_passes": (prepare_forward + request_forward) / oracle_passes,
            "stop": info.get("stop_reason"), "forget_acc_history": info.get("forget_acc_history"),
            "lr_boost": info.get("lr_boost"), "config": result.get("config"), **summary(metrics),
            "metrics": metrics}


def print_row(row: dict) -> None:
    figures = ", ".join(f"{k} {row[k]:.2f}" for k in ("UA", "RA", "TA", "MIA", "Avg.Gap") if row.get(k) is not None)
    if "prepare_seconds" not in row:
        print(f"{row['run']}: {figures}", flush=True)
        return
    print(f"{row['run']}: prepare {row['prepare_seconds']:.1f} s ({row['prepare_forward_samples']} fwd), request "
          f"{row['request_seconds']:.1f} s ({row['sample_passes']} fwd+bwd, {row['request_forward_samples']} fwd, "
          f"{row['steps']} steps), req/retrain {row['request_vs_retrain_seconds']:.4f} s / "
          f"{row['request_vs_retrain_passes']:.4f} passes, (prep+req)/retrain "
          f"{row['prepare_request_vs_retrain_seconds']:.4f} s; checks {row['forget_acc_history']}; "
          f"stop: {row['stop']}; {figures}", flush=True)


def old_request(args, runner, original_key: str, meta, data, heldout, overrides: dict, scenario: str,
                index: int) -> tuple[dict, Path]:
    """Run the old package's PGU in a subprocess on the same splits; (its facts, its weights file)."""
    out = Path(args.work) / "old" / f"{scenario.replace(':', '')}-s{args.seed}-{index}"
    out.mkdir(parents=True, exist_ok=True)
    c = runner.config
    spec = {"dataset": c.dataset, "dataset_args": c.dataset_args, "model": c.model, "model_args": meta["model_args"],
            "weights": str(Path(args.work) / "cache" / "originals" / original_key / "model.safetensors"),
            "retain_ids": list(data.retain.indices), "forget_ids": list(data.forget.indices),
            "heldout_ids": list(heldout.indices), "checksum": data_checksum(data.retain, data.forget, heldout),
            "overrides": overrides, "seed": args.seed, "threads": args.threads}
    (out / "spec.json").write_text(json.dumps(spec))
    env = {**os.environ, "PYTHONPATH": args.old_src, "OMP_NUM_THREADS": str(args.threads)}
    subprocess.run([sys.executable, __file__, "--request-only", str(out / "spec.json")], env=env, check=True)
    return json.loads((out / "result.json").read_text()), out / "model.safetensors"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bench", help="a benchmark output folder whose cache holds the original and oracles")
    parser.add_argument("--work", default="runs/pgu_regime_check", help="copies of the cache, the old rows' files")
    parser.add_argument("--scenario", nargs="+", default=["random:0.1"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", nargs="*", action="append", default=None,
                        help="current-PGU overrides KEY=VALUE (JSON values); repeat --set for several rows")
    parser.add_argument("--old-src", default=None, help="the src/ folder of an older checkout (its package runs "
                                                         "the --old-set rows)")
    parser.add_argument("--old-set", nargs="*", action="append", default=None,
                        help="old-PGU overrides; repeat for several rows (default with --old-src: its defaults)")
    parser.add_argument("--out", default=None, help="JSON file for the results")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--wait", type=float, default=0,
                        help="minutes to wait for an oracle the benchmark run is still training (default: none)")
    parser.add_argument("--request-only", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.request_only:
        return request_only(Path(args.request_only))
    if not args.bench:
        parser.error("--bench is needed (a benchmark output folder)")
    torch.set_num_threads(args.threads)

    from safetensors.torch import load_file

    from unlearnkit.bench.config import BenchConfig
    from unlearnkit.bench.runner import evaluate_model, result_path
    from unlearnkit.metrics import evaluate

    bench, work = Path(args.bench), Path(args.work)
    config = BenchConfig.from_dict(json.loads((bench / "bench.json").read_text())["config"])
    runner = cached_only_runner(config, work, copy_cache(bench, work))
    original, meta, original_key = runner.original(args.seed)
    current_groups = args.set if args.set is not None else ([] if args.old_src else [[]])
    settings = [{k: json.loads(v) for k, v in (s.split("=", 1) for s in group)} for group in current_groups]
    old_settings = ([{k: json.loads(v) for k, v in (s.split("=", 1) for s in group)} for group in
                     (args.old_set or [[]])] if args.old_src else [])
    from unlearnkit.workflow import forget_data

    report = {"args": vars(args), "commits": {"current": git_commit(Path(__file__).parent),
                                              "old": git_commit(Path(args.old_src)) if args.old_src else None},
              "scenarios": {}}
    for scenario in args.scenario:
        data = forget_data(runner.splits, scenario, args.seed)
        # the requests first: they need no oracle, which may still be training in the benchmark run
        jobs = [("current", o) for o in settings] + [("old", o) for o in old_settings]
        runs = []
        for index, (code, overrides) in enumerate(jobs):
            label = f"{code} pgu" + "".join(f" {k}={v}" for k, v in overrides.items())
            if code == "current":
                result, prepare_forward, request_forward = run_request(original, data.retain, data.forget,
                                                                       runner.heldout, overrides, args.seed)
                model, facts = result.model, result.to_dict()
            else:
                facts, weights = old_request(args, runner, original_key, meta, data, runner.heldout, overrides,
                                             scenario, index)
                model = copy.deepcopy(original)
                model.load_state_dict(load_file(str(weights)))
                prepare_forward, request_forward = facts["prepare_forward"], facts["request_forward"]
            print(f"{label}: done, {facts['sample_passes']} fwd+bwd, stop: {facts['info'].get('stop_reason')}",
                  flush=True)
            runs.append((label, model.eval(), facts, prepare_forward, request_forward))

        oracle, oracle_result = wait_for_oracle(runner, bench, meta, original_key, scenario, args, data)
        oracle_eval = evaluate(oracle, data, seed=args.seed, batch_size=config.eval_batch_size)
        retrain_s, retrain_passes = oracle_result.seconds, oracle_result.sample_passes
        rows = [{"run": "retrain", "seconds": retrain_s, "sample_passes": retrain_passes,
                 **summary(oracle_eval.metrics)}]
        metrics, _ = evaluate_model(original, data, reference=oracle_eval, seed=args.seed,
                                    batch_size=config.eval_batch_size)
        rows.append({"run": "original", **summary(metrics)})
        bench_original = result_path(bench, scenario, "original", args.seed)
        if bench_original.is_file():  # the benchmark's own record: the same splits give the same figures
            rows[-1]["bench_record_avg_gap"] = json.loads(bench_original.read_text())["metrics"].get("avg_gap@2")
        print(f"== {scenario} seed {args.seed}: retrain {retrain_s:.1f} s, {retrain_passes} sample-passes", flush=True)
        for row in rows:
            print_row(row)
        report["scenarios"][scenario] = {"rows": rows}
        for label, model, facts, prepare_forward, request_forward in runs:
            metrics, _ = evaluate_model(model, data, reference=oracle_eval, result=facts, seed=args.seed,
                                        batch_size=config.eval_batch_size)
            row = request_row(label, facts, prepare_forward, request_forward, metrics, retrain_s, retrain_passes)
            rows.append(row)
            print_row(row)
            write_report(args.out, report)  # after every row: a later failure keeps the earlier ones


def wait_for_oracle(runner, bench: Path, meta, original_key: str, scenario: str, args, data):
    """The scenario's cached oracle, copied from ``bench`` once it is there (waiting up to --wait minutes)."""
    from unlearnkit.errors import UnlearnkitError

    deadline = time.monotonic() + 60 * args.wait
    while True:
        copy_cache(bench, Path(args.work))
        try:
            return runner.oracle(meta, original_key, scenario, args.seed, data)
        except UnlearnkitError:
            if time.monotonic() > deadline:
                raise
        print(f"waiting for the {scenario} oracle to be cached in {bench}", flush=True)
        time.sleep(60)


def git_commit(folder: Path) -> str | None:
    done = subprocess.run(["git", "-C", str(folder), "rev-parse", "HEAD"], capture_output=True, text=True)
    return done.stdout.strip() or None


def write_report(path: str | None, report: dict) -> None:
    if path:
        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_text(json.dumps(report, indent=1, default=str))
        tmp.replace(out)


if __name__ == "__main__":
    started = time.perf_counter()
    main()
    print(f"({time.perf_counter() - started:.0f} s)", file=sys.stderr)
