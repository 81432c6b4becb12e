"""Selective Synaptic Dampening (SSD): dampen the weights far more important to the forget set than to the data.

Foster et al., "Fast Machine Unlearning Without Retraining Through Selective
Synaptic Dampening", AAAI 2024 (arXiv 2308.07707). With diagonal Fisher
importances I_D over the training data D = retain + forget and I_f over the
forget set, every parameter entry with I_f > alpha * I_D is multiplied by
min(lambda * I_D / I_f, 1); all other entries are left bit for bit. No training.

Two importance estimates (``importance``):

* ``"per_sample"`` (default, ours): the mean over samples of the squared gradient
  of each sample's cross-entropy, the diagonal empirical Fisher. It does not
  depend on the order or batching of the data. Computed in chunks with
  ``torch.func`` (``vmap`` of ``grad`` over ``functional_call``); models that
  ``torch.func`` cannot trace fall back to a loop of one backward per sample.
* ``"reference_batches"``: the reference code's pass. D is passed unshuffled as
  the retain set followed by the forget set, the retain set grouped by class for
  class forgetting (the reference builds it class by class) and in one seeded
  random order for sample forgetting (its ``random_split``); the importance is the
  mean over batches of the squared gradient of the batch-mean cross-entropy. Its
  I_D therefore depends on batch composition (class-pure batches have larger
  mean gradients).

Both passes run in eval mode, as in the reference (BatchNorm uses and keeps its
running statistics). Every trainable parameter is eligible. Defaults are the
reference's: lambda = 1, and alpha = 10 scaled by its ``model_size_scaler`` (0.5 for
ViTs in its forgetting scripts, so 5): ``alpha=None`` takes 5 for a model with an
attention module (``nn.MultiheadAttention`` or a class named ``*Attention``, as in
timm, transformers and our zoo) and 10 otherwise; ``batch_size`` None is the reference scripts' (64 for
class forgetting, 128 for sample forgetting). docs/methods/baselines.md has the
measurements behind the default. Work is one forward+backward pass over D and
one over the forget set, counted in ``sample_passes``.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import Dataset, Subset

from .. import distributed as dist
from ..config import Interval, Options, field
from ..data import dataset_labels, iterate_batches
from ..models.outputs import as_logits, forward
from ..training import Counter
from ..utils import model_device
from .base import Method, MethodConfig, register_method
from .random_label import concat_datasets

IMPORTANCES = ("per_sample", "reference_batches")
REFERENCE_BATCH_SIZE = {"class": 64, "sample": 128}  # the reference's full-class and random-forgetting scripts
PER_SAMPLE_BUDGET = 2 ** 26  # gradient entries held at once by the vmapped pass (chunk * parameters)


def _trainable(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


def _vmapped_squared_grads(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    """Sum over the chunk of each sample's squared cross-entropy gradient, one vmapped pass."""
    from torch.func import functional_call, grad, vmap
    from torch.utils._pytree import tree_map

    trainable = {n: p.detach() for n, p in _trainable(model)}
    fixed = {n: p.detach() for n, p in model.named_parameters() if not p.requires_grad}
    fixed.update(dict(model.named_buffers()))

    def sample_loss(params, xi, yi):
        one = tree_map(lambda t: t.unsqueeze(0), xi)
        if isinstance(one, dict):  # Hugging Face style keyword inputs
            output = functional_call(model, (params, fixed), (), one)
        else:
            output = functional_call(model, (params, fixed), (one,))
        return F.cross_entropy(as_logits(output), yi.unsqueeze(0))

    with warnings.catch_warnings():  # attention kernels without a batching rule run a slower fallback
        warnings.filterwarnings("ignore", message="There is a performance drop")
        inputs = dict(x) if isinstance(x, dict) else x  # a plain dict is a pytree vmap can map over
        grads = vmap(grad(sample_loss), in_dims=(None, 0, 0))(trainable, inputs, y)
    return {n: g.square().sum(0) for n, g in grads.items()}


