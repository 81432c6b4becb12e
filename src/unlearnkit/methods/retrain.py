"""Retrain from scratch on the retain set: the gold standard every method is compared with.

Starts from what the original started from, never from the original's weights:
a fresh random initialisation (``fresh_copy``: every module's ``reset_parameters``,
drawn with the run's seed), or the model ``model_factory()`` builds, e.g. the
pretrained backbone the original was fine-tuned from, with a freshly drawn head.
The CLI and the benchmark pass such a factory for checkpoints created with
an ``init`` (our pretrained weights, head freshly drawn; ``unlearnkit.pretraining``),
``pretrained=`` or ``weights=``. Training follows the original's recipe; the
defaults equal ``Recipe()``'s, and the CLI and benchmark pass the recipe stored
with the original checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal

import torch
import torch.nn as nn

from ..config import Interval, Options, field
from ..errors import UnlearnkitError
from ..models import fresh_copy
from ..training import Recipe, check_augment_epochs, train
from .base import Method, MethodConfig, register_method

_RECIPE = Recipe()


@dataclass(kw_only=True)
class RetrainConfig(MethodConfig):
    """The training recipe of the original model (see ``unlearnkit.training.Recipe``)."""

    added_fields = {"augment_epochs": (None,)}  # None: every epoch augmented, as before the field

    optimizer: Literal["sgd", "adam", "adamw"] = field(_RECIPE.optimizer, "Optimizer.")
    lr: float = field(_RECIPE.lr, "Peak learning rate.")
    momentum: float = field(_RECIPE.momentum, "SGD momentum.")
    weight_decay: float = field(_RECIPE.weight_decay, "Weight decay.")
    epochs: int = field(_RECIPE.epochs, "Training epochs.")
    batch_size: int = field(_RECIPE.batch_size, "Batch size.")
    schedule: Literal["constant", "cosine", "step"] = field(_RECIPE.schedule, "Per-step LR schedule.")
    augment: bool = field(_RECIPE.augment, "Random crop + flip augmentation.")
    augment_epochs: int | None = field(_RECIPE.augment_epochs, "With augment: only the first this many epochs "
                                                               "augment; None = every epoch.")
    label_smoothing: float = field(_RECIPE.label_smoothing, "Label smoothing.")

    constraints = {k: v for k, v in Recipe.constraints.items() if k != "seed"}

    def _check_consistency(self) -> None:
        check_augment_epochs(type(self).__name__, self.augment, self.augment_epochs, self.epochs)

    @classmethod
    def from_recipe(cls, recipe: Recipe) -> "RetrainConfig":
        values = recipe.to_dict()
        values.pop("seed")
        return cls(**values)

    def to_recipe(self, seed: int) -> Recipe:
        values = {k: v for k, v in self.to_dict().items() if k != "method"}
        return Recipe(seed=seed, **values)


@register_method("retrain", config=RetrainConfig,
                 description="Train on the retain set only from a fresh init (or the original's pretrained start): the gold standard.")
class Retrain(Method):
    needs_forget = False

    def __init__(self, model: nn.Module, config: RetrainConfig | None = None, *,
                 model_factory: Callable[[], nn.Module] | None = None, **kwargs):
        super().__init__(model, config, **kwargs)
        if model_factory is not None and not callable(model_factory):
            raise UnlearnkitError(f"model_factory must be a callable returning a fresh nn.Module; "
                                  f"got {type(model_factory).__name__}.")
        self.model_factory = model_factory

    def initial_model(self, model: nn.Module) -> nn.Module:
        """The starting point: ``model_factory()`` under the run's seed, else a fresh draw of ``model``."""
        if self.model_factory is None:
            return fresh_copy(model, seed=self.seed)
        torch.manual_seed(self.seed)
        fresh = self.model_factory()
        if not isinstance(fresh, nn.Module):
            raise UnlearnkitError(f"model_factory returned {type(fresh).__name__}, not an nn.Module.")
        ours, theirs = model.state_dict(), fresh.state_dict()
        wrong = [k for k in ours if k not in theirs or theirs[k].shape != ours[k].shape]
        if wrong or len(ours) != len(theirs):
            detail = f"{wrong[0]!r} differs" if wrong else f"{len(theirs)} tensors instead of {len(ours)}"
            raise UnlearnkitError(f"model_factory built a model of another architecture than the input ({detail}).")
        return fresh

    def _unlearn(self, model, retain, forget):
        fresh = self.initial_model(model).to(self.device)
        del model
        return train(fresh, retain, self.config.to_recipe(self.seed), counter=self.counter, description="retrain")
