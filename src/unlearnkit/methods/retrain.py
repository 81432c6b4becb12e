"""Retrain from scratch on the retain set: the gold standard every method is compared with.

Starts from a fresh random initialisation (never the original's weights) and
follows the original's training recipe; the defaults equal ``Recipe()``'s, and
the CLI and benchmark pass the recipe stored with the original checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..config import Interval, Options, field
from ..models import fresh_copy
from ..training import Recipe, train
from .base import Method, MethodConfig, register_method

_RECIPE = Recipe()


@dataclass(kw_only=True)
class RetrainConfig(MethodConfig):
    """The training recipe of the original model (see ``unlearnkit.training.Recipe``)."""

    optimizer: Literal["sgd", "adam", "adamw"] = field(_RECIPE.optimizer, "Optimizer.")
    lr: float = field(_RECIPE.lr, "Peak learning rate.")
    momentum: float = field(_RECIPE.momentum, "SGD momentum.")
    weight_decay: float = field(_RECIPE.weight_decay, "Weight decay.")
    epochs: int = field(_RECIPE.epochs, "Training epochs.")
    batch_size: int = field(_RECIPE.batch_size, "Batch size.")
    schedule: Literal["constant", "cosine", "step"] = field(_RECIPE.schedule, "Per-step LR schedule.")
    augment: bool = field(_RECIPE.augment, "Random crop + flip augmentation.")
    label_smoothing: float = field(_RECIPE.label_smoothing, "Label smoothing.")

    constraints = {k: v for k, v in Recipe.constraints.items() if k != "seed"}

    @classmethod
    def from_recipe(cls, recipe: Recipe) -> "RetrainConfig":
        values = recipe.to_dict()
        values.pop("seed")
        return cls(**values)

    def to_recipe(self, seed: int) -> Recipe:
        values = {k: v for k, v in self.to_dict().items() if k != "method"}
        return Recipe(seed=seed, **values)


@register_method("retrain", config=RetrainConfig,
                 description="Train a fresh initialisation on the retain set only (the gold standard).")
class Retrain(Method):
    needs_forget = False

    def _unlearn(self, model, retain, forget):
        fresh = fresh_copy(model, seed=self.seed).to(self.device)
        del model
        return train(fresh, retain, self.config.to_recipe(self.seed), counter=self.counter, description="retrain")
