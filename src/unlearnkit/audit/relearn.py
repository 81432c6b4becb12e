"""Relearning attack: does a few steps of fine-tuning bring the forgotten data back?

An unlearned model that only hid the forget set (e.g. by suppressing one logit) regains
its accuracy on held-out forget examples after a few steps on a handful of them, much
faster than a model retrained without them ever could. We fine-tune a copy with SGD on a
small "relearn" part of the forget set (or, as a control, on as many retain examples) and
record the accuracy on the rest of the forget set after every step.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import Dataset

from ..models.outputs import forward
from ..training import accuracy


def stack_dataset(dataset: Dataset) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = zip(*(dataset[i][:2] for i in range(len(dataset))))
    return torch.stack([torch.as_tensor(x) for x in xs]), torch.as_tensor([int(y) for y in ys])


def relearn_curve(model: nn.Module, train_set: Dataset, eval_set: Dataset, *, steps: int, lr: float,
                  batch_size: int, seed: int, device: torch.device | str = "cpu") -> list[float]:
    """Accuracy (%) on ``eval_set`` before and after each of ``steps`` SGD steps on ``train_set``.

    The copy is fine-tuned in eval mode (batch-norm statistics and dropout frozen): the
    relearn set is tiny and of few classes, and we ask what the weights still know.
    """
    model = copy.deepcopy(model).to(device).eval()
    x, y = (t.to(device) for t in stack_dataset(train_set))
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    generator = torch.Generator().manual_seed(seed)
    batch = min(batch_size, len(y))
    curve = [accuracy(model, eval_set)]
    for _ in range(steps):
        idx = torch.randperm(len(y), generator=generator)[:batch].to(device)
        loss = F.cross_entropy(forward(model, x[idx]), y[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        curve.append(accuracy(model, eval_set))
    return curve


def steps_to_level(curve: list[float], level: float) -> int | None:
    """First step whose accuracy reaches ``level`` (0 = already there); None if never."""
    hits = np.flatnonzero(np.asarray(curve) >= level - 1e-9)
    return int(hits[0]) if hits.size else None


def summarise_steps(steps: list[int | None], horizon: int) -> dict:
    """Median steps over models, a model that never reached the level counting as horizon + 1."""
    filled = [horizon + 1 if s is None else s for s in steps]
    return {"median_steps": float(np.median(filled)), "reached": sum(s is not None for s in steps),
            "models": len(steps), "steps": steps}
