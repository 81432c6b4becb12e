"""Equal budgets: each training method's epochs (or steps) derived from one sample-pass budget.

A benchmark's ``budget`` is ``{sample_passes: N}`` or ``{retrain_fraction: F}`` (F times the
retrain oracle's forward + backward passes, ``retrain.epochs x |D_r|``, of the same request). Per
method, ``plan`` says which knob the budget sets and how many f+b passes one unit of it costs on a
request with ``n_retain`` and ``n_forget`` samples (plus a fixed part, e.g. SalUn's saliency pass);
the knob is set to the value whose planned passes are nearest the budget. Methods without a knob
(SSD: no training) and methods whose config sets the knob itself keep their own settings; the
record says what each got, and the report shows the passes each used as a share of the budget.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from ..errors import InvalidConfigError

# method -> (knob, passes per unit of the knob, fixed passes); n_r / n_f: retain / forget sizes.
PlanFn = Callable[[Any, int, int], tuple[str, float, float]]


def _retain_epochs(c, n_r, n_f):
    return "epochs", n_r, 0


def _lora(c, n_r, n_f):  # a forget term draws one forget batch per retain batch
    return "epochs", n_r * (1 if getattr(c, "forget_loss", "none") == "none" else 2), 0


def _random_label(c, n_r, n_f):
    return "epochs", n_f + (n_r if c.include_retain else 0), 0


def _salun(c, n_r, n_f):  # plus the saliency pass over the forget set
    return "epochs", n_f + (n_r if c.include_retain else 0), n_f


def _scrub(c, n_r, n_f):  # a min-phase over D_r per epoch, a max-phase over D_f in the first max_epochs
    return "epochs", n_r, c.max_epochs * n_f


def _rfa_lora(c, n_r, n_f):  # each retain batch is joined by a forget batch (forget_batch_size)
    from ..methods.rfa_lora import forget_samples_per_epoch

    return "epochs", n_r + forget_samples_per_epoch(c, n_r, n_f), 0


PLANS: dict[str, PlanFn] = {
    "finetune": _retain_epochs, "retrain": _retain_epochs, "l1_sparse": _retain_epochs,
    "prune_finetune": _retain_epochs, "omp": _retain_epochs,
    "gradient_ascent": lambda c, n_r, n_f: ("epochs", n_f, 0),
    "random_label": _random_label, "salun": _salun, "scrub": _scrub,
    "lora": _lora, "prune_lora": _lora,
    "rfa_lora": _rfa_lora,
    "pgu": lambda c, n_r, n_f: ("max_epochs", n_f, 0),  # a cap in forget passes: its stopping rule may end it sooner
}
NO_TRAINING = {"ssd": "no training: importance passes over D_f and D, then a weight dampening"}


def budget_target(budget: dict, retrain_config, n_retain: int) -> int | None:
    """The budget in f+b sample passes for a request (None: no budget)."""
    if not budget:
        return None
    if "sample_passes" in budget:
        return int(budget["sample_passes"])
    return int(round(float(budget["retrain_fraction"]) * retrain_config.epochs * n_retain))


def check_budget(budget: Any) -> None:
    if budget in (None, {}):
        return
    allowed = "{sample_passes: N} (N >= 1) or {retrain_fraction: F} (F > 0)"
    if not isinstance(budget, dict) or len(budget) != 1 or not set(budget) <= {"sample_passes", "retrain_fraction"}:
        raise InvalidConfigError(f"The 'budget' of a benchmark must be {allowed}; got {budget!r}.")
    (key, value), = budget.items()
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not number or value <= 0 or (key == "sample_passes" and (int(value) != value or value < 1)):
        raise InvalidConfigError(f"The 'budget' of a benchmark must be {allowed}; got {budget!r}.")


@dataclass
class BudgetPlan:
    """What the budget did to one method's config on one request."""

    target: int
    knob: str | None
    value: int | None
    planned_passes: float | None
    how: str  # "derived", "set by the config", "not budgeted: ..."

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def apply_budget(method: str, config, overrides: dict, target: int, n_retain: int, n_forget: int):
    """(config with the budget's knob set, BudgetPlan)."""
    if method in NO_TRAINING or method not in PLANS:
        why = NO_TRAINING.get(method, "no budget rule for this method")
        return config, BudgetPlan(target, None, None, None, f"not budgeted: {why}")
    knob, per_unit, fixed = PLANS[method](config, n_retain, n_forget)
    if knob in overrides:
        value = getattr(config, knob)
        return config, BudgetPlan(target, knob, value, fixed + per_unit * value, "set by the config")
    value = max(1, round((target - fixed) / max(per_unit, 1)))
    changes = {knob: value}
    if method == "scrub" and config.max_epochs > value:  # the max-phase epochs are among the epochs
        changes["max_epochs"] = value
    config = config.replace(**changes)
    _, per_unit, fixed = PLANS[method](config, n_retain, n_forget)
    return config, BudgetPlan(target, knob, value, fixed + per_unit * value, "derived")
