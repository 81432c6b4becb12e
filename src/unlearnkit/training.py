"""The one training loop every method and the recipe trainer use.

``fit`` runs epochs of ``step_fn(model, x, y) -> loss`` with an optimizer, an
optional per-step LR schedule and an optional ``ParamMask``; it stops with a
``DivergenceError`` on a non-finite loss and counts sample-passes (forward +
backward per sample) so cost compares across machines.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Callable, Iterable, Literal

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import Dataset

from . import distributed as _distributed
from . import resume as _resume
from .config import Config, Interval, Options, field
from .data.loading import iterate_batches, num_batches
from .errors import DivergenceError, InvalidConfigError, UnlearnkitError
from .components.weight_masks import ParamMask
from .models.outputs import forward
from .performance import host_sync_every
from .progress import progress_bar
from .utils import model_device, seed_everything

StepFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class Counter:
    sample_passes: int = 0
    steps: int = 0


def make_optimizer(params: Iterable, name: str, lr: float, momentum: float = 0.9,
                   weight_decay: float = 0.0) -> torch.optim.Optimizer:
    params = [p for p in params if p.requires_grad]
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {name!r}")


def make_schedule(optimizer: torch.optim.Optimizer, name: str, total_steps: int):
    if name == "constant":
        return None
    if name == "cosine":
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total_steps) / max(total_steps, 1))))
    if name == "step":  # x0.1 at 50% and 75% of training
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: 0.1 ** ((s >= 0.5 * total_steps) + (s >= 0.75 * total_steps)))
    raise ValueError(f"unknown schedule {name!r}")


def cross_entropy_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(forward(model, x), y)


def check_finite(loss: torch.Tensor, where: str) -> None:
    if not torch.isfinite(loss).all():
        raise_diverged(where, loss.item())


def raise_diverged(where: str, value: float) -> None:
    raise DivergenceError(
        f"{where}: the loss became {value} (diverged); lower the learning rate, and check that the "
        "data has no NaN/inf inputs and the model no non-finite weights. The input model was left unchanged."
    )


def fit(model: nn.Module, dataset: Dataset, step_fn: StepFn, optimizer: torch.optim.Optimizer, *,
        epochs: int, batch_size: int, generator: torch.Generator, schedule: str = "constant",
        augment: bool = False, mask: ParamMask | None = None, counter: Counter | None = None,
        description: str = "train", drop_last: bool = False, max_steps: int | None = None,
        train_mode: bool = True, augment_epochs: int | None = None) -> Counter:
    """Train ``model`` in place for ``epochs`` over ``dataset``.

    With ``augment``, only the first ``augment_epochs`` epochs augment (None = all of them);
    the LR schedule spans all epochs either way.

    With a ``unlearnkit.distributed`` context (several processes and/or mixed
    precision), ``batch_size`` is the global batch: each rank trains on its shard and
    gradients are averaged across ranks (see ``distributed.py``). Without one, nothing
    differs from a plain single-process loop.

    Inside a ``unlearnkit.resume.resumable`` context each call checkpoints after every epoch and
    continues from its last checkpoint when there is one (see ``resume.py``).
    """
    counter = counter or Counter()
    ctx = _distributed.active()
    if ctx is not None:
        ctx.sync_module(model)
        ctx.sync_mask(mask)
    device = model_device(model)
    steps_per_epoch = num_batches(dataset, batch_size, drop_last)
    total = steps_per_epoch * epochs if max_steps is None else min(max_steps, steps_per_epoch * epochs)
    scheduler = make_schedule(optimizer, schedule, total)
    model.train(train_mode)
    checkpoint = _resume.fit_checkpoint(
        {"epochs": epochs, "batch_size": batch_size, "samples": len(dataset), "total_steps": total,
         "schedule": schedule, "augment": augment, "augment_epochs": augment_epochs, "drop_last": drop_last,
         "optimizer": type(optimizer).__name__},
        ctx=ctx, model=model, optimizer=optimizer, scheduler=scheduler, generator=generator, counter=counter)
    first_epoch, done = (0, 0) if checkpoint is None else checkpoint.restore()
    sync_every = host_sync_every(device)
    nonfinite = None  # accelerators: a device-side flag checked every `sync_every` steps
    with progress_bar(total, description) as bar:
        if done:
            bar.advance(done, status="resumed")
        for epoch in range(first_epoch, epochs):
            augment_now = augment and (augment_epochs is None or epoch < augment_epochs)
            for x, y in iterate_batches(dataset, batch_size, shuffle=True, generator=generator,
                                        augment=augment_now, device=device, drop_last=drop_last):
                if ctx is None:
                    loss = step_fn(model, x, y)
                    if sync_every == 1:
                        check_finite(loss, description)
                    else:
                        flag = ~torch.isfinite(loss.detach()).all()
                        nonfinite = flag if nonfinite is None else nonfinite | flag
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                else:
                    loss = ctx.backward_step(model, step_fn, x, y, optimizer, description)
                if mask is not None:
                    mask.zero_frozen_grads()
                if ctx is None:
                    optimizer.step()
                else:
                    ctx.optimizer_step(optimizer)
                if mask is not None:
                    mask.restore_frozen()
                if scheduler is not None:
                    scheduler.step()
                counter.sample_passes += len(y)  # x may be a dict of inputs (Hugging Face style)
                counter.steps += 1
                done += 1
                if done % sync_every and done < total:
                    bar.advance(1)
                    continue
                if nonfinite is not None and bool(nonfinite):
                    raise_diverged(f"{description} (within the last {sync_every} steps)", float("nan"))
                bar.advance(1, status=f"loss {loss.item():.3f}")
                if done >= total:
                    break
            if checkpoint is not None:
                if nonfinite is not None and bool(nonfinite):  # never checkpoint a diverged model
                    raise_diverged(f"{description} (within the last {sync_every} steps)", float("nan"))
                checkpoint.save(epoch + 1, done, finished=done >= total)
            if done >= total:
                break
    if ctx is not None:
        ctx.sync_module(model, buffers_only=True)
    return counter


@dataclass(kw_only=True)
class Recipe(Config):
    """How to train a model from scratch: used for the original and for the retrain oracle."""

    added_fields = {"augment_epochs": (None,)}  # None: every epoch augmented, as before the field

    optimizer: Literal["sgd", "adam", "adamw"] = field("sgd", "Optimizer.")
    lr: float = field(0.1, "Peak learning rate.")
    momentum: float = field(0.9, "SGD momentum.")
    weight_decay: float = field(5e-4, "L2 weight decay.")
    epochs: int = field(30, "Training epochs.")
    batch_size: int = field(128, "Batch size.")
    schedule: Literal["constant", "cosine", "step"] = field("cosine", "Per-step LR schedule.")
    augment: bool = field(False, "Random crop (pad 4) and horizontal flip, for 32x32 images.")
    augment_epochs: int | None = field(None, "With augment: only the first this many epochs augment, the rest "
                                             "train on the plain images (lets the model fit its data at the low end "
                                             "of the schedule); None = every epoch.")
    label_smoothing: float = field(0.0, "Label smoothing of the cross-entropy.")
    seed: int = field(0, "Seed of initialisation-independent randomness (batch order, augmentation).")

    constraints = {
        "optimizer": [Options("sgd", "adam", "adamw")],
        "lr": [Interval(float, 0, None, closed="neither")],
        "momentum": [Interval(float, 0, 1, closed="left")],
        "weight_decay": [Interval(float, 0, None, closed="left")],
        "epochs": [Interval(int, 1, None)],
        "batch_size": [Interval(int, 1, None)],
        "schedule": [Options("constant", "cosine", "step")],
        "augment": [bool],
        "augment_epochs": [Interval(int, 0, None), None],
        "label_smoothing": [Interval(float, 0, 1, closed="left")],
        "seed": [Interval(int, 0, None)],
    }

    def _check_consistency(self) -> None:
        check_augment_epochs(type(self).__name__, self.augment, self.augment_epochs, self.epochs)

    @classmethod
    def preset(cls, name: str, **overrides) -> "Recipe":
        """A named recipe (see ``RECIPE_PRESETS``) with optional field overrides."""
        from .errors import unknown_name_error

        if name not in RECIPE_PRESETS:
            raise unknown_name_error("recipe", name, RECIPE_PRESETS)
        return cls(**{**RECIPE_PRESETS[name], **overrides})


def check_augment_epochs(owner: str, augment: bool, augment_epochs: int | None, epochs: int) -> None:
    """``augment_epochs`` only means something with ``augment`` on, and counts epochs of this run."""
    if augment_epochs is None:
        return
    if not augment:
        raise InvalidConfigError(f"The 'augment_epochs' parameter of {owner} needs augment=True; got augment=False "
                                 f"with augment_epochs={augment_epochs} (drop augment_epochs, or turn augment on).")
    if augment_epochs > epochs:
        raise InvalidConfigError(f"The 'augment_epochs' parameter of {owner} must be at most epochs ({epochs}); "
                                 f"got {augment_epochs}.")


# Named starting points for ``Recipe.preset`` and ``unlearnkit train --recipe``.
RECIPE_PRESETS: dict[str, dict] = {
    # from-scratch training of the small CIFAR-style models (ResNet-20: ~79% on a 10k CIFAR-10 subset here)
    "scratch": {},
    # the PruneLoRA papers' setting: an ImageNet-pretrained backbone fine-tuned on CIFAR-10 (inputs
    # resized by the model's `resize` argument); short, low-LR SGD with cosine decay and augmentation.
    # The exact recipe is not in the paper: this one is ours.
    "finetune-original": {"optimizer": "sgd", "lr": 0.01, "momentum": 0.9, "weight_decay": 5e-4, "epochs": 5,
                          "batch_size": 128, "schedule": "cosine", "augment": True},
}


def train(model: nn.Module, dataset: Dataset, recipe: Recipe | None = None, *,
          counter: Counter | None = None, description: str = "train", **overrides) -> nn.Module:
    """Train ``model`` in place on ``dataset`` with ``recipe``; returns the model."""
    recipe = (recipe or Recipe()).replace(**overrides) if overrides else (recipe or Recipe())
    generator = seed_everything(recipe.seed)
    optimizer = make_optimizer(model.parameters(), recipe.optimizer, recipe.lr, recipe.momentum, recipe.weight_decay)
    smoothing = recipe.label_smoothing

    def step(m, x, y):
        return F.cross_entropy(forward(m, x), y, label_smoothing=smoothing)

    fit(model, dataset, step, optimizer, epochs=recipe.epochs, batch_size=recipe.batch_size, generator=generator,
        schedule=recipe.schedule, augment=recipe.augment, augment_epochs=recipe.augment_epochs, counter=counter,
        description=description)
    model.eval()
    return model


@torch.no_grad()
def predict_logits(model: nn.Module, dataset: Dataset, batch_size: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and labels of every sample, in order, without gradients (model in eval mode).

    With a distributed context, each rank evaluates its contiguous part of ``dataset``
    and every rank receives all the logits (all-gathered, in order).
    """
    was_training = model.training
    model.eval()
    device = model_device(model)
    ctx = _distributed.active()
    gather = ctx is not None and ctx.distributed and len(dataset) >= ctx.world_size
    part = _distributed.shard_dataset(dataset) if gather else dataset
    logits, labels = [], []
    with contextlib.nullcontext() if ctx is None else ctx.autocast():
        for x, y in iterate_batches(part, batch_size, device=device):
            logits.append(forward(model, x).float())  # kept on the device: one copy to the host at the end
            labels.append(y)
    model.train(was_training)
    if not logits:  # an empty dataset (a gathered pass gives every rank at least one sample)
        return torch.zeros(0, 0), torch.zeros(0, dtype=torch.long)
    logits, labels = torch.cat(logits).cpu(), torch.cat(labels).cpu()  # one copy to the host per pass
    if gather:
        logits, labels = ctx.all_gather_cat(logits), ctx.all_gather_cat(labels)
    check_labels_in_range(labels, logits.shape[1])
    return logits, labels


def check_labels_in_range(labels: torch.Tensor, num_outputs: int, what: str = "The dataset") -> None:
    """Labels must index the model's outputs (0 .. num_outputs - 1)."""
    if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= num_outputs):
        bad = int(labels.max()) if int(labels.max()) >= num_outputs else int(labels.min())
        raise UnlearnkitError(f"{what} has label {bad}, outside the model's {num_outputs} outputs "
                              f"(labels must be 0..{num_outputs - 1}).")


def accuracy(model: nn.Module, dataset: Dataset | None, batch_size: int = 512) -> float:
    """Top-1 accuracy in percent; an empty or missing dataset is an error (there is nothing to measure)."""
    if dataset is None or len(dataset) == 0:
        what = "None" if dataset is None else "an empty dataset"
        raise UnlearnkitError(f"accuracy needs a non-empty dataset; got {what}.")
    logits, labels = predict_logits(model, dataset, batch_size)
    return 100.0 * (logits.argmax(1) == labels).float().mean().item()
