"""The Unlearn-Sparse CIFAR-10 ResNet-18 benchmark on one GPU, or the same suite made tiny for the CPU.

    bash benchmarks/gpu.sh [OUT]                          # the GPU run (wraps this script)
    python benchmarks/gpu_bench.py --tiny --out runs/t    # tiny: digits, a narrow ResNet-18, 1-2 epochs

The suite is the shipped ``unlearn-sparse-gpu`` config run by ``unlearnkit bench``'s runner, so it
resumes from its cache: a run stopped by a time limit picks up where it stopped when run again.
``--tiny`` keeps every method and scenario of that config and shrinks data, width and epochs only,
so the CPU test exercises the very suite the GPU runs (data kept on the device, channels_last).
Exit code: 0 when every run succeeded, 1 when some failed (listed), 2 on a usage error.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

CONFIG = "unlearn-sparse-gpu"
TINY = {"dataset": "digits", "model_kwargs": {"width": 8}, "eval_batch_size": 512,
        "recipe": {"epochs": 2, "batch_size": 64}}


def tiny_config(config: dict) -> dict:
    """The same methods and scenarios on digits with an 8-wide ResNet-18 and one epoch per method."""
    from unlearnkit.methods import make_config

    out = {**config, **{k: v for k, v in TINY.items() if k != "recipe"}}
    out["recipe"] = {**config["recipe"], **TINY["recipe"]}
    out["name"] = f"{config['name']}-tiny"
    methods = {}
    for name, overrides in config["methods"].items():
        fields = make_config(name, {}).to_dict()
        short = {k: v for k, v in (("epochs", 1), ("max_steps", 5)) if k in fields and name != "retrain"}
        methods[name] = {**overrides, **short}
    out["methods"] = methods
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/unlearn-sparse-gpu", help="Results directory (resumed if present).")
    parser.add_argument("--tiny", action="store_true", help="Digits, an 8-wide ResNet-18, 1-2 epochs (CPU test).")
    parser.add_argument("--device", default=None, help="cpu, cuda or auto (default: the config's).")
    parser.add_argument("--data-root", default=None, help="Folder with cifar10_jpeg.npz (default: the usual lookup).")
    parser.add_argument("--overwrite", action="store_true", help="Recompute everything, originals included.")
    args = parser.parse_args(argv)

    from unlearnkit.bench import BenchConfig, load_bench_config, run_benchmark, write_report
    from unlearnkit.errors import UnlearnkitError

    try:
        config = load_bench_config(CONFIG).to_dict()
        if args.tiny:
            config = tiny_config(config)
        if args.data_root is not None:
            config["data_root"] = args.data_root
        summary = run_benchmark(BenchConfig.from_dict(config), Path(args.out), device=args.device,
                                overwrite=args.overwrite)
        md, _ = write_report(Path(args.out))
    except UnlearnkitError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{config['name']}: {summary.computed} run(s) computed, {summary.cached} reused, "
          f"{summary.originals_trained} original(s) and {summary.oracles_trained} oracle(s) trained in "
          f"{summary.seconds:.0f} s (mixed precision: {os.environ.get('UNLEARNKIT_MIXED_PRECISION', 'no')}) -> {md}")
    for line in summary.errors:
        print(f"failed: {line}", file=sys.stderr)
    return 1 if summary.errors else 0


if __name__ == "__main__":
    sys.exit(main())
