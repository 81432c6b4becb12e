"""Run by tests/distributed/test_distributed.py under ``torchrun --nproc_per_node 2``.

Every rank trains the same MLP with ``unlearnkit.training.fit`` (global batch 64 = 2 x 32),
with a ParamMask drawn differently on each rank (it must be replaced by rank 0's), evaluates
with ``predict_logits`` (all-gathered), all-reduces a per-rank Gram matrix and runs the
sharded passes of PGU (Grams), SSD (Fisher) and SalUn (forget gradients). Each rank
saves what it ended with to ``OUT/rank{r}.pt``; the test compares with one process.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

from unlearnkit import distributed as dist
from unlearnkit.progress import set_progress

sys.path.insert(0, str(Path(__file__).parent))
import dist_common as common  # noqa: E402


def main(out: Path) -> None:
    torch.set_num_threads(1)
    set_progress(False)
    dist.setup(device="cpu")
    r, world = dist.rank(), dist.world_size()
    assert dist.is_distributed() and world == 2, (r, world)

    model = common.build_model(seed=0)
    if r == 1:  # rank 0's initial weights must win
        with torch.no_grad():
            for p in model.parameters():
                p.add_(1.0)
    train = common.train_subset()
    mask = common.make_mask(model, seed=100 + r)  # different on each rank before fit
    common.finetune(model, train, mask)
    logits, labels = common.evaluate(model)

    features = common.features(dist.shard_dataset(train))
    gram = features.T @ features
    dist.all_reduce_sum(gram)

    torch.save({"rank": r, "world": world, "state": model.state_dict(),
                "mask": {k: v.clone() for k, v in mask.trainable.items()},
                "logits": logits, "labels": labels, "gram": gram,
                "shard": dist.shard_bounds(len(train)), "special": common.special_state(train)}, out / f"rank{r}.pt")
    dist.barrier()
    # Skip interpreter shutdown: gloo's threads can abort a rank in its C++ destructors at exit
    # ("terminate called without an active exception"), seen once in CI after all results were written.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
