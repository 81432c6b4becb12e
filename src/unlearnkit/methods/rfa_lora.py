"""Residual Feature Alignment with LoRA (RFA; Qin, Zhu, Wang and Zhou, arXiv 2411.08443) -- a reconstruction.

Idea (paper): with LoRA, each aligned layer's feature is the pre-trained feature
plus a *residual* feature contributed by the adapters. Unlearning drives the
residual to zero on retain samples (retained knowledge unchanged) and to a
*shift* on forget samples (their features move away, so they are no longer
recognised). The adapters are merged at the end.

Every detail below is OURS (the paper does not fix them):

- **Aligned layers** (``layers=None``): the outputs of the model's residual
  stages / blocks: direct children named ``layer1``, ``layer2``, ... (ResNet
  stages); else every block of a direct child named ``blocks`` (ViT blocks);
  else the activation modules (ReLU/GELU/...) inside the model, i.e. each
  conv/linear block's output (SmallCNN, MLP); else the input of the classifier
  head. ``layers=("layer2", "layer3")`` picks modules by name.
- **Original features** come from the same network with the adapters disabled
  (``LoraAdapter.disabled``), without gradients. The original is frozen and runs
  in eval mode, so without augmentation a sample's original features are fixed:
  they are computed once in ``prepare`` (in the pass that also builds the class
  means) and looked up by sample position at every step, as long as they fit in
  ``feature_cache_mb``; with ``shift="mean_other"`` the forget term needs only
  each forget sample's feature norm (``r - t = adapted - m_y``), so the forget set
  costs one number per sample and layer. Otherwise (augmentation, a dataset that
  is not in memory, or too large a retain set) each step runs the extra no-grad
  forward on the batch, as before. Same loss either way (float noise: the cached
  features come from batches of 256).
- **Mode**: the model runs in eval mode throughout (BatchNorm uses its running
  statistics and they are not updated), so "original feature" is exactly the
  input model's feature; LoRA dropout is therefore inactive.
- **Batches**: each step joins a retain batch (an epoch is one pass over D_r) and
  a forget batch drawn by cycling through the forget set, of ``forget_batch_size``
  samples: ``"once_per_epoch"`` (default) = ceil(|D_f| / retain batches), about one
  pass over D_f an epoch; ``"batch_size"`` (or None) = ``batch_size`` (several
  passes over D_f an epoch, the default until session 7), or a number. The paper's batch scheme is not
  public; the default was chosen by measurement (docs/methods/lora.md, "Session 7").
- **Loss** per step, for a retain batch and a forget batch, averaged over aligned
  layers, with per-sample *relative* squared norms so layers of different scale
  weigh the same::

      retain_weight * mean_i ||r_i||^2 / ||f_i||^2                  (r = adapted - original)
    + forget_weight * mean_j ||r_j - t_j||^2 / ||f_j||^2            (t = shift target residual)
    + ce_weight     * CE(retain logits, retain labels)

  The CE term (default weight 1) is what trains the fully trainable head.
- **Shift targets** (``shift``):

  - ``"mean_other"`` (default): the forget feature is moved to the mean original
    feature of the *other* classes: per aligned layer, the per-class means of the
    original features over the retain set are computed once (in ``prepare``), and
    a forget sample of class y is pulled to the average of the class means of every
    class present in the retain set except y (residual target = that mean - f).
  - ``"fixed"``: a fixed random direction per layer (one unit vector of the
    feature's shape, drawn from the method's seed), scaled per sample to
    ``shift_scale * ||f||`` (residual target = ``shift_scale * ||f|| * d``).

  How the default was chosen: class-3 forgetting on digits with the tiny CNN and
  ViT of the test-suite, same epochs/lr; ``mean_other`` took forget accuracy to 0%
  on both models while ``fixed`` (scale 1) left more of the forget class
  recognised at equal retain accuracy -- see docs/methods/lora.md for the figures.
- Hooks are forward hooks on the aligned modules; they are removed before merging,
  also when training fails.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import Subset

from ..config import Interval, NameList, Options, field
from ..data.loading import iterate_batches, resolve_arrays
from ..errors import UnlearnkitError
from ..models.outputs import forward
from ..models.registry import classifier_head
from .base import register_method
from .lora import LoraAdapterConfig, LoraMethod, cycle_batches

ACTIVATIONS = (nn.ReLU, nn.GELU, nn.SiLU, nn.LeakyReLU, nn.ELU, nn.Tanh, nn.ReLU6)
HEAD_INPUT = "<head input>"
ONCE_PER_EPOCH = "once_per_epoch"
EVERY_STEP_BATCH = "batch_size"  # a forget batch of batch_size beside every retain batch: the default until session 7


@dataclass(kw_only=True)
class RfaLoraConfig(LoraAdapterConfig):
    """LoRA trained to keep retain features and shift forget features at aligned layers."""

    layers: tuple[str, ...] | None = field(
        None, "Module names whose outputs are aligned; None = each stage/block output (see docs).")
    shift: Literal["mean_other", "fixed"] = field(
        "mean_other", "Forget-feature target: mean feature of the other classes, or a fixed random direction.")
    shift_scale: float = field(1.0, "For shift='fixed': residual norm as a multiple of the feature norm.")
    retain_weight: float = field(1.0, "Weight of the retain alignment term (residual -> 0).")
    forget_weight: float = field(1.0, "Weight of the forget alignment term (residual -> shift).")
    ce_weight: float = field(1.0, "Weight of the cross-entropy on retain batches (0 = alignment only).")
    feature_cache_mb: float = field(
        1024.0, "Memory for the original features, computed once before training (0 = recompute every step).")
    forget_batch_size: int | Literal["once_per_epoch", "batch_size"] | None = field(
        ONCE_PER_EPOCH, "Forget samples joined to each retain batch: 'once_per_epoch' = ceil(|D_f| / retain "
                        "batches), about one pass over D_f an epoch; 'batch_size' = batch_size (several passes "
                        "over D_f an epoch; the earlier default, also what None means); or a number.")

    constraints = {
        "layers": [NameList("module names"), None],
        "shift": [Options("mean_other", "fixed")],
        "shift_scale": [Interval(float, 0, None, closed="neither")],
        "retain_weight": [Interval(float, 0, None, closed="left")],
        "forget_weight": [Interval(float, 0, None, closed="left")],
        "ce_weight": [Interval(float, 0, None, closed="left")],
        "feature_cache_mb": [Interval(float, 0, None, closed="left")],
        "forget_batch_size": [Interval(int, 1, None), Options(ONCE_PER_EPOCH, EVERY_STEP_BATCH), None],
    }

    # runs before the field existed took a forget batch of batch_size (None meant the same): their stored results
    # keep their keys; the default once_per_epoch is in the key, so it never reuses them
    added_fields = {"forget_batch_size": (None, EVERY_STEP_BATCH)}


def forget_batch_size_for(config: RfaLoraConfig, n_retain: int, n_forget: int) -> int:
    """Forget samples per step: ``forget_batch_size``, or ``batch_size`` when that is ``"batch_size"`` or None, or
    for ``"once_per_epoch"`` the smallest size whose batches, one per retain batch, cover D_f in an epoch."""
    size = config.forget_batch_size
    if size is None or size == EVERY_STEP_BATCH:
        return config.batch_size
    if size == ONCE_PER_EPOCH:
        return max(1, math.ceil(n_forget / retain_steps_per_epoch(config, n_retain)))
    return size


def retain_steps_per_epoch(config: RfaLoraConfig, n_retain: int) -> int:
    return max(1, math.ceil(n_retain / config.batch_size))


def forget_samples_per_epoch(config: RfaLoraConfig, n_retain: int, n_forget: int) -> float:
    """Forget samples an epoch trains on, on average: the forget batches cycle through D_f, each pass ending
    with a partial batch, so a step takes ``n_forget / batches per pass`` of them."""
    if n_forget <= 0:
        return 0.0
    batches_per_pass = math.ceil(n_forget / forget_batch_size_for(config, n_retain, n_forget))
    return retain_steps_per_epoch(config, n_retain) * n_forget / batches_per_pass


def default_aligned_layers(model: nn.Module) -> list[str]:
    """Stage outputs (layer1, layer2, ...), else ViT blocks, else activations, else the head input."""
    children = dict(model.named_children())
    stages = sorted((n for n in children if n.startswith("layer") and n[5:].isdigit()), key=lambda n: int(n[5:]))
    if stages:
        return stages
    blocks = children.get("blocks")
    if isinstance(blocks, (nn.Sequential, nn.ModuleList)) and len(blocks):
        return [f"blocks.{i}" for i in range(len(blocks))]
    head = classifier_head(model)[0]
    acts = [n for n, m in model.named_modules()
            if isinstance(m, ACTIVATIONS) and not n.startswith(head + ".")]
    return acts or [HEAD_INPUT]


def resolve_aligned_layers(model: nn.Module, layers) -> list[str]:
    if layers is None:
        return default_aligned_layers(model)
    modules = dict(model.named_modules())
    unknown = [n for n in layers if n not in modules or n == ""]
    if unknown:
        shown = ", ".join(default_aligned_layers(model))
        raise UnlearnkitError(f"The 'layers' parameter names modules {unknown} that {type(model).__name__} "
                              f"does not have; the default layers are: {shown}.")
    return list(layers)


class FeatureTap:
    """Forward hooks that record the outputs of the aligned modules (the head input via a pre-hook)."""

    def __init__(self, model: nn.Module, names: list[str]):
        self.features: dict[str, torch.Tensor] = {}
        self.handles = []
        head = classifier_head(model)[0]
        for name in names:
            if name == HEAD_INPUT:
                module = model.get_submodule(head)
                self.handles.append(module.register_forward_pre_hook(self._pre_hook(name)))
            else:
                self.handles.append(model.get_submodule(name).register_forward_hook(self._hook(name)))

    def _hook(self, name):
        def hook(module, inputs, output):
            self.features[name] = output[0] if isinstance(output, tuple) else output
        return hook

    def _pre_hook(self, name):
        def hook(module, inputs):
            self.features[name] = inputs[0]
        return hook

    def take(self) -> dict[str, torch.Tensor]:
        out, self.features = self.features, {}
        return out

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles.clear()


def _flat(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(len(t), -1).float()


def squared_norms(t: torch.Tensor) -> torch.Tensor:
    """Per-sample ||t_i||^2 (float32)."""
    return (_flat(t) ** 2).sum(1)


def relative_sq_to(diff: torch.Tensor, ref_sq_norms: torch.Tensor) -> torch.Tensor:
    """mean_i ||diff_i||^2 / ref_sq_norms_i."""
    return (squared_norms(diff) / (ref_sq_norms + 1e-8)).mean()


def relative_sq(diff: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """mean_i ||diff_i||^2 / ||ref_i||^2 (per-sample relative squared distance)."""
    return relative_sq_to(diff, squared_norms(ref))


def position_labelled(dataset) -> tuple[Subset, torch.Tensor] | None:
    """The same samples in the same order (and the same shuffles: same length, same generator calls), labelled
    by their position in ``dataset`` instead of their class; plus the class labels by position. None when the
    dataset is not in memory (an ``ArrayDataset`` or Subsets of one)."""
    arrays = resolve_arrays(dataset)
    if arrays is None:
        return None
    base, indices = arrays
    view = copy.copy(base)  # shares the inputs
    view.y = torch.zeros(len(base), dtype=torch.long)
    view.y[indices] = torch.arange(len(indices))  # a repeated sample keeps one position: same features
    return Subset(view, indices.tolist()), base.y[indices]


@dataclass
class OriginalFeatures:
    """The original's features at the aligned layers for every sample of one dataset, by position: full
    features, or (``norms_only``) just their squared norms, all the ``mean_other`` forget term needs."""

    view: Subset  # the dataset, labelled by position
    labels: torch.Tensor  # class labels by position (on the model's device)
    norms_only: bool
    features: dict[str, torch.Tensor] = dataclass_field(default_factory=dict)
    sq_norms: dict[str, torch.Tensor] = dataclass_field(default_factory=dict)

    def fill(self, start: int, feats: dict[str, torch.Tensor]) -> None:
        for name, f in feats.items():
            n = len(f)
            if name not in self.sq_norms:
                total = len(self.labels)
                self.sq_norms[name] = torch.empty(total, device=f.device)
                if not self.norms_only:
                    self.features[name] = torch.empty((total,) + tuple(f.shape[1:]), dtype=f.dtype, device=f.device)
            self.sq_norms[name][start:start + n] = squared_norms(f)
            if not self.norms_only:
                self.features[name][start:start + n] = f


@register_method("rfa_lora", config=RfaLoraConfig,
                 description="Residual Feature Alignment: LoRA keeps retain features, shifts forget ones (arXiv 2411.08443).")
class RfaLora(LoraMethod):
    needs_forget = True

    def _prepare(self, model, retain, forget):
        c = self.config
        self.aligned = resolve_aligned_layers(model, c.layers)
        self._add_adapter(model)
        self.info["rfa_layers"] = list(self.aligned)
        self.info["rfa_shift"] = c.shift
        self.directions = None  # shift="fixed": drawn at the first step, from the method's generator
        model.eval()
        self.feature_shapes = self._feature_shapes(model, retain)
        self.retain_cache, self.forget_cache = self._plan_caches(retain, forget)
        self.other_means = self._retain_pass(model, retain)
        if self.forget_cache is not None:
            self._fill(model, forget, self.forget_cache)

    def _original_batches(self, model, dataset, batch_size: int = 256):
        """(labels, original features by layer) for ``dataset`` in order, without gradients."""
        tap = FeatureTap(model, self.aligned)
        device = next(model.parameters()).device
        try:
            with torch.no_grad(), self.adapter.disabled():
                for x, y in iterate_batches(dataset, batch_size, device=device):
                    forward(model, x)
                    yield y, tap.take()
        finally:
            tap.remove()

    def _feature_shapes(self, model, retain) -> dict[str, tuple[int, ...]]:
        one = Subset(retain, [0])
        _, feats = next(iter(self._original_batches(model, one, 1)))
        return {n: tuple(f.shape[1:]) for n, f in feats.items()}

    def _plan_caches(self, retain, forget) -> tuple[OriginalFeatures | None, OriginalFeatures | None]:
        """Which original features are computed once: the forget set's first (each epoch cycles through it
        several times), then the retain set's, within ``feature_cache_mb``. None with augmentation (a
        sample's features then change from epoch to epoch) or a dataset that is not in memory."""
        c = self.config
        device = next(self.adapter.model.parameters()).device
        sample_bytes = sum(math.prod(s) for s in self.feature_shapes.values()) * 4
        norms_bytes = 4 * len(self.aligned)
        budget, used, caches = c.feature_cache_mb * 2 ** 20, 0.0, {}
        for what, data, norms_only in (("forget", forget, c.shift == "mean_other"), ("retain", retain, False)):
            view = None if c.augment or budget == 0 else position_labelled(data)
            need = len(data) * (norms_bytes if norms_only else sample_bytes + norms_bytes)
            if view is None or used + need > budget:
                caches[what] = None
                continue
            used += need
            caches[what] = OriginalFeatures(view[0], view[1].to(device), norms_only)
        self.info["rfa_cached_features"] = [w for w in ("retain", "forget") if caches[w] is not None]
        self.info["rfa_feature_cache_mb"] = round(used / 2 ** 20, 1)
        return caches["retain"], caches["forget"]

    def _fill(self, model, dataset, cache: OriginalFeatures) -> None:
        start = 0
        for y, feats in self._original_batches(model, dataset):
            cache.fill(start, feats)
            start += len(y)

    def _retain_pass(self, model, retain) -> dict[str, torch.Tensor] | None:
        """One pass over the retain set: fills the retain cache and (``mean_other``) returns, per aligned layer,
        a (num_classes, *feature) table whose row y is the average of the per-class mean original features of
        every class other than y."""
        mean_other = self.config.shift == "mean_other"
        if not mean_other and self.retain_cache is None:
            return None
        sums: dict[str, dict[int, torch.Tensor]] = {n: {} for n in self.aligned}
        counts: dict[int, int] = {}
        start = 0
        for y, feats in self._original_batches(model, retain):
            if self.retain_cache is not None:
                self.retain_cache.fill(start, feats)
            start += len(y)
            if not mean_other:
                continue
            for k in y.unique().tolist():
                sel = y == k
                counts[k] = counts.get(k, 0) + int(sel.sum())
                for n in self.aligned:
                    s = feats[n][sel].float().sum(0)
                    sums[n][k] = sums[n][k] + s if k in sums[n] else s
        return self._other_class_table(sums, counts, model) if mean_other else None

    @staticmethod
    def _other_class_table(sums, counts, model) -> dict[str, torch.Tensor]:
        num_classes = classifier_head(model)[1].out_features
        out = {}
        for n, per in sums.items():
            means = {k: v / counts[k] for k, v in per.items()}
            total = torch.stack(list(means.values())).sum(0)
            rows = []
            for k in range(num_classes):  # mean over the classes present in retain, excluding k
                if k in means and len(means) > 1:
                    rows.append((total - means[k]) / (len(means) - 1))
                else:
                    rows.append(total / len(means))
            out[n] = torch.stack(rows)
        return out

    def _forget_diff(self, name: str, adapted: torch.Tensor, original: torch.Tensor | None,
                     sq_norms: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """residual - target residual = adapted - (original + target), which the forget term drives to zero.
        ``mean_other``: original + (m_y - original) = m_y, so the original is not needed, only its norm."""
        c = self.config
        if c.shift == "mean_other":
            return adapted - self.other_means[name].to(adapted.device)[labels].to(adapted.dtype)
        d = self.directions[name].to(adapted.device)
        norms = sq_norms.sqrt().view(-1, *([1] * (adapted.dim() - 1))).to(adapted.dtype)
        return adapted - original - c.shift_scale * norms * d

    def _draw_directions(self) -> None:
        self.directions = {}
        for name in self.aligned:
            d = torch.randn(self.feature_shapes[name], generator=self.generator)
            self.directions[name] = d / d.norm()

    def _unlearn(self, model, retain, forget):
        c = self.config
        adapter, aligned = self.adapter, self.aligned
        retain_cache, forget_cache = self.retain_cache, self.forget_cache
        tap = FeatureTap(model, aligned)
        device = next(model.parameters()).device
        forget_data = forget if forget_cache is None else forget_cache.view
        forget_batch = forget_batch_size_for(c, len(retain), len(forget))
        self.info["rfa_forget_batch_size"] = forget_batch
        batches = cycle_batches(forget_data, forget_batch, self.generator, device)
        counter = self.counter

        def original(x) -> dict[str, torch.Tensor]:
            with torch.no_grad(), adapter.disabled():
                forward(model, x)
                return {k: v.detach() for k, v in tap.take().items()}

        def step(m, x, y):
            xf, yf = next(batches)
            counter.sample_passes += len(xf)
            if self.directions is None and c.shift == "fixed":
                self._draw_directions()
            logits = forward(m, torch.cat([x, xf]))
            adapted = tap.take()
            n = len(x)
            fresh = [part for part, cache in ((x, retain_cache), (xf, forget_cache)) if cache is None]
            computed = original(torch.cat(fresh)) if fresh else {}
            if retain_cache is None:
                orig_r = {k: v[:n] for k, v in computed.items()}
                computed = {k: v[n:] for k, v in computed.items()}
            else:
                pos, y = y, retain_cache.labels[y]
                orig_r = {k: retain_cache.features[k][pos] for k in aligned}
            if forget_cache is None:
                orig_f, sq_f = computed, {k: squared_norms(v) for k, v in computed.items()}
            else:
                pos_f, yf = yf, forget_cache.labels[yf]
                orig_f = {k: forget_cache.features[k][pos_f] for k in forget_cache.features}
                sq_f = {k: forget_cache.sq_norms[k][pos_f] for k in aligned}
            retain_term = sum(relative_sq(adapted[k][:n] - orig_r[k], orig_r[k]) for k in aligned)
            forget_term = sum(relative_sq_to(self._forget_diff(k, adapted[k][n:], orig_f.get(k), sq_f[k], yf), sq_f[k])
                              for k in aligned)
            loss = (c.retain_weight * retain_term + c.forget_weight * forget_term) / len(aligned)
            if c.ce_weight > 0:
                loss = loss + c.ce_weight * F.cross_entropy(logits[:n], y)
            return loss

        retain_data = retain if retain_cache is None else retain_cache.view
        try:
            self.train_epochs(model, retain_data, step, mask=self.param_mask, train_mode=False)
        finally:
            tap.remove()
            adapter.remove_hooks()
            self.retain_cache = self.forget_cache = None
        return self._merge()
