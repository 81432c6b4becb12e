"""Probe a method's settings on a benchmark's seed-0 original, forgetting class 3 (not a test).

    python benchmarks/smoke_probe.py random_label '{}' '{"lr": 0.05, "batch_size": 32}'
    python benchmarks/smoke_probe.py rfa_lora '{}' '{"forget_batch_size": "once_per_epoch"}' \
        --config cifar10-memorise --scenario random:0.1 --cache runs/lora3/cache --cached-only

Each JSON argument is one setting: overrides on top of the config's (default `smoke`) settings of the
method; with "defaults": true in it, on top of the method's own defaults instead. Prints UA, RA, TA,
MIA-Efficacy and Avg.Gap against the seed's retrain oracle, with the benchmark runner's splits (held-out
images set apart) and evaluation. The original and oracle are trained once into --cache; with
--cached-only they must already be there (copied from a benchmark's cache), so nothing long is trained.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from unlearnkit.bench import load_bench_config
from unlearnkit.bench.runner import BenchRunner, counted_unlearn, evaluate_model
from unlearnkit.workflow import forget_data, method_options_for


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("method")
    parser.add_argument("settings", nargs="*", default=["{}"])
    parser.add_argument("--scenario", default="class:3")
    parser.add_argument("--variant", default="cnn")
    parser.add_argument("--cache", default="/tmp/smoke-probe-cache")
    parser.add_argument("--config", default="smoke", help="a shipped benchmark config name or a YAML file")
    parser.add_argument("--cached-only", action="store_true",
                        help="stop, training nothing, unless the original and oracle are in --cache")
    args = parser.parse_args()
    torch.set_num_threads(1)
    config = load_bench_config(args.config)
    config = config.variant_configs().get(args.variant, config)
    runner = BenchRunner(config, "/tmp/smoke-probe", cache_dir=args.cache, device="cpu", cached_only=args.cached_only)
    original, meta, key = runner.original(0)
    data = forget_data(runner.splits, args.scenario, 0)
    oracle, _ = runner.oracle(meta, key, args.scenario, 0, data)
    for text in args.settings:
        setting = json.loads(text)
        base = {} if setting.pop("defaults", False) else dict(config.methods.get(args.method, {}))
        overrides = {**base, **setting}
        t0 = time.perf_counter()
        result, _ = counted_unlearn(original, data.retain, data.forget, args.method, device="cpu", seed=0,
                                    **method_options_for(args.method, meta), **overrides)
        seconds = time.perf_counter() - t0
        metrics, _ = evaluate_model(result.model, data, reference=oracle, seed=0, batch_size=config.eval_batch_size)
        metrics = {k.split("@", 1)[0]: v for k, v in metrics.items()}
        figures = " ".join(f"{k}={metrics[k]:.1f}" for k in ("ua", "ra", "ta", "mia_efficacy") if k in metrics)
        print(f"{args.method} {json.dumps(overrides)}: {figures} avg_gap={metrics.get('avg_gap', float('nan')):.2f}"
              f" passes={result.sample_passes} {seconds:.1f}s", flush=True)


if __name__ == "__main__":
    from unlearnkit.errors import UnlearnkitError

    try:
        main()
    except UnlearnkitError as error:  # e.g. --cached-only and the original or oracle not cached
        raise SystemExit(str(error))
