"""PGU's cost against retraining, and how its projector and result depend on the Gram sample budget.

One run, one model and data, side by side: the original (trained once, cached in --work), the
retrain oracle (timed: seconds and sample-passes), then per Gram budget (samples x patches per
sample) PGU's prepare (seconds, forward sample-passes) and one request (seconds, forward+backward
sample-passes, forward samples of its stopping checks), with UA/RA/TA/MIA/Avg.Gap against the
oracle, and the projector's distance to the full-data float64 projector (mean over layers of
||P_budget - P_full||_F / ||P_full||_F, and the kept ranks).

    python benchmarks/pgu_cost.py                                   # ResNet-20, 2,500 CIFAR-10 images, class 3
    python benchmarks/pgu_cost.py --scenario random:0.1 --budgets 250x64 1000x64 all
    python benchmarks/pgu_cost.py --dataset digits --model cnn --epochs 30   # seconds, for a smoke run
    python benchmarks/pgu_cost.py --model vit_tiny --subset 1000 --epochs 4 --lora   # + the LoRA family
    python benchmarks/pgu_cost.py --budgets 1000x64 --no-distance --reuse-cache --set energy=0.97 --set energy=0.99
    python benchmarks/pgu_cost.py --budgets 1000x64 --no-distance --reuse-cache --guard heldout

Each ``--set KEY=VALUE ...`` is one request setting (give it several times for several rows on the same
prepared cache). ``--reuse-cache`` loads the budget's cache file from --work when it is there instead of
preparing it again (its prepare seconds are then the load). ``--guard`` gives the request a retain
estimate for PGU's retain guard: ``retain`` passes the retain set (a fixed 256-image sample of it),
``heldout`` passes the held-out test images of the retained classes as ``check_data``.

With ``--lora`` the same run then times one epoch of finetune, lora, prune_lora and rfa_lora
(benchmarks/lora_cost.py, each in a fresh process for its peak memory) on the same retain/forget
split, starting from the same trained original, so issue #15's two cost tables come from one run.

Needs /work/shared/data (or $UNLEARNKIT_DATA) for CIFAR-10. One torch thread (--threads) by default.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Subset

import unlearnkit as uk
from unlearnkit.components import gradient_projection as pgu


def parse_budget(text: str) -> tuple[int | None, int | None]:
    """'1000x64' -> (1000, 64); 'all' -> (None, None); '1000xall' -> (1000, None)."""
    if text == "all":
        return None, None
    samples, patches = text.split("x")
    return (None if samples == "all" else int(samples)), (None if patches == "all" else int(patches))


def balanced_subset(dataset, size: int):
    labels = uk.data.dataset_labels(dataset).numpy()
    per_class = size // len(np.unique(labels))
    keep = np.sort(np.concatenate([np.flatnonzero(labels == c)[:per_class] for c in np.unique(labels)]))
    return Subset(dataset, keep.tolist())


def trained(path: Path, build, data, recipe: uk.Recipe) -> tuple[torch.nn.Module, float, int]:
    """A model trained with ``recipe`` on ``data`` (cached as safetensors in ``path``): model, seconds, passes."""
    from safetensors.torch import load_file, save_file

    model = build()
    if path.exists():
        model.load_state_dict(load_file(str(path)))
        info = json.loads(path.with_suffix(".json").read_text())
        return model.eval(), info["seconds"], info["sample_passes"]
    counter = uk.training.Counter()
    start = time.perf_counter()
    uk.train(model, data, recipe, counter=counter)
    seconds = time.perf_counter() - start
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    path.with_suffix(".json").write_text(json.dumps({"seconds": seconds, "sample_passes": counter.sample_passes}))
    return model.eval(), seconds, counter.sample_passes


def projector_distance(cache, reference, tau: float) -> tuple[float, dict]:
    """Mean relative Frobenius distance of the retain projectors, and this cache's kept ranks."""
    bases, ranks = pgu.projection_bases(cache, cache.grams, cache.traces, tau)
    ref_bases, _ = pgu.projection_bases(reference, reference.grams, reference.traces, tau)
    dists = []
    for name in bases:
        p = bases[name] @ bases[name].transpose(1, 2)
        q = ref_bases[name] @ ref_bases[name].transpose(1, 2)
        dists.append(float((p - q).norm() / q.norm().clamp_min(1e-12)))
    return float(np.mean(dists)), ranks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="cifar10")
    parser.add_argument("--subset", type=int, default=2500, help="class-balanced training images (cifar10)")
    parser.add_argument("--test-subset", type=int, default=2000)
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--epochs", type=int, default=12, help="original and retrain epochs (cifar10-cpu: 12)")
    parser.add_argument("--scenario", default="class:3")
    parser.add_argument("--budgets", nargs="+", default=["250x64", "500x64", "1000x64", "1000x256", "all"])
    parser.add_argument("--set", nargs="*", action="append", default=None,
                        help="PGU config overrides KEY=VALUE (JSON values); repeat --set for several settings")
    parser.add_argument("--reuse-cache", action="store_true",
                        help="load the budget's cache from --work if it exists instead of preparing it again")
    parser.add_argument("--guard", choices=["none", "retain", "heldout"], default="none",
                        help="retain estimate for PGU's retain guard (default none: no retain data, as a request "
                             "from the cache alone)")
    parser.add_argument("--work", default="runs/pgu_cost", help="cache of the trained original and oracle")
    parser.add_argument("--out", default=None, help="JSON file for the results")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lora", action="store_true", help="also time one epoch of the LoRA family (see above)")
    parser.add_argument("--lora-batch-size", type=int, default=64)
    parser.add_argument("--no-distance", action="store_true",
                        help="skip the full-data float64 reference projector (saves one Gram pass over the training set)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    kwargs = {"subset": args.subset} if args.dataset == "cifar10" else {}
    splits = uk.load_dataset(args.dataset, **kwargs)
    test = balanced_subset(splits.test, args.test_subset) if len(splits.test) > args.test_subset else splits.test
    data = uk.make_unlearning_data(splits.train, test, args.scenario, seed=args.seed)
    model_args = {"num_classes": splits.num_classes, "in_channels": splits.in_channels,
                  "image_size": splits.sample_shape[-1]}

    def build():
        torch.manual_seed(args.seed)
        return uk.create_model(args.model, **model_args)

    augment = args.dataset == "cifar10"
    recipe = uk.Recipe(epochs=args.epochs, lr=0.1, batch_size=128, schedule="cosine", augment=augment, seed=args.seed)
    tag = f"{args.dataset}{args.subset if args.dataset == 'cifar10' else ''}-{args.model}-e{args.epochs}-s{args.seed}"
    work = Path(args.work)
    original, _, _ = trained(work / f"{tag}-original.safetensors", build, splits.train, recipe)
    scenario_tag = args.scenario.replace(":", "")
    oracle, retrain_s, retrain_passes = trained(work / f"{tag}-retrain-{scenario_tag}.safetensors", build,
                                                data.retain, recipe)
    oracle_eval = uk.evaluate(oracle, data, seed=args.seed)
    rows = [{"run": "retrain", "seconds": retrain_s, "sample_passes": retrain_passes, **oracle_eval.summary()}]
    print(f"retrain: {retrain_s:.1f} s, {retrain_passes} sample-passes, {oracle_eval.summary()}", flush=True)
    rows.append({"run": "original", **uk.evaluate(original, data, reference=oracle_eval, seed=args.seed).summary()})

    settings = [{k: json.loads(v) for k, v in (s.split("=", 1) for s in group)} for group in (args.set or [[]])]
    tau = settings[0].get("energy", 0.95)
    reference = None if args.no_distance else pgu.PGUCache.build(original, [splits.train], max_samples=None,
                                                                  max_patches=None, dtype=torch.float64)
    # sample forgetting gets held-out data for its stopping rule, as the paper does (issue #19)
    heldout = {} if args.scenario.startswith("class") else {"check_data": data.test}
    retain = None
    if args.guard == "retain":
        retain = data.retain
    elif args.guard == "heldout":
        heldout = {"check_data": data.test_retain if data.test_retain is not None else data.test}
    for text, overrides in [(t, o) for t in args.budgets for o in settings]:
        samples, patches = parse_budget(text)
        cache_path = work / f"{tag}-{text}.safetensors"
        start = time.perf_counter()
        if args.reuse_cache and cache_path.exists():
            cache = pgu.PGUCache.load(cache_path)
        else:
            cache = pgu.prepare(original, splits.train, max_samples=samples, max_patches=patches, path=cache_path)
        prepare_s = time.perf_counter() - start
        distance, ranks = projector_distance(cache, reference, tau) if reference is not None else (float("nan"), {})
        result = uk.unlearn(original, retain, data.forget, "pgu", cache=str(cache.path), update_cache=False,
                            seed=args.seed, **heldout, **overrides)
        request_s = result.seconds
        ev = uk.evaluate(result.model, data, reference=oracle_eval, seed=args.seed).summary()
        info = result.info
        label = " ".join(f"{k}={v}" for k, v in overrides.items())
        row = {"run": f"pgu {text}" + (f" {label}" if label else ""), "guard": args.guard,
               "prepare_seconds": prepare_s, "prepare_forward_samples": len(cache.gram_ids),
               "request_seconds": request_s, "request_sample_passes": result.sample_passes,
               "request_forward_samples": info["forget_gram_samples"] + info["check_forward_samples"],
               "check_forward_samples": info["check_forward_samples"], "lr_unit": info.get("lr_unit"),
               "prepare_request_vs_retrain_seconds": (prepare_s + request_s) / retrain_s,
               "request_vs_retrain_seconds": request_s / retrain_s,
               "request_vs_retrain_passes": result.sample_passes / retrain_passes,
               "projector_distance": distance, "kept": {n: r[0] for n, r in ranks.items()},
               "stop": info["stop_reason"], "steps": info["pgu_steps"], "lr_boost": info.get("lr_boost"),
               "forget_acc_history": info["forget_acc_history"], **ev}
        rows.append(row)
        print(f"{row['run']} (guard {args.guard}): prepare {prepare_s:.2f} s ({len(cache.gram_ids)} fwd), "
              f"request {request_s:.2f} s "
              f"({result.sample_passes} fwd+bwd, {row['request_forward_samples']} fwd), "
              f"(prep+req)/retrain {row['prepare_request_vs_retrain_seconds']:.3f}, req/retrain "
              f"{row['request_vs_retrain_seconds']:.3f} s / {row['request_vs_retrain_passes']:.3f} passes, "
              f"projector dist {distance:.3f}, steps {info['pgu_steps']}, checks {info['forget_acc_history']}, "
              f"stop: {info['stop_reason']}; "
              + ", ".join(f"{k} {v:.2f}" for k, v in ev.items()), flush=True)
    lora_rows = lora_family(args, work / f"{tag}-original.safetensors") if args.lora else []
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"args": vars(args), "rows": rows, "lora": lora_rows}, indent=1))


def lora_family(args, weights: Path) -> list[dict]:
    """benchmarks/lora_cost.py on this run's data and original weights; its table is printed as it goes."""
    import subprocess
    import sys
    import tempfile

    if args.dataset != "cifar10":
        raise SystemExit("--lora needs --dataset cifar10 (lora_cost.py builds 32x32x3 models)")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "lora.json"
        subprocess.run([sys.executable, str(Path(__file__).with_name("lora_cost.py")), "--models", args.model,
                        "--dataset", args.dataset, "--subset", str(args.subset), "--scenario", args.scenario,
                        "--weights", str(weights), "--threads", str(args.threads),
                        "--batch-size", str(args.lora_batch_size), "--json", str(out)], check=True)
        return json.loads(out.read_text())


if __name__ == "__main__":
    main()
