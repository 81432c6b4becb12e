"""Unlearning methods, registered by name. Each module registers itself on import."""

from .base import (Method, MethodConfig, TrainingConfig, UnlearnResult, config_from_dict, create_method,
                   get_method, list_methods, make_config, method_options, method_spec, register_method)

# one module per method; importing registers it
from . import finetune, retrain  # noqa: F401,E402
from . import prune_finetune, omp, lora, prune_lora, rfa_lora  # noqa: F401,E402
from . import pgu  # noqa: F401,E402
from . import gradient_ascent, random_label, l1_sparse, salun, scrub, ssd  # noqa: F401,E402

__all__ = ["Method", "MethodConfig", "TrainingConfig", "UnlearnResult", "config_from_dict", "create_method",
           "get_method", "list_methods", "make_config", "method_options", "method_spec", "register_method"]
