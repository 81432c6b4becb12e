"""Projected-Gradient Unlearning (PGU): forget-loss SGD orthogonal to the retain inputs of each layer.

Hoang, Rana, Gupta and Venkatesh, "Learn to Unlearn for Deep Neural Networks:
Minimizing Unlearning Interference with Gradient Projection", WACV 2024,
arXiv 2312.04095. See ``unlearnkit.pgu`` for the Gram cache (prepare once,
downdate per request) and ``docs/methods/pgu.md``.

Per request: retain Gram = cached Gram - forget Gram (only the forget samples the cache's
sampled Grams hold are passed); per Linear/Conv2d layer (and group) keep the leading
eigenvectors U by the reference's rule (cumulative share of the singular values, i.e. the
square roots of the eigenvalues, <= ``energy``, plus one; ``unlearnkit.pgu.kept_rank``); then plain SGD
on the forget loss with every weight gradient projected, ``g <- g - g U U^T`` (conv weights
as out x (in*kh*kw)); weight decay is added to g before projecting; no momentum (it would
carry unprojected history). BatchNorm runs in eval mode; biases, BatchNorm/LayerNorm
parameters, embeddings and every other non-matrix parameter are frozen.

Forget loss, as the reference: ``mean[-log(1 - p_y + eps)] - entropy_weight * mean entropy``
(eps = the reference's offset 0.05, entropy weight 0.2); LR decays exponentially from ``lr``
to ``lr_end`` over the step budget.

Our choices (measured in docs/methods/pgu.md, "Choosing the request defaults"):
* The layers fed the model's input itself (first conv, patch embedding) are not stepped
  (``freeze_input_layers``): on raw pixel patches the forget data has no directions of its own.
* Budget: at most ``max_epochs`` (5) passes over the forget set (and ``max_steps`` if set), in
  batches of 8 (the reference: 100 of a 5,000-image class, i.e. 50 steps per pass).
* Relative LR (``lr_scale="weight_norm"``): ``lr`` is a fraction of the trainable weights' norm; the
  absolute LR is set once, at the first step, to ``lr * |W| / |projected g|`` (plain SGD after that).
  Plain SGD's LR has no scale of its own: ResNet-20's projected gradient is 10x smaller relative to
  its weights than the digits models' (``lr_scale="none"`` is the reference's absolute LR).
* LR doubling (``stall_lr_factor``): after every check at which forget accuracy has not covered a tenth of
  the way to the target, the LR is multiplied by ``stall_lr_factor`` (2): a confident model's first
  projected gradient is small (the softmax saturates), so the relative LR can be too small to start
  forgetting. A request that has started is unchanged.
* Stopping, checked every ``check_every`` (20) steps and after the last step, on fixed
  samples of ``check_samples`` (256) images: forget accuracy on a sample of D_f; retain
  accuracy on a sample of the retain set if one is given, else of the held-out
  ``check_data`` (``PGU(..., check_data=...)``), else no retain guard. Class forgetting
  (``forgetting="auto"`` detects it when D_f holds every remaining sample of its classes)
  stops when forget accuracy <= ``class_target``; sample forgetting when forget accuracy
  <= ``sample_target``, or, when that is None and ``check_data`` is given, <= the original
  model's accuracy on it, keeping whichever of the last two checks is closer to it (the reference's
  rule). The retain guard is measured at every check, also the one that
  meets the forget target: when the estimate dropped by more than ``max_retain_drop``
  points, the weights roll back to the last check within it and the run stops.
* Without ``cache``, the Gram is computed from a sample of retain + forget in ``prepare``
  (timed as ``prepare_seconds``); with it, ``prepare_seconds`` is only the load and
  the downdate, eigendecomposition and training count as the request. After a
  successful request the cache file is downdated and saved (``update_cache``).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import Dataset, Subset

from ..components import gradient_projection as gram
from ..config import InstanceOf, Interval, Options, field
from ..data.loading import iterate_batches
from ..errors import UnlearnkitError
from ..models.outputs import forward
from ..training import accuracy, check_finite
from ..utils import state_dict_hash, timer
from .base import Method, MethodConfig, register_method


@dataclass(kw_only=True)
class PGUConfig(MethodConfig):
    """Projected-gradient unlearning; see the module docstring for the rules."""

    cache: str | None = field(None, "PGU Gram cache file from `unlearnkit prepare` / unlearnkit.pgu.prepare; "
                                    "None: compute it from retain + forget.")
    update_cache: bool = field(True, "After a successful request, subtract the forget set from the cache file.")
    energy: float = field(0.95, "Threshold tau in (0, 1]: keep the leading directions whose cumulative share of "
                                "the singular values (square roots of the Gram's eigenvalues) is <= tau.")
    freeze_input_layers: bool = field(True, "Leave the layers fed the model's input itself (first conv, patch "
                                            "embedding) unchanged (ours; the reference projects them too).")
    lr_scale: Literal["weight_norm", "none"] = field(
        "weight_norm", "weight_norm: lr is relative, the first step moves the trainable weights by lr x their norm "
                       "(the LR is set once from that step's projected gradient, then plain SGD); none: lr is the "
                       "plain SGD learning rate (the reference).")
    lr: float = field(0.013, "Initial learning rate (relative with lr_scale=weight_norm; the reference, absolute: "
                             "0.05 over up to 100 passes).")
    lr_end: float = field(0.0026, "Final learning rate, same unit as lr (exponential decay over the step budget; "
                                  "the reference: 0.01).")
    stall_lr_factor: float = field(
        2.0, "Multiply the LR by this after every check at which forget accuracy has not yet covered a tenth of "
             "the way from its value before the request to the target (forgetting has not started; 1: never; ours).")
    batch_size: int = field(8, "Forget-set batch size (small: a 5-pass budget on a small forget set needs steps).")
    max_epochs: int = field(5, "At most this many passes over the forget set.")
    max_steps: int | None = field(None, "Optional step cap below max_epochs' (None: none).")
    weight_decay: float = field(0.0, "Weight decay, added to the gradient before projection.")
    entropy_weight: float = field(0.2, "Weight of the prediction-entropy bonus in the forget loss.")
    eps: float = field(0.05, "Margin eps in -log(1 - p_y + eps) (the reference's offset).")
    forgetting: Literal["auto", "class", "sample"] = field("auto", "Stopping rule: class or sample forgetting.")
    class_target: float = field(1.0, "Class forgetting stops when forget accuracy (%) <= this.")
    sample_target: float | None = field(None, "Sample forgetting stops when forget accuracy (%) <= this "
                                              "(None: original accuracy on check_data if given).")
    max_retain_drop: float = field(5.0, "Retain guard: when estimated retain accuracy dropped by more than this "
                                        "(points), roll back to the last check within it and stop.")
    check_every: int = field(20, "Steps between stopping checks.")
    check_samples: int = field(256, "Fixed forget and retain (or check_data) samples the stopping checks use.")
    gram_batch_size: int = field(128, "Batch size of the no-grad Gram passes.")
    gram_samples: int | None = field(gram.DEFAULT_MAX_SAMPLES, "Without cache: samples the Grams hold (None: all).")
    gram_patches: int | None = field(gram.DEFAULT_MAX_PATCHES, "Without cache: patches (or tokens) per sample "
                                                               "(None: all).")
    max_dense_features: int = field(4096, "Layers with more input features get a randomized low-rank sketch.")
    lowrank_rank: int = field(256, "Sketch rank of the low-rank layers.")

    constraints = {
        "cache": [InstanceOf((str, os.PathLike), "a path"), None],
        "update_cache": [bool],
        "energy": [Interval(float, 0, 1, closed="right")],
        "freeze_input_layers": [bool],
        "lr_scale": [Options("weight_norm", "none")],
        "lr": [Interval(float, 0, None, closed="neither")],
        "lr_end": [Interval(float, 0, None, closed="neither")],
        "stall_lr_factor": [Interval(float, 1, None, closed="left")],
        "batch_size": [Interval(int, 1, None)],
        "max_epochs": [Interval(int, 1, None)],
        "max_steps": [Interval(int, 1, None), None],
        "weight_decay": [Interval(float, 0, None, closed="left")],
        "entropy_weight": [Interval(float, 0, None, closed="left")],
        "eps": [Interval(float, 0, 1, closed="right")],
        "forgetting": [Options("auto", "class", "sample")],
        "class_target": [Interval(float, 0, 100)],
        "sample_target": [Interval(float, 0, 100), None],
        "max_retain_drop": [Interval(float, 0, 100)],
        "check_every": [Interval(int, 1, None)],
        "check_samples": [Interval(int, 1, None)],
        "gram_batch_size": [Interval(int, 1, None)],
        "gram_samples": [Interval(int, 1, None), None],
        "gram_patches": [Interval(int, 1, None), None],
        "max_dense_features": [Interval(int, 1, None)],
        "lowrank_rank": [Interval(int, 1, None)],
    }


def _norm(tensors) -> float:
    return math.sqrt(sum(float(t.detach().double().pow(2).sum()) for t in tensors))


STARTED_SHARE = 0.1  # forgetting "has started" once forget accuracy covered this share of the way to the target


def _forgetting_started(history: list[float], target: float | None) -> bool:
    """Whether the forget-accuracy checks so far moved at least STARTED_SHARE of the way to ``target``."""
    if target is None:  # no target to measure the way with: never boost
        return True
    return history[0] - history[-1] >= STARTED_SHARE * (history[0] - target)


def forget_loss(logits: torch.Tensor, y: torch.Tensor, eps: float, entropy_weight: float) -> torch.Tensor:
    """mean[-log(1 - p_y + eps)] - entropy_weight * mean entropy of the prediction."""
    logp = torch.log_softmax(logits.float(), dim=1)
    p_y = logp.gather(1, y[:, None]).squeeze(1).exp()
    entropy = -(logp.exp() * logp).sum(1)
    return (-torch.log1p(-p_y + eps)).mean() - entropy_weight * entropy.mean()


@register_method("pgu", config=PGUConfig,
                 description="Projected-gradient unlearning: forget-loss SGD orthogonal to retain layer inputs.")
class PGU(Method):
    needs_retain = False

    def __init__(self, model: nn.Module, config: PGUConfig | None = None, *, check_data: Dataset | None = None,
                 **kwargs):
        super().__init__(model, config, **kwargs)
        self.check_data = check_data
        self.cache: gram.PGUCache | None = None
        self._frozen: set[str] = set()  # input layers left unchanged (found in prepare)

    def _trainable_parameters(self, model):
        return sum(m.weight.numel() for n, m in gram.target_layers(model).items() if n not in self._frozen)

    # ---- prepare: load (and check) or build the Gram cache ------------------------------------
    def _prepare(self, model, retain, forget):
        c = self.config
        model.eval()
        if c.cache is not None:
            self.cache = gram.PGUCache.load(c.cache)
            self.cache.check_model(model)
            self._forget_ids = self.cache.check_forget(forget)
            self.info["gram"] = "cache"
        else:
            if retain is None:
                raise UnlearnkitError("Method 'pgu' needs either the 'cache' parameter (a file from `unlearnkit "
                                      "prepare` / unlearnkit.pgu.prepare) or a retain set to compute the Gram from.")
            r_ids, f_ids = gram.sample_ids(retain), gram.sample_ids(forget)
            if np.intersect1d(r_ids, f_ids).size:  # not Subsets of one training set: number them apart
                r_ids, f_ids = np.arange(len(retain)), len(retain) + np.arange(len(forget))
            with timer() as t:
                self.cache = gram.PGUCache.build(model, [retain, forget], np.concatenate([r_ids, f_ids]),
                                                 batch_size=c.gram_batch_size,
                                                 max_dense_features=c.max_dense_features, rank=c.lowrank_rank,
                                                 seed=self.seed, max_samples=c.gram_samples,
                                                 max_patches=c.gram_patches)
            self.info.update(gram="computed from retain + forget", gram_seconds=t["seconds"])
            self._forget_ids = self.cache.check_forget(forget, f_ids)
        self._frozen = self._frozen_input_layers(model, forget) if c.freeze_input_layers else set()
        self.info["frozen_layers"] = sorted(self._frozen)
        self.info["gram_mb"] = self.cache.memory_bytes / 2**20
        self.info["gram_samples"] = int(len(self.cache.gram_ids))
        # fixed, small check sets: forget accuracy on a forget sample; retain accuracy on a retain
        # sample, else on the held-out check_data, else no retain guard
        self._forget_check = self._fixed_sample(forget, 1)
        self._check_set, self._check_kind = None, "none"
        if retain is not None and len(retain):
            self._check_set, self._check_kind = self._fixed_sample(retain, 2), "retain"
        elif self.check_data is not None and len(self.check_data):
            self._check_set, self._check_kind = self._fixed_sample(self.check_data, 3), "check_data"
        self._check_ref = accuracy(model, self._check_set) if self._check_set is not None else float("nan")
        self._heldout_ref = accuracy(model, self.check_data) if self.check_data is not None else None

    def _fixed_sample(self, data: Dataset, salt: int) -> Dataset:
        """At most ``check_samples`` samples of ``data``, the same for every check of this run."""
        if len(data) <= self.config.check_samples:
            return data
        gen = torch.Generator().manual_seed(self.seed * 7919 + salt)
        return Subset(data, torch.randperm(len(data), generator=gen)[:self.config.check_samples].sort()[0].tolist())

    # ---- unlearn --------------------------------------------------------------------------------
    def _unlearn(self, model, retain, forget):
        c, cache = self.config, self.cache
        model.eval()
        with timer() as t:
            f_grams, f_traces = cache.forget_stats(model, forget, self._forget_ids, batch_size=c.gram_batch_size)
            r_grams, r_traces = cache.downdated(f_grams, f_traces)
            bases, ranks = gram.projection_bases(cache, r_grams, r_traces, c.energy, device=self.device)
        self.info["projector_seconds"] = t["seconds"]
        self.info["forget_gram_samples"] = cache.last_forget_passes
        self.info["kept_dims"] = {n: {"kept": r, "dim": cache.layers[n]["dim"]} for n, r in ranks.items()}

        kind = c.forgetting
        if kind == "auto":
            kind = "class" if cache.is_class_request(self._forget_ids) else "sample"
        if kind == "class":
            target = c.class_target
        elif c.sample_target is not None:
            target = c.sample_target
        else:
            target = self._heldout_ref  # None: only the step cap and the retain check
        self.info.update(forgetting=kind, forget_acc_target=target, check_set=self._check_kind,
                         check_acc_before=self._check_ref)

        self._train(model, forget, bases, target, kind)

        if c.update_cache:
            cache.commit(self._forget_ids, f_grams, f_traces, model_after=state_dict_hash(model),
                         save=c.cache is not None)
            self.info["cache_updated"] = c.cache is not None
        return model

    def _frozen_input_layers(self, model: nn.Module, forget: Dataset) -> set[str]:
        x, _ = next(iter(iterate_batches(forget, 1, device=self.device)))
        return gram.input_layers(model, x)

    def _train(self, model: nn.Module, forget: Dataset, bases: dict[str, torch.Tensor], target: float | None,
               kind: str):
        c = self.config
        layers = gram.target_layers(model)
        weights = {n: m.weight for n, m in layers.items() if n not in self._frozen}
        for p in model.parameters():
            p.requires_grad_(False)
        for w in weights.values():
            w.requires_grad_(True)
        model.eval()
        steps_per_pass = max(1, math.ceil(len(forget) / c.batch_size))
        budget = c.max_epochs * steps_per_pass if c.max_steps is None else min(c.max_steps,
                                                                                c.max_epochs * steps_per_pass)
        decay = math.log(c.lr_end / c.lr) / max(budget - 1, 1)
        history: list[float] = []
        self.info.update(forget_acc_history=history, check_forward_samples=0)
        good = {"step": 0, "weights": {n: w.detach().clone() for n, w in weights.items()}}
        last: dict = {}  # sample forgetting: the previous check's state
        weight_norm = _norm(weights.values())
        lr_unit = None if c.lr_scale != "none" else 1.0  # absolute LR per unit of c.lr; set at the first step

        def restore(saved: dict) -> None:
            with torch.no_grad():
                for n, w in weights.items():
                    w.copy_(saved["weights"][n])

        def check(step: int) -> str | None:
            """Forget target and retain guard, both measured at every check on their fixed samples."""
            acc = accuracy(model, self._forget_check)
            history.append(round(acc, 3))
            self.info["check_forward_samples"] += len(self._forget_check)
            now = None
            if self._check_set is not None:
                now = accuracy(model, self._check_set)
                self.info["check_forward_samples"] += len(self._check_set)
                if self._check_ref - now > c.max_retain_drop:
                    restore(good)
                    self.info["check_acc_after"] = good["acc"] if "acc" in good else self._check_ref
                    return (f"{self._check_kind} accuracy dropped {self._check_ref - now:.2f} points at step {step}; "
                            f"rolled back to step {good['step']}")
                self.info["check_acc_after"] = now
                good.update(step=step, acc=now, weights={n: w.detach().clone() for n, w in weights.items()})
            if target is not None and acc <= target:
                reason = f"forget accuracy {acc:.2f}% <= target {target:.2f}%"
                # sample forgetting overshoots the held-out target between checks: keep whichever of the last
                # two checks is closer to it (the reference's rule, its unlearn.py)
                if kind == "sample" and last and abs(last["forget_acc"] - target) < target - acc:
                    restore(last)
                    if now is not None:
                        self.info["check_acc_after"] = last["acc"]
                    reason += f"; step {last['step']} ({last['forget_acc']:.2f}%) was closer: kept"
                return reason
            if kind == "sample":
                last.update(step=step, forget_acc=acc, acc=now,
                            weights={n: w.detach().clone() for n, w in weights.items()})
            return None

        reason, step, boost = check(0), 0, 1.0
        largest_squared = None  # largest |projected g_t|^2, for info["grad_growth"]
        while reason is None and step < budget:
            for x, y in iterate_batches(forget, c.batch_size, shuffle=True, generator=self.generator,
                                        device=self.device):
                lr = c.lr * boost * math.exp(decay * step)
                loss = forget_loss(forward(model, x), y, c.eps, c.entropy_weight)
                check_finite(loss, "pgu")
                for w in weights.values():
                    w.grad = None
                loss.backward()
                with torch.no_grad():
                    grads = {}
                    for name, w in weights.items():
                        if w.grad is None:
                            continue
                        g = w.grad
                        if c.weight_decay:
                            g = g.add(w, alpha=c.weight_decay)
                        grads[name] = gram.project_(g, bases[name])
                        w.grad = None
                    if lr_unit is None:
                        grad_norm = _norm(grads.values())
                        lr_unit = weight_norm / grad_norm if grad_norm > 0 else None
                        self.info.setdefault("lr_unit", lr_unit)
                    if lr_unit is not None:
                        if c.lr_scale == "weight_norm" and grads:  # kept on the device: no host sync a step
                            squared = sum(g.detach().double().pow(2).sum() for g in grads.values())
                            largest_squared = squared if largest_squared is None else torch.maximum(
                                largest_squared, squared)
                        for name, g in grads.items():
                            weights[name].add_(g, alpha=-lr * lr_unit)
                step += 1
                self.counter.steps += 1
                self.counter.sample_passes += len(x)
                if step % c.check_every == 0 or step == budget:
                    reason = check(step)
                    if reason is None and not _forgetting_started(history, target):
                        boost *= c.stall_lr_factor
                if reason is not None or step >= budget:
                    break
        if largest_squared is not None:  # |projected g_t| / |projected g_1|, the largest over the steps
            self.info["grad_growth"] = math.sqrt(float(largest_squared)) * lr_unit / weight_norm
        self.info.update(stop_reason=reason or f"step budget ({budget} steps, {c.max_epochs} passes)",
                         pgu_steps=step, lr_boost=boost,
                         forget_passes=self.counter.sample_passes / max(len(forget), 1))
        return model
