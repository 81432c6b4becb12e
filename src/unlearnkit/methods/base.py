"""Method registry, the config base classes, and the ``Method`` contract.

A method is a config dataclass plus a small class registered by name::

    @register_method("finetune", config=FinetuneConfig, description="...")
    class Finetune(Method):
        def _unlearn(self, model, retain, forget):
            ...              # train ``model`` (a private copy on the right device)
            return model

The base class handles everything around ``_unlearn``: copying the input model
(it is never modified unless ``inplace=True``), seeding, the device, timing,
peak memory, trainable parameter and sample-pass counts, the divergence guard
and the check that a plain module of the input's class comes back.

Optional hooks: ``_prepare(model, retain, forget)`` runs before unlearning and
is timed separately (masks, teacher copies, caches); ``_trainable_parameters(model)``
overrides the default count of parameters with ``requires_grad``.
"""

from __future__ import annotations

import copy
import fnmatch
import inspect
from dataclasses import dataclass, field as dc_field
from typing import Any, ClassVar, Literal

import torch
import torch.nn as nn
from torch.utils.data import Dataset

from ..config import Config, Interval, Options, field
from ..data.checks import check_unlearning_data
from ..errors import DivergenceError, UnlearnkitError, unknown_name_error
from ..training import Counter, StepFn, fit, make_optimizer
from ..components.weight_masks import ParamMask
from ..utils import PeakMemory, count_parameters, environment_info, resolve_device, seed_everything, timer


@dataclass(kw_only=True)
class MethodConfig(Config):
    """Base of every method's config; ``to_dict()`` carries the method name."""

    method: ClassVar[str] = ""

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, **super().to_dict()}


@dataclass(kw_only=True)
class TrainingConfig(MethodConfig):
    """Fields shared by the methods that train with an optimizer."""

    epochs: int = field(5, "Passes over the training data of the method.")
    lr: float = field(1e-3, "Learning rate.")
    batch_size: int = field(128, "Batch size.")
    optimizer: Literal["sgd", "adam", "adamw"] = field("adam", "Optimizer.")
    momentum: float = field(0.9, "SGD momentum (ignored by Adam).")
    weight_decay: float = field(0.0, "Weight decay.")
    schedule: Literal["constant", "cosine", "step"] = field("constant", "Per-step LR schedule.")
    augment: bool = field(False, "Random crop + flip on 32x32 images while training.")

    constraints = {
        "epochs": [Interval(int, 1, None)],
        "lr": [Interval(float, 0, None, closed="neither")],
        "batch_size": [Interval(int, 1, None)],
        "optimizer": [Options("sgd", "adam", "adamw")],
        "momentum": [Interval(float, 0, 1, closed="left")],
        "weight_decay": [Interval(float, 0, None, closed="left")],
        "schedule": [Options("constant", "cosine", "step")],
        "augment": [bool],
    }


@dataclass
class UnlearnResult:
    """What ``unlearn`` returns: the model and the facts about the run."""

    model: nn.Module
    method: str
    config: dict[str, Any]
    seconds: float
    prepare_seconds: float
    peak_memory_mb: float
    peak_cuda_memory_mb: float
    trainable_params: int
    total_params: int
    sample_passes: int
    steps: int
    seed: int
    device: str
    info: dict[str, Any] = dc_field(default_factory=dict)
    environment: dict[str, Any] = dc_field(default_factory=environment_info)

    def to_dict(self) -> dict[str, Any]:
        """Everything but the model, JSON-ready."""
        return {k: v for k, v in self.__dict__.items() if k != "model"}


@dataclass(frozen=True)
class MethodSpec:
    name: str
    method_class: type
    config_class: type
    description: str


_METHODS: dict[str, MethodSpec] = {}


def register_method(name: str, *, config: type[MethodConfig], description: str):
    """Class decorator: register a ``Method`` subclass under a lowercase snake_case name."""
    if not name.replace("_", "").isalnum() or name.lower() != name:
        raise ValueError(f"method names are lowercase snake_case; got {name!r}")

    def wrap(cls):
        if name in _METHODS:
            raise KeyError(f"method {name!r} is already registered")
        cls.name = name
        cls.config_class = config
        config.method = name
        _METHODS[name] = MethodSpec(name, cls, config, description)
        return cls

    return wrap


