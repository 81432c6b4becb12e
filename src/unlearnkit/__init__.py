"""unlearnkit: machine unlearning for trained PyTorch classifiers."""

__version__ = "0.1.0"

from .api import unlearn
from .audit import audit
from .checkpoint import load_checkpoint, load_weights, save_checkpoint
from .components.compaction import CompactResult, compact
from .data import load_dataset, make_unlearning_data, select_forget
from .errors import DivergenceError, InvalidConfigError, UnlearnkitError
from .metrics import Evaluation, evaluate
from .methods import create_method, get_method, list_methods, make_config, register_method
from .models import create_model, list_models
from .components.pruning import PruningResult, prune
from .training import Recipe, accuracy, train
from .components import gradient_projection as pgu  # noqa: E402  (kept name: unlearnkit.pgu.prepare, PGUCache)

__all__ = [
    "DivergenceError", "Evaluation", "InvalidConfigError", "Recipe", "UnlearnkitError", "accuracy", "create_method",
    "create_model", "evaluate", "get_method", "list_methods", "list_models", "load_checkpoint", "load_dataset",
    "load_weights", "make_config", "make_unlearning_data", "register_method", "save_checkpoint",
    "select_forget", "train", "unlearn", "prune", "PruningResult", "compact", "CompactResult",
]
