"""Where one training step's time goes: finetune, lora and rfa_lora's sections, timed side by side.

One model (random init, CIFAR-sized), one random retain batch and one forget batch, 1 torch
thread; the three steps are interleaved round by round (so drifting machine load hits them
alike) and the median of the rounds is printed. rfa_lora's step is split as in the method:
the adapted forward of retain + forget concatenated (with the feature hooks), the no-grad
forward with the adapters disabled for the original features (what the feature cache
removes), the alignment + CE loss, and backward + Adam.

    python benchmarks/rfa_step_sections.py --model resnet20 --rounds 3
    python benchmarks/rfa_step_sections.py --model vit_tiny --forget-batch 64
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections import defaultdict

import torch
import torch.nn.functional as F

import unlearnkit as uk
from unlearnkit.components.lora_adapters import add_lora
from unlearnkit.methods.rfa_lora import FeatureTap, default_aligned_layers, relative_sq


def adam(model):
    return torch.optim.Adam([p for p in model.parameters() if p.requires_grad], 1e-3)


def timed_ce_step(model, optimizer, x, y, times, prefix):
    t0 = time.perf_counter()
    loss = F.cross_entropy(model(x), y)
    t1 = time.perf_counter()
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    t2 = time.perf_counter()
    times[f"{prefix} forward"].append(t1 - t0)
    times[f"{prefix} backward+adam"].append(t2 - t1)
    times[f"{prefix} step"].append(t2 - t0)


def timed_rfa_step(model, adapter, tap, layers, optimizer, x, y, xf, times):
    n = len(x)
    t0 = time.perf_counter()
    both = torch.cat([x, xf])
    logits = model(both)
    adapted = tap.take()
    t1 = time.perf_counter()
    with torch.no_grad(), adapter.disabled():
        model(both)
        original = tap.take()
    t2 = time.perf_counter()
    loss = sum(relative_sq(adapted[k][:n] - original[k][:n], original[k][:n]) for k in layers)
    loss = loss + sum(relative_sq(adapted[k][n:] - original[k][n:].mean(0), original[k][n:]) for k in layers)
    loss = loss / len(layers) + F.cross_entropy(logits[:n], y)
    t3 = time.perf_counter()
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    t4 = time.perf_counter()
    for key, dt in (("adapted forward (retain+forget)", t1 - t0), ("original forward, no grad", t2 - t1),
                    ("loss", t3 - t2), ("backward+adam", t4 - t3), ("step", t4 - t0)):
        times[f"rfa_lora {key}"].append(dt)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--forget-batch", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    base = uk.create_model(args.model, num_classes=10, in_channels=3, image_size=32)
    x, y = torch.randn(args.batch, 3, 32, 32), torch.randint(0, 10, (args.batch,))
    xf = torch.randn(args.forget_batch, 3, 32, 32)
    ft = copy.deepcopy(base).train()
    lora = copy.deepcopy(base)
    add_lora(lora)
    lora.train()
    rfa = copy.deepcopy(base)
    adapter = add_lora(rfa)
    rfa.eval()
    layers = default_aligned_layers(rfa)
    tap = FeatureTap(rfa, layers)
    optimizers = adam(ft), adam(lora), adam(rfa)
    times = defaultdict(list)
    for r in range(args.rounds + 1):  # round 0 is a warm-up
        if r == 1:
            times.clear()
        timed_ce_step(ft, optimizers[0], x, y, times, "finetune")
        timed_ce_step(lora, optimizers[1], x, y, times, "lora")
        timed_rfa_step(rfa, adapter, tap, layers, optimizers[2], x, y, xf, times)
    print(f"{args.model}, retain batch {args.batch}, forget batch {args.forget_batch}, 1 thread, "
          f"median of {args.rounds} rounds")
    for key, values in times.items():
        print(f"  {key:45s} {statistics.median(values):.3f} s")


if __name__ == "__main__":
    main()
