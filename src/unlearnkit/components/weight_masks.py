"""Weight masks that are enforced exactly: pruning and saliency-masked updates share this.

A ``ParamMask`` marks, per parameter, the entries that may change. Masked-out
entries keep their frozen values bit for bit through any optimizer: their
gradients are zeroed before each step and their values restored after it, so
weight decay, momentum and Adam state cannot move them.
"""

from __future__ import annotations

import torch
import torch.nn as nn


class ParamMask:
    def __init__(self, model: nn.Module, trainable: dict[str, torch.Tensor]):
        params = dict(model.named_parameters())
        unknown = sorted(set(trainable) - set(params))
        if unknown:
            raise KeyError(f"mask names unknown parameters: {unknown[:3]}")
        self.params = {n: params[n] for n in trainable}
        self.trainable = {n: m.to(device=params[n].device, dtype=torch.bool) for n, m in trainable.items()}
        self.frozen = {n: params[n].detach().clone() for n in trainable}

    def zero_frozen_grads(self) -> None:
        for name, p in self.params.items():
            if p.grad is not None:
                p.grad.mul_(self.trainable[name])

    @torch.no_grad()
    def restore_frozen(self) -> None:
        for name, p in self.params.items():
            p.copy_(torch.where(self.trainable[name], p, self.frozen[name]))

    def fraction_trainable(self) -> float:
        total = sum(m.numel() for m in self.trainable.values())
        return sum(int(m.sum()) for m in self.trainable.values()) / max(total, 1)

    def rebind(self, model: nn.Module) -> "ParamMask":
        """The same mask on a copy of the model (parameters found by name)."""
        clone = ParamMask.__new__(ParamMask)
        params = dict(model.named_parameters())
        clone.params = {n: params[n] for n in self.trainable}
        clone.trainable = {n: m.to(params[n].device) for n, m in self.trainable.items()}
        clone.frozen = {n: f.to(params[n].device) for n, f in self.frozen.items()}
        return clone
