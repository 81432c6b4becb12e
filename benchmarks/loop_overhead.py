"""Overhead of unlearnkit's training loop (``training.fit``) against a bare PyTorch loop.

Same model (resnet20), same data (CIFAR-sized random uint8 images in an
``ArrayDataset``, normalised per batch), same optimizer and batch size. The two
loops run in alternation (A B A B ...) after a warm-up, so drifting machine load
hits both alike; the script reports the median images/second of each and the ratio.

    python benchmarks/loop_overhead.py                 # ~1 minute on 2 CPU cores
    python benchmarks/loop_overhead.py --n 2048 --rounds 5 --device cuda
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from unlearnkit.data import ArrayDataset
from unlearnkit.models import create_model
from unlearnkit.progress import set_progress
from unlearnkit.training import cross_entropy_step, fit, make_optimizer


def bare_epoch(model, data: ArrayDataset, optimizer, batch_size: int, generator: torch.Generator, device) -> None:
    model.train()
    order = torch.randperm(len(data), generator=generator)
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        x = data.normalize(data.x[idx].to(device))
        y = data.y[idx].to(device)
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


def unlearnkit_epoch(model, data: ArrayDataset, optimizer, batch_size: int, generator: torch.Generator, device) -> None:
    fit(model, data, cross_entropy_step, optimizer, epochs=1, batch_size=batch_size, generator=generator)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=512, help="number of 32x32x3 images")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3, help="timed epochs per loop (alternating)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    set_progress(False)
    device = torch.device(args.device)
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (args.n, 3, 32, 32), dtype=torch.uint8, generator=g)
    y = torch.randint(0, 10, (args.n,), generator=g)
    data = ArrayDataset(x, y, scale=255.0, mean=[0.49, 0.48, 0.45], std=[0.25, 0.24, 0.26])

    runs = {}
    for name in ("bare", "unlearnkit"):
        torch.manual_seed(0)
        model = create_model("resnet20", num_classes=10, in_channels=3).to(device)
        opt = make_optimizer(model.parameters(), "sgd", 0.05, 0.9, 5e-4)
        runs[name] = (model, opt, torch.Generator().manual_seed(1))
    loops = {"bare": bare_epoch, "unlearnkit": unlearnkit_epoch}

    def one(name: str) -> float:
        model, opt, gen = runs[name]
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        loops[name](model, data, opt, args.batch_size, gen, device)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return args.n / (time.perf_counter() - t0)

    for name in loops:  # warm-up epoch each
        one(name)
    speeds: dict[str, list[float]] = {"bare": [], "unlearnkit": []}
    for r in range(args.rounds):
        order = ("bare", "unlearnkit") if r % 2 == 0 else ("unlearnkit", "bare")
        for name in order:
            speeds[name].append(one(name))
    med = {k: statistics.median(v) for k, v in speeds.items()}
    print(f"resnet20, {args.n} images 3x32x32, batch {args.batch_size}, {args.rounds} rounds, device {device}, "
          f"torch threads {torch.get_num_threads()}")
    for name in ("bare", "unlearnkit"):
        print(f"  {name:<11} {med[name]:8.1f} img/s   (rounds: {', '.join(f'{s:.1f}' for s in speeds[name])})")
    print(f"  ratio unlearnkit / bare: {med['unlearnkit'] / med['bare']:.3f}")


if __name__ == "__main__":
    main()