def _looped_squared_grads(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    """As ``_vmapped_squared_grads``, with one backward per sample (for models torch.func cannot trace)."""
    named = _trainable(model)
    out = {n: torch.zeros_like(p) for n, p in named}
    for i in range(len(y)):
        _add_squared_grads(out, named, F.cross_entropy(forward(model, x[i:i + 1]), y[i:i + 1]))
    return out


def _add_squared_grads(into: dict[str, torch.Tensor], named: list[tuple[str, nn.Parameter]],
                       loss: torch.Tensor) -> None:
    """``into[n] += grad(loss, p) ** 2`` for each named parameter that the loss reaches."""
    for (n, _), g in zip(named, torch.autograd.grad(loss, [p for _, p in named], allow_unused=True)):
        if g is not None:
            into[n] += g.square()


def _averaged(importance: dict[str, torch.Tensor], count: int, world: int,
              device: torch.device) -> dict[str, torch.Tensor]:
    """``importance / count`` in place, the sums and the count all-reduced first under several processes."""
    if world > 1:
        for imp in importance.values():
            dist.all_reduce_sum(imp)
        count = int(dist.all_reduce_sum(torch.tensor([count], dtype=torch.long, device=device)).item())
    for imp in importance.values():
        imp /= max(count, 1)
    return importance


def per_sample_fisher(model: nn.Module, dataset: Dataset, batch_size: int = 64,
                      counter: Counter | None = None) -> dict[str, torch.Tensor]:
    """Mean over the samples of ``dataset`` of the squared per-sample cross-entropy gradient, per trainable parameter.

    Independent of sample order and of ``batch_size`` (only the chunk size of the
    computation) up to float rounding. Under a multi-process launcher every rank takes
    every world-size-th chunk; the sums are all-reduced (same result as one process).
    """
    was_training = model.training
    model.eval()
    named = _trainable(model)
    importance = {n: torch.zeros_like(p) for n, p in named}
    n_params = max(sum(p.numel() for _, p in named), 1)
    chunk = max(1, min(batch_size, PER_SAMPLE_BUDGET // n_params))
    rank, world, device = dist.rank(), dist.world_size(), model_device(model)
    squared_grads = _vmapped_squared_grads
    seen = 0
    try:
        for i, (x, y) in enumerate(iterate_batches(dataset, chunk, device=device)):
            if i % world != rank:
                continue
            try:
                sums = squared_grads(model, x, y)
            except (RuntimeError, NotImplementedError, TypeError, ValueError):
                if squared_grads is _looped_squared_grads:
                    raise
                squared_grads = _looped_squared_grads  # e.g. .item() or in-place ops in forward
                sums = squared_grads(model, x, y)
            for n, s in sums.items():
                importance[n] += s
            seen += len(y)
    finally:
        model.train(was_training)
    if counter is not None:  # the whole pass, split over the ranks or not (as ``fit`` counts the global batch)
        counter.sample_passes += len(dataset)
    return _averaged(importance, seen, world, device)


def batch_fisher(model: nn.Module, dataset: Dataset, batch_size: int, counter: Counter | None = None, *,
                 shuffle: bool = False, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """Mean over the batches of one pass of the squared gradient of the batch-mean cross-entropy (the reference's).

    Depends on the batch composition, so on the order of ``dataset``. Under a
    multi-process launcher every rank draws the same batches and takes every
    world-size-th one; the sums and the batch count are all-reduced.
    """
    was_training = model.training
    model.eval()
    named = _trainable(model)
    importance = {n: torch.zeros_like(p) for n, p in named}
    rank, world, device = dist.rank(), dist.world_size(), model_device(model)
    batches = 0
    try:
        for i, (x, y) in enumerate(iterate_batches(dataset, batch_size, shuffle=shuffle, generator=generator,
                                                    device=device)):
            if i % world != rank:
                continue
            _add_squared_grads(importance, named, F.cross_entropy(forward(model, x), y))
            batches += 1
    finally:
        model.train(was_training)
    if counter is not None:
        counter.sample_passes += len(dataset)
    return _averaged(importance, batches, world, device)


def fisher_diagonal(model: nn.Module, dataset: Dataset, batch_size: int, generator: torch.Generator | None = None,
                    counter: Counter | None = None) -> dict[str, torch.Tensor]:
    """The default (per-sample) importance; ``generator`` is unused (kept for callers of the old signature)."""
    return per_sample_fisher(model, dataset, batch_size, counter)


def is_class_forgetting(retain: Dataset, forget: Dataset) -> bool:
    """True when no forget label occurs in the retain set (whole classes are forgotten)."""
    forget_labels = set(dataset_labels(forget).tolist())
    return not forget_labels & set(dataset_labels(retain).tolist())


def reference_order_data(retain: Dataset, forget: Dataset, class_forgetting: bool,
                         generator: torch.Generator) -> Dataset:
    """D in the reference loader's order: retain (grouped by class, or one random order), then forget."""
    if class_forgetting:
        order = torch.sort(dataset_labels(retain), stable=True).indices
    else:
        order = torch.randperm(len(retain), generator=generator)
    return concat_datasets(Subset(retain, order.tolist()), forget)


@torch.no_grad()
def dampen(model: nn.Module, importance_data: dict[str, torch.Tensor], importance_forget: dict[str, torch.Tensor],
           alpha: float, dampening: float) -> int:
    """Scale entries with I_f > alpha * I_D by min(dampening * I_D / I_f, 1); returns how many were selected."""
    params = dict(model.named_parameters())
    selected = 0
    for name, imp_d in importance_data.items():
        imp_f = importance_forget[name]
        chosen = imp_f > alpha * imp_d
        factor = (dampening * imp_d / torch.where(chosen, imp_f, torch.ones_like(imp_f))).clamp(max=1.0)
        params[name].mul_(torch.where(chosen, factor, torch.ones_like(factor)))
        selected += int(chosen.sum())
    return selected


REFERENCE_ALPHA = {"cnn": 10.0, "attention": 5.0}  # 10 x the reference's model_size_scaler (0.5 for its ViT)


def has_attention(model: nn.Module) -> bool:
    return any(isinstance(m, nn.MultiheadAttention) or type(m).__name__.endswith("Attention") for m in model.modules())


def reference_alpha(model: nn.Module) -> float:
    """The reference's selection weighting for this kind of model (its scripts halve alpha for ViTs)."""
    return REFERENCE_ALPHA["attention" if has_attention(model) else "cnn"]


@dataclass(kw_only=True)
class SSDConfig(MethodConfig):
    """Training-free dampening of the parameters specialised to the forget set."""

    alpha: float | None = field(None, "Selection weighting: dampen entries with I_forget > alpha * I_data; None: the "
                                "reference's, 10 for CNNs and 5 (halved) for models with attention (ViTs).")
    dampening: float = field(1.0, "Dampening constant lambda: scale selected entries by min(lambda * I_data / I_forget, 1).")
    importance: Literal["per_sample", "reference_batches"] = field(
        "per_sample", "Importance estimate: mean squared per-sample gradients (order-free), or the reference "
        "code's squared batch-mean gradients over its unshuffled, class-grouped pass.")
    batch_size: int | None = field(None, "Batch size of the importance passes (per_sample: only the chunk size); "
                                   "None: the reference's, 64 for class and 128 for sample forgetting.")

    constraints = {
        "alpha": [Interval(float, 0, None, closed="neither"), None],
        "dampening": [Interval(float, 0, None, closed="neither")],
        "importance": [Options(*IMPORTANCES)],
        "batch_size": [Interval(int, 1, None), None],
    }


@register_method("ssd", config=SSDConfig,
                 description="Selective Synaptic Dampening: shrink weights far more important to the forget set (no training).")
class SSD(Method):
    def _unlearn(self, model, retain, forget):
        c = self.config
        class_forgetting = is_class_forgetting(retain, forget)
        batch_size = c.batch_size or REFERENCE_BATCH_SIZE["class" if class_forgetting else "sample"]
        alpha = c.alpha if c.alpha is not None else reference_alpha(model)
        selectable_below = (len(retain) + len(forget)) / len(forget)
        self.info.update(alpha_bound=selectable_below, alpha=alpha)
        if c.importance == "per_sample":
            if alpha >= selectable_below:
                warnings.warn(f"ssd: alpha={alpha:g} >= |D|/|D_f| = {selectable_below:.3g}. I_D is the sample mean "
                              f"over D, so I_D >= (|D_f|/|D|) * I_f and no entry can have I_f > alpha * I_D: "
                              f"nothing will be dampened. Use alpha < {selectable_below:.3g}.", stacklevel=2)
            imp_d = per_sample_fisher(model, concat_datasets(retain, forget), batch_size, self.counter)
            imp_f = per_sample_fisher(model, forget, batch_size, self.counter)
        else:
            data = reference_order_data(retain, forget, class_forgetting, self.generator)
            imp_d = batch_fisher(model, data, batch_size, self.counter)
            imp_f = batch_fisher(model, forget, batch_size, self.counter)
        self.importances = {"data": imp_d, "forget": imp_f}
        selected = dampen(model, imp_d, imp_f, alpha, c.dampening)
        total = sum(v.numel() for v in imp_d.values())
        self.info.update(dampened_entries=selected, dampened_fraction=selected / max(total, 1),
                         importance=c.importance, batch_size=batch_size, class_forgetting=class_forgetting)
        return model
