"""Speed-up of physically removing pruned channels (``unlearnkit.compact``) at inference.

Per model: prune 50% of every layer's filters/rows (``l2_structured``, ``prune_norms=True``),
compact, check the outputs match, then time eval-mode forward passes of the masked (same
shape, zeros) and the compact model on random CIFAR-sized batches, alternating A B A B so
drifting machine load hits both alike. Reports parameters, median images/second and the
speed-up. Only channels whose removal leaves the function unchanged go (see
docs/methods/pruning.md), so the speed-up is below the pruning ratio's.

    python benchmarks/compact_speed.py                     # resnet20 and vit_tiny, ~1 minute on 2 CPU cores
    python benchmarks/compact_speed.py --models resnet56 --batch 256 --device cuda
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import unlearnkit as uk


def images_per_second(model: torch.nn.Module, x: torch.Tensor, repeats: int) -> float:
    start = time.perf_counter()
    with torch.no_grad():
        for _ in range(repeats):
            model(x)
    if x.is_cuda:
        torch.cuda.synchronize()
    return repeats * len(x) / (time.perf_counter() - start)


def measure(name: str, batch: int, rounds: int, repeats: int, device: str) -> dict:
    torch.manual_seed(0)
    model = uk.create_model(name, num_classes=10).to(device).eval()
    x = torch.randn(batch, 3, 32, 32, device=device)
    pruning = uk.prune(model, kind="l2_structured", ratio=0.5, prune_norms=True)
    result = uk.compact(model)
    small = result.model.to(device).eval()
    with torch.no_grad():
        diff = (small(x) - model(x)).abs().max().item()
    images_per_second(model, x, 1), images_per_second(small, x, 1)  # warm-up
    masked, compacted = [], []
    for _ in range(rounds):
        masked.append(images_per_second(model, x, repeats))
        compacted.append(images_per_second(small, x, repeats))
    a, b = statistics.median(masked), statistics.median(compacted)
    return {"model": name, "weight_sparsity": pruning.total_sparsity, "params_before": result.params_before,
            "params_after": result.params_after, "masked_img_s": a, "compact_img_s": b, "speedup": b / a,
            "max_abs_diff": diff}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["resnet20", "vit_tiny"])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, device {args.device}, batch {args.batch}")
    print("| model | params masked | params compact | masked img/s | compact img/s | speed-up | max |diff| |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name in args.models:
        r = measure(name, args.batch, args.rounds, args.repeats, args.device)
        print(f"| {r['model']} | {r['params_before']:,} | {r['params_after']:,} | {r['masked_img_s']:.0f} | "
              f"{r['compact_img_s']:.0f} | {r['speedup']:.2f}x | {r['max_abs_diff']:.1e} |")


if __name__ == "__main__":
    main()