def list_methods(pattern: str = "*") -> list[str]:
    """Registered method names matching a shell-style pattern, e.g. ``list_methods("*lora*")``."""
    return sorted(n for n in _METHODS if fnmatch.fnmatch(n, pattern))


def method_spec(name: str) -> MethodSpec:
    if name not in _METHODS:
        raise unknown_name_error("method", name, _METHODS)
    return _METHODS[name]


def get_method(name: str) -> type:
    return method_spec(name).method_class


def make_config(name: str, config: MethodConfig | dict | None = None, **overrides) -> MethodConfig:
    """The method's config from defaults, a dict or a config, with overrides; unknown keys are an error."""
    spec = method_spec(name)
    if isinstance(config, MethodConfig):
        if not isinstance(config, spec.config_class):
            raise UnlearnkitError(f"Method {name!r} needs a {spec.config_class.__name__}, got {type(config).__name__}.")
        return config.replace(**overrides) if overrides else config
    values = dict(config or {})
    values.pop("method", None)
    values.update({k: v for k, v in overrides.items() if v is not None})
    return spec.config_class.from_dict(values)


def config_from_dict(values: dict[str, Any]) -> MethodConfig:
    if "method" not in values:
        raise UnlearnkitError("A method config dict needs a 'method' key.")
    return make_config(values["method"], values)


def method_options(name: str) -> tuple[str, ...]:
    """Keyword-only options of a method's constructor (``device``, ``seed``, ``inplace`` and its own,
    e.g. retrain's ``model_factory`` or pgu's ``check_data``): objects, not config fields."""
    names: list[str] = []
    for klass in get_method(name).__mro__:  # a subclass adds options and passes the rest on with **kwargs
        init = klass.__dict__.get("__init__")
        if init is None or klass is object:
            continue
        names += [p.name for p in inspect.signature(init).parameters.values()
                  if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name not in names]
    return tuple(names)


def create_method(name: str, model: nn.Module, config: MethodConfig | dict | None = None, **kwargs) -> "Method":
    """Instantiate a registered method; ``kwargs`` split into the method's options and config overrides."""
    options = method_options(name)
    run_options = {k: kwargs.pop(k) for k in list(kwargs) if k in options}
    return get_method(name)(model, make_config(name, config, **kwargs), **run_options)


