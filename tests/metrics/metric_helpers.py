"""Hand-built models whose metrics are known in advance."""

from __future__ import annotations

import torch
import torch.nn as nn

from unlearnkit.data import iterate_batches


class ConstantModel(nn.Module):
    """The same logits for every input."""

    def __init__(self, logits):
        super().__init__()
        self.logits = nn.Parameter(torch.as_tensor(logits, dtype=torch.float32), requires_grad=False)

    def forward(self, x):
        return self.logits.expand(len(x), -1)


def constant_class(c: int, num_classes: int = 10, scale: float = 5.0) -> ConstantModel:
    return ConstantModel(scale * torch.nn.functional.one_hot(torch.tensor(c), num_classes).float())


class LookupModel(nn.Module):
    """Memorises (x, y) of ``datasets``: logits ``high * onehot(y)`` on a memorised input, and
    ``low * onehot(label of the nearest memorised input)`` on any other input."""

    def __init__(self, datasets, num_classes: int = 10, high: float = 10.0, low: float = 1.0):
        super().__init__()
        xs, ys = [], []
        for ds in datasets:
            for x, y in iterate_batches(ds, 4096):
                xs.append(x.flatten(1))
                ys.append(y)
        self.register_buffer("memory", torch.cat(xs))
        self.register_buffer("labels", torch.cat(ys))
        self.num_classes, self.high, self.low = num_classes, high, low
        self.dummy = nn.Parameter(torch.zeros(1), requires_grad=False)

    def forward(self, x):
        dist = torch.cdist(x.flatten(1).double(), self.memory.double())
        nearest = dist.argmin(1)
        exact = dist.gather(1, nearest[:, None]).squeeze(1) < 1e-6
        onehot = torch.nn.functional.one_hot(self.labels[nearest], self.num_classes).float()
        scale = torch.where(exact, torch.tensor(self.high), torch.tensor(self.low))
        return onehot * scale[:, None]


class CountingModel(nn.Module):
    """Wraps a model and counts the samples it sees."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner
        self.seen = 0

    def forward(self, x):
        self.seen += len(x)
        return self.inner(x)


class CentroidModel(nn.Module):
    """Nearest class mean, no training: logits = -||x - mean_c||^2 / temperature (continuous confidences)."""

    def __init__(self, dataset, num_classes: int = 10, temperature: float = 20.0):
        super().__init__()
        xs, ys = zip(*iterate_batches(dataset, 4096))
        x, y = torch.cat(xs).flatten(1), torch.cat(ys)
        means = torch.stack([x[y == c].mean(0) for c in range(num_classes)])
        self.means = nn.Parameter(means, requires_grad=False)
        self.temperature = temperature

    def forward(self, x):
        return -torch.cdist(x.flatten(1), self.means) ** 2 / self.temperature
