"""Per-epoch cost of finetune, lora, prune_lora and rfa_lora, side by side on one model and data.

Same model (resnet20 or vit_tiny, CIFAR-sized), same data (random uint8 32x32x3
images, 10% of them the forget set), same batch size, one epoch each; every
method runs in its own fresh process (``--inner``), so the peak memory of one
does not leak into another's. Reported per method: the training epoch's
seconds (``unlearn`` minus ``prepare``; the merge is included), the prepare
seconds (adapter injection, pruning, RFA's class means and cached original
features), their sum, the ratios to finetune's and lora's epoch, and the peak
resident memory (RSS of the process sampled every 10 ms, from ``/proc/self/statm``)
above what it held just before the timed call (model, data, the imported
libraries and a 32-sample warm-up excluded; torch's CPU allocations are in the
RSS, unlike in ``tracemalloc``).

A method may carry options: ``rfa_lora[feature_cache_mb=0]`` is rfa_lora without its
feature cache (the per-step no-grad forward), ``rfa_lora[forget_batch_size=once_per_epoch]`` with
forget batches that cover the forget set about once an epoch, in the same run (values are JSON, or a
bare string). The table's sample passes are the forward+backward sample passes of the epoch.

    python benchmarks/lora_cost.py                        # both models, ~3 minutes on 1 thread
    python benchmarks/lora_cost.py --models resnet20 --n 512 --repeats 3 --set dropout=0.1
    python benchmarks/lora_cost.py --dropout-steps        # step time of LoRA dropout 0.0 vs 0.1
    python benchmarks/lora_cost.py --methods "finetune,lora,rfa_lora,rfa_lora[feature_cache_mb=0]"
    python benchmarks/lora_cost.py --models resnet20 --dataset cifar10 --subset 2500 --scenario class:3 \
        --weights runs/pgu_cost/cifar102500-resnet20-e12-s0-original.safetensors   # real data, trained model

``benchmarks/pgu_cost.py`` calls it that way, so one run reports PGU's and the LoRA family's cost
on the same model and data. ``--json FILE`` also writes the rows.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

METHODS = ("finetune", "lora", "prune_lora", "rfa_lora")


def random_data(n: int):
    """``n`` random uint8 32x32x3 images with random labels, the first 10% the forget set."""
    import torch

    from unlearnkit.data import ArrayDataset

    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    n_forget = n // 10
    return ArrayDataset(x[n_forget:], y[n_forget:], scale=255.0), ArrayDataset(x[:n_forget], y[:n_forget], scale=255.0)


def real_data(dataset: str, subset: int | None, scenario: str):
    import unlearnkit as uk

    splits = uk.load_dataset(dataset, **({"subset": subset} if subset else {}))
    data = uk.make_unlearning_data(splits.train, splits.test, scenario, seed=0)
    return data.retain, data.forget


def save_split(path: str, retain, forget) -> None:
    """The retain and forget samples as plain arrays (safetensors), so each method's process reads them in
    well under a second instead of decoding the whole JPEG dataset again (~10-30 s a process)."""
    from safetensors.torch import save_file

    from unlearnkit.data.loading import resolve_arrays

    tensors = {}
    for part, dataset in (("retain", retain), ("forget", forget)):
        base, indices = resolve_arrays(dataset)
        tensors[f"{part}_x"], tensors[f"{part}_y"] = base.x[indices].contiguous(), base.y[indices].contiguous()
    for name in ("mean", "std"):
        if getattr(base, name) is not None:
            tensors[name] = getattr(base, name).flatten().contiguous()
    save_file(tensors, path, metadata={"scale": str(base.scale)})


def load_split(path: str):
    from safetensors import safe_open

    from unlearnkit.data import ArrayDataset

    with safe_open(path, "pt") as f:
        t = {k: f.get_tensor(k) for k in f.keys()}
        scale = float(f.metadata()["scale"])
    norm = dict(scale=scale, mean=t.get("mean"), std=t.get("std"))
    return (ArrayDataset(t["retain_x"], t["retain_y"], **norm), ArrayDataset(t["forget_x"], t["forget_y"], **norm))


def option_value(text: str):
    """A JSON value, else the bare string (``once_per_epoch``)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def split_method(spec: str) -> tuple[str, dict]:
    """``"rfa_lora[feature_cache_mb=0;forget_batch_size=once_per_epoch]"`` ->
    ("rfa_lora", {"feature_cache_mb": 0, "forget_batch_size": "once_per_epoch"})."""
    name, _, rest = spec.partition("[")
    items = [item for item in rest.rstrip("]").split(";") if item]
    return name, {k: option_value(v) for k, v in (item.split("=", 1) for item in items)}


