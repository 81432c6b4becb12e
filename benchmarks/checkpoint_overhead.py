"""Cost of one epoch checkpoint of ``resume.resumable`` (``FitCheckpoint.save``) against an epoch's training.

Builds the model with SGD (momentum, so the optimizer state is as large as the model), times a few
training steps on a random CIFAR-sized batch to estimate an epoch of ``--images`` images, then times
five checkpoint writes (torch.save + atomic write with fsync) and one weights_only load.

    python benchmarks/checkpoint_overhead.py                      # resnet20, 10,000 images, 1 thread
    python benchmarks/checkpoint_overhead.py --model resnet18 --images 50000
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import torch
import torch.nn.functional as F

from unlearnkit.models import create_model
from unlearnkit.resume import fit_checkpoint, resumable
from unlearnkit.training import Counter, make_optimizer, make_schedule


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--images", type=int, default=10_000, help="Images per epoch.")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = create_model(args.model, num_classes=10, in_channels=3, image_size=32)
    optimizer = make_optimizer(model.parameters(), "sgd", 0.1, 0.9, 5e-4)
    scheduler = make_schedule(optimizer, "cosine", 1000)
    x, y = torch.randn(args.batch_size, 3, 32, 32), torch.randint(0, 10, (args.batch_size,))
    steps = []
    for _ in range(6):  # the first is a warm-up
        start = time.perf_counter()
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
        steps.append(time.perf_counter() - start)
    epoch = statistics.median(steps[1:]) * -(-args.images // args.batch_size)
    with tempfile.TemporaryDirectory() as tmp, resumable(tmp, key="measure"):
        slot = fit_checkpoint({"epochs": 30}, model=model, optimizer=optimizer, scheduler=scheduler,
                              generator=torch.Generator(), counter=Counter())
        writes = []
        for _ in range(5):
            start = time.perf_counter()
            slot.save(1, 1, finished=True)
            writes.append(time.perf_counter() - start)
        size = os.path.getsize(slot.path)
        start = time.perf_counter()
        torch.load(slot.path, weights_only=True)
        load = time.perf_counter() - start
    write = statistics.median(writes)
    print(f"{args.model}: epoch of {args.images} images ~{epoch:.1f} s ({args.threads} thread(s)); checkpoint "
          f"{size / 2**20:.1f} MiB, write {write * 1000:.0f} ms (median of 5), load {load * 1000:.0f} ms; "
          f"one write = {100 * write / epoch:.2f}% of an epoch")


if __name__ == "__main__":
    main()