class Method:
    """Base class: ``Method(model, config).prepare(retain, forget).unlearn()`` or ``.fit(retain, forget)``."""

    name: ClassVar[str] = ""
    config_class: ClassVar[type[MethodConfig]] = MethodConfig
    needs_retain: ClassVar[bool] = True
    needs_forget: ClassVar[bool] = True

    def __init__(self, model: nn.Module, config: MethodConfig | None = None, *, device: str | torch.device = "auto",
                 seed: int = 0, inplace: bool = False):
        if not isinstance(model, nn.Module):
            raise UnlearnkitError(f"model must be a torch.nn.Module; got {type(model).__name__}.")
        self.original = model
        self.config = config if config is not None else self.config_class()
        if not isinstance(self.config, self.config_class):
            raise UnlearnkitError(f"{type(self).__name__} needs a {self.config_class.__name__}.")
        self.device = resolve_device(device)
        self.seed = int(seed)
        self.inplace = inplace
        self.counter = Counter()
        self.info: dict[str, Any] = {}
        self._work: nn.Module | None = None
        self._prepare_seconds = 0.0
        self._prepare_peak = 0.0

    # ---- hooks for subclasses -------------------------------------------------------------
    def _prepare(self, model: nn.Module, retain: Dataset | None, forget: Dataset | None) -> None:
        """Build masks, teachers or caches before unlearning (timed separately)."""

    def _unlearn(self, model: nn.Module, retain: Dataset | None, forget: Dataset | None) -> nn.Module:
        raise NotImplementedError

    def _trainable_parameters(self, model: nn.Module) -> int:
        return count_parameters(model, trainable_only=True)

    # ---- helpers for subclasses -----------------------------------------------------------
    def train_epochs(self, model: nn.Module, dataset: Dataset, step_fn: StepFn, *, params=None,
                     mask: ParamMask | None = None, epochs: int | None = None, lr: float | None = None,
                     description: str | None = None, **kwargs) -> None:
        """Run the shared loop with this method's optimizer settings (``TrainingConfig`` fields)."""
        c = self.config
        optimizer = make_optimizer(model.parameters() if params is None else params, c.optimizer,
                                   c.lr if lr is None else lr, c.momentum, c.weight_decay)
        fit(model, dataset, step_fn, optimizer, epochs=c.epochs if epochs is None else epochs,
            batch_size=c.batch_size, generator=self.generator, schedule=c.schedule, augment=c.augment,
            mask=mask, counter=self.counter, description=description or self.name, **kwargs)

    # ---- the verbs -------------------------------------------------------------------------
    def prepare(self, retain: Dataset | None, forget: Dataset | None) -> "Method":
        self._check_data(retain, forget)
        self.generator = seed_everything(self.seed)
        self._retain, self._forget = retain, forget
        with timer() as t, PeakMemory(self.device) as mem:
            self._work = copy.deepcopy(self.original).to(self.device)
            self._prepare(self._work, retain, forget)
        self._prepare_seconds = t["seconds"]
        self._prepare_peak = mem.cpu_mb
        return self

    def unlearn(self) -> UnlearnResult:
        if self._work is None:
            raise UnlearnkitError(f"{type(self).__name__}.unlearn() needs prepare(retain, forget) first.")
        model, self._work = self._work, None
        trainable = self._trainable_parameters(model)
        with timer() as t, PeakMemory(self.device) as mem:
            model = self._unlearn(model, self._retain, self._forget)
        self._check_output(model)
        model.eval()
        for p in model.parameters():
            p.requires_grad_(True)
        if self.inplace:
            self.original.load_state_dict(model.state_dict())
            model = self.original
        return UnlearnResult(
            model=model, method=self.name, config=self.config.to_dict(),
            seconds=t["seconds"] + self._prepare_seconds, prepare_seconds=self._prepare_seconds,
            peak_memory_mb=max(mem.cpu_mb, self._prepare_peak), peak_cuda_memory_mb=mem.cuda_mb,
            trainable_params=trainable, total_params=count_parameters(model), sample_passes=self.counter.sample_passes,
            steps=self.counter.steps, seed=self.seed, device=str(self.device), info=dict(self.info))

    def fit(self, retain: Dataset | None, forget: Dataset | None) -> UnlearnResult:
        return self.prepare(retain, forget).unlearn()

    # ---- checks ------------------------------------------------------------------------------
    def _check_data(self, retain, forget) -> None:
        for what, data, needed in (("retain", retain, self.needs_retain), ("forget", forget, self.needs_forget)):
            if data is None:
                if needed:
                    raise UnlearnkitError(f"Method {self.name!r} needs a {what} dataset; got None.")
                continue
            if not hasattr(data, "__len__") or not hasattr(data, "__getitem__"):
                raise UnlearnkitError(f"The {what} set must be a torch Dataset of (x, y); got {type(data).__name__}.")
            if len(data) == 0 and needed:
                raise UnlearnkitError(f"The {what} set is empty.")
        check_unlearning_data(self.original, retain, forget)

    def _check_output(self, model: nn.Module) -> None:
        if type(model) is not type(self.original):
            raise RuntimeError(f"{self.name} returned a {type(model).__name__}, not a {type(self.original).__name__}")
        for name, p in model.named_parameters():
            if not torch.isfinite(p).all():
                raise DivergenceError(f"{self.name}: parameter {name!r} became non-finite (diverged); lower the "
                                      "learning rate. The input model was left unchanged.")