def run_one(model_name: str, method: str, n: int, batch_size: int, threads: int, lora_options: dict,
            dataset: str | None = None, subset: int | None = None, scenario: str = "class:3",
            weights: str | None = None, split_file: str | None = None) -> dict:
    import torch
    from torch.utils.data import Subset

    import unlearnkit as uk
    from unlearnkit.progress import set_progress
    from unlearnkit.utils import PeakMemory, _rss_bytes

    torch.set_num_threads(threads)
    set_progress(False)
    if split_file:
        retain, forget = load_split(split_file)
    else:
        retain, forget = real_data(dataset, subset, scenario) if dataset else random_data(n)
    torch.manual_seed(0)
    model = uk.create_model(model_name, num_classes=10, in_channels=3, image_size=32)
    if weights:
        from safetensors.torch import load_file

        model.load_state_dict(load_file(weights))
    spec = method
    method, own_options = split_method(spec)
    options = dict(epochs=1, batch_size=batch_size, device="cpu", **(lora_options if method != "finetune" else {}),
                   **own_options)
    # warm-up on a few samples through the same code paths, so lazy initialisation is not timed; the forget set
    # cut in proportion, as a warm-up with all of it (forget_batch_size=once_per_epoch on one retain batch: one
    # forget batch of the whole set) leaves freed pages in the process that hide the timed call's peak
    warm_forget = Subset(forget, list(range(max(1, len(forget) * 32 // len(retain)))))
    uk.unlearn(model, Subset(retain, list(range(32))), warm_forget, method, **options)
    before = _rss_bytes()
    with PeakMemory() as mem:
        r = uk.unlearn(model, retain, forget, method, **options)
    return {"model": model_name, "method": spec, "epoch_s": r.seconds - r.prepare_seconds,
            "prepare_s": r.prepare_seconds, "peak_mb": (mem.cpu_bytes - before) / 2 ** 20,
            "trainable": r.trainable_params, "total": r.total_params, "sample_passes": r.sample_passes}


def dropout_steps(model_name: str, threads: int, rounds: int = 3) -> None:
    """Seconds per training step (batch 64): full fine-tuning vs LoRA with dropout 0.0 and 0.1, interleaved."""
    import copy
    import time

    import torch
    import torch.nn.functional as F

    import unlearnkit as uk
    from unlearnkit.components.lora_adapters import add_lora

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    base = uk.create_model(model_name, num_classes=10, in_channels=3, image_size=32)
    x, y = torch.randn(64, 3, 32, 32), torch.randint(0, 10, (64,))
    runs = {}
    for kind in ("finetune", "lora dropout 0.0", "lora dropout 0.1"):
        model = copy.deepcopy(base)
        if kind != "finetune":
            add_lora(model, dropout=float(kind.rsplit(" ", 1)[1]))
        model.train()
        runs[kind] = (model, torch.optim.Adam([p for p in model.parameters() if p.requires_grad], 1e-3), [])

    def step(model, opt) -> float:
        t0 = time.perf_counter()
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return time.perf_counter() - t0

    for model, opt, _ in runs.values():
        step(model, opt)  # warm-up
    for _ in range(rounds):
        for model, opt, times in runs.values():
            times.append(step(model, opt))
    print(model_name, ", ".join(f"{k}: {statistics.median(t):.3f} s/step" for k, (_, _, t) in runs.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="resnet20,vit_tiny")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--n", type=int, default=320, help="number of 32x32x3 images (10%% forget)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=1, help="fresh processes per method (median taken)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="an option of the LoRA methods, e.g. --set dropout=0.0 (repeatable)")
    parser.add_argument("--dropout-steps", action="store_true",
                        help="only time single steps of finetune vs LoRA with dropout 0.0 / 0.1 (batch 64)")
    parser.add_argument("--dataset", default=None, help="a dataset name (e.g. cifar10) instead of random images")
    parser.add_argument("--subset", type=int, default=None, help="with --dataset: training images kept")
    parser.add_argument("--scenario", default="class:3", help="with --dataset: the forget request")
    parser.add_argument("--weights", default=None, help="safetensors state dict to start from (one model)")
    parser.add_argument("--json", default=None, help="also write the rows to this JSON file")
    parser.add_argument("--inner", nargs=2, metavar=("MODEL", "METHOD"), help=argparse.SUPPRESS)
    parser.add_argument("--split-file", default=None, help=argparse.SUPPRESS)  # the parent's decoded data
    args = parser.parse_args()
    data_args = ["--scenario", args.scenario]
    for flag, value in (("--dataset", args.dataset), ("--subset", args.subset), ("--weights", args.weights)):
        if value is not None:
            data_args += [flag, str(value)]
    if args.inner:
        lora_options = {k: option_value(v) for k, v in (item.split("=", 1) for item in args.set)}
        print(json.dumps(run_one(*args.inner, args.n, args.batch_size, args.threads, lora_options,
                                 args.dataset, args.subset, args.scenario, args.weights, args.split_file)))
        return
    if args.dropout_steps:
        for model_name in args.models.split(","):
            dropout_steps(model_name, args.threads)
        return
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), UNLEARNKIT_QUIET="1")
    shown = f", LoRA options {' '.join(args.set)}" if args.set else ""
    what = (f"{args.dataset} ({args.subset or 'all'} training images, {args.scenario})" if args.dataset
            else f"{args.n} random images 3x32x32 ({args.n // 10} forget)")
    print(f"{what}, batch {args.batch_size}, "
          f"{args.threads} torch thread(s), 1 epoch, median of {args.repeats} process(es) per method{shown}")
    print("| model | method | epoch s | x finetune | x lora | prepare s | prepare + epoch s | peak MB | sample passes "
          "| trainable |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---|")
    methods = args.methods.split(",")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        if args.dataset:  # decoded once here, read by every method's process
            data_args += ["--split-file", os.path.join(tmp, "split.safetensors")]
            save_split(data_args[-1], *real_data(args.dataset, args.subset, args.scenario))
        rows = measure(args, methods, data_args, env)
    if args.json:
        tmp = f"{args.json}.tmp"
        with open(tmp, "w") as f:
            json.dump([{**row, "conditions": what} for row in rows], f, indent=1)  # a list: pgu_cost.py reads it
        os.replace(tmp, args.json)  # atomic


def measure(args, methods: list[str], data_args: list[str], env: dict) -> list[dict]:
    """Each method in a fresh process, ``--repeats`` rounds; prints the table and returns its rows."""
    rows = []
    for model_name in args.models.split(","):
        runs: dict[str, list[dict]] = {m: [] for m in methods}
        for _ in range(args.repeats):  # round-robin, so drifting machine load hits every method alike
            for method in methods:
                out = subprocess.run([sys.executable, __file__, "--inner", model_name, method, "--n", str(args.n),
                                      "--batch-size", str(args.batch_size), "--threads", str(args.threads),
                                      *data_args, *[f"--set={item}" for item in args.set]],
                                     env=env, check=True, capture_output=True, text=True)
                runs[method].append(json.loads(out.stdout.strip().splitlines()[-1]))
                print(json.dumps(runs[method][-1]), file=sys.stderr, flush=True)  # each run as it ends: a cut run
                # still leaves what it measured
        medians = {m: statistics.median(r["epoch_s"] for r in runs[m]) for m in methods}
        base, lora = medians.get("finetune"), medians.get("lora")
        for method in methods:
            row = dict(runs[method][0])
            for key in ("epoch_s", "prepare_s", "peak_mb"):
                row[key] = statistics.median(r[key] for r in runs[method])
            row["epoch_s_each"] = [r["epoch_s"] for r in runs[method]]  # the spread behind the median
            row["vs_finetune"] = row["epoch_s"] / base if base else None
            row["vs_lora"] = row["epoch_s"] / lora if lora else None
            rows.append(row)
            ratios = " | ".join(f"{row[k]:.2f}" if row[k] is not None else "-" for k in ("vs_finetune", "vs_lora"))
            print(f"| {model_name} | {method} | {row['epoch_s']:.2f} | {ratios} | {row['prepare_s']:.2f} | "
                  f"{row['epoch_s'] + row['prepare_s']:.2f} | {row['peak_mb']:.0f} | {row['sample_passes']:,} | "
                  f"{row['trainable']:,} / {row['total']:,} |", flush=True)
    return rows


if __name__ == "__main__":
    main()
