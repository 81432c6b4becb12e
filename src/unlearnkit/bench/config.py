"""Benchmark configs: one YAML (or TOML) file describes a whole comparison.

Example (the shipped ``smoke`` config, ``src/unlearnkit/bench/configs/smoke.yaml``)::

    name: smoke
    dataset: digits
    dataset_args: {}
    model: cnn
    model_kwargs: {width: 16}
    recipe: {epochs: 15, lr: 0.05, batch_size: 64}
    scenarios: ["class:3", "random:0.1"]
    methods:
      finetune: {lr: 0.01, epochs: 5}
      retrain: {}
    seeds: [0]

``variants`` (optional) runs several benchmarks from one file, e.g. two models on the
same data: a mapping of label to field overrides (fields absent from a variant are the
file's). Each variant is a whole benchmark written to ``OUT/<label>/`` (originals and
oracles cached in the shared ``OUT/cache``) and one report covers all of them::

    model: resnet20
    variants:
      resnet20: {}
      vit_tiny: {model: vit_tiny, recipe: {optimizer: adamw, lr: 0.001}, scenarios: ["class:3"]}

``methods`` is a mapping of method name to config overrides (or a list of names,
with ``{name: overrides}`` items allowed). Retrain's config defaults to the
original's recipe; the retrain oracle (the reference of every gap metric) uses
the ``retrain`` entry's overrides, or none. Unknown fields, datasets, models and
scenario specs are one-line errors when the file is loaded; a method that is not
registered is not: it is recorded as an error in the results and the suite goes on
(so a config can list methods that land later).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import Config, Interval, field
from ..errors import InvalidConfigError, UnlearnkitError, unknown_name_error
from ..utils import stable_hash
from .budget import check_budget
from .tuning import check_tuning

SCENARIO_RE = re.compile(r"^(class:\d+(,\d+)*|random:\d*\.\d+)$")
VARIANT_LABEL_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
RESERVED_LABELS = ("cache", "results", "report_files")


def valid_scenario(spec) -> bool:
    if not isinstance(spec, str) or not SCENARIO_RE.match(spec):
        return False
    return not spec.startswith("random:") or 0 < float(spec.split(":")[1]) < 1
CONFIG_SUFFIXES = (".yaml", ".yml", ".toml", ".json")


@dataclass(kw_only=True)
class BenchConfig(Config):
    """What a benchmark runs: data, model, the original's recipe, scenarios, methods, seeds."""

    name: str = field("benchmark", "Name shown in the report.")
    dataset: str = field("digits", "A built-in dataset: digits, mnist or cifar10.")
    dataset_args: dict = field({}, "Keyword arguments of the dataset loader, e.g. {subset: 10000}.")
    data_root: str | None = field(None, "Folder (or file) holding the dataset; default $UNLEARNKIT_DATA.")
    model: str = field("cnn", "A registered model name.")
    model_kwargs: dict = field({}, "Keyword arguments of the model factory, e.g. {width: 16}.")
    init: dict = field({}, "Pretrained start of the original and of the retrain oracle: {weights: FILE or "
                           "unlearnkit:NAME.safetensors (from `unlearnkit pretrain`), reset_head: true (default: "
                           "every tensor but the classifier head's is loaded; the head is freshly drawn)}.")
    recipe: dict = field({}, "The original's training recipe (fields of unlearnkit.Recipe, seed excluded).")
    scenarios: list = field(["class:3", "random:0.1"], "Forget specs: class:K[,K] or random:F.")
    methods: dict = field({"finetune": {}, "retrain": {}}, "Method name -> config overrides.")
    seeds: list = field([0], "Seeds; each one trains its own original and oracles.")
    test_subset: int | None = field(None, "Evaluate on a seeded class-balanced subset of this many test images.")
    heldout: int | None = field(None, "Carve this many test images (class-balanced, fixed seed) into a held-out "
                                      "validation set before test_subset is taken: disjoint from the training data "
                                      "and from TA's images; given to methods with a check_data option (PGU's "
                                      "stopping rule).")
    device: str = field("auto", "cpu, cuda, cuda:N or auto.")
    eval_batch_size: int = field(512, "Batch size of the evaluation passes.")
    data_on_device: bool = field(False, "Keep the dataset's images on the accelerator (GPU runs: no per-batch "
                                        "host copy of images); ignored on the CPU.")
    channels_last: bool = field(False, "Feed image batches in channels-last layout (faster convolutions with "
                                       "bf16 on GPUs).")
    budget: dict = field({}, "Equal budgets: {sample_passes: N} or {retrain_fraction: F}; each training method's "
                             "epochs (steps) derived from it, unless its overrides set them (see bench/budget.py).")
    tuning: dict = field({}, "Defaults and tuned: {seeds: [validation seeds], scenarios: {reported: validation}, "
                             "grid: {method: {field: [values]}}}; see bench/tuning.py.")
    variants: dict = field({}, "Label -> field overrides (e.g. another model, recipe and methods); when set, each "
                               "variant runs into OUT/<label>/ with a shared cache and one report covers them all.")

    constraints = {
        "name": [str], "dataset": [str], "dataset_args": [dict], "data_root": [str, None], "model": [str],
        "model_kwargs": [dict], "init": [dict], "recipe": [dict], "scenarios": [list], "methods": [dict],
        "seeds": [list],
        "device": [str], "eval_batch_size": [Interval(int, 1, None)], "test_subset": [Interval(int, 1, None), None],
        "heldout": [Interval(int, 1, None), None],
        "variants": [dict], "data_on_device": [bool], "channels_last": [bool], "budget": [dict],
        "tuning": [dict],
    }

    def __post_init__(self) -> None:
        self.methods = _normalise_methods(self.methods)
        if isinstance(self.scenarios, tuple):
            self.scenarios = list(self.scenarios)
        if isinstance(self.seeds, tuple):
            self.seeds = list(self.seeds)
        super().__post_init__()

    def _check_consistency(self) -> None:
        from ..data import list_datasets
        from ..models import list_models
        from ..training import Recipe

        if self.dataset not in list_datasets():
            raise unknown_name_error("dataset", self.dataset, list_datasets())
        if ":" not in self.model and self.model not in list_models():
            raise unknown_name_error("model", self.model, list_models())
        if "seed" in self.recipe:
            raise InvalidConfigError("The 'recipe' of a benchmark must not set 'seed'; list seeds under 'seeds'.")
        Recipe.from_dict(self.recipe)  # one-line error on unknown or bad fields
        self._check_init()
        if not self.scenarios:
            raise InvalidConfigError("The 'scenarios' list of a benchmark is empty; e.g. ['class:3', 'random:0.1'].")
        for s in self.scenarios:
            if not valid_scenario(s):
                raise InvalidConfigError(
                    f"Scenario {s!r} is not a forget spec; allowed: class:K[,K...] or random:F with 0 < F < 1.")
        if len(set(self.scenarios)) != len(self.scenarios):
            raise InvalidConfigError(f"The 'scenarios' list has duplicates: {self.scenarios}.")
        if not self.seeds or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in self.seeds):
            raise InvalidConfigError(f"The 'seeds' of a benchmark must be a non-empty list of ints >= 0; got {self.seeds!r}.")
        if len(set(self.seeds)) != len(self.seeds):
            raise InvalidConfigError(f"The 'seeds' list has duplicates: {self.seeds}.")
        if not self.methods:
            raise InvalidConfigError("The 'methods' of a benchmark are empty; e.g. {finetune: {}, retrain: {}}.")
        for method, overrides in self.methods.items():
            self.method_config(method, overrides_only=True)
        check_budget(self.budget)
        check_tuning(self)
        self.variant_configs()  # each variant is validated as a whole config

    def _check_init(self) -> None:
        from ..pretraining import check_init

        try:
            check_init(self.init)
        except UnlearnkitError as e:
            raise InvalidConfigError(str(e)) from None
        if self.init and "weights" in self.model_kwargs:
            raise InvalidConfigError("Give the pretrained weights once: as 'init' (head reset, recorded) or as "
                                     "model_kwargs 'weights', not both.")

    def init_record(self) -> dict[str, Any] | None:
        """The resolved init (with its file's sha256), or None; the file is read on first use, not on load."""
        if not self.init:
            return None
        if getattr(self, "_init_record", None) is None:
            from ..pretraining import init_record

            self._init_record = init_record(self.init, dataset=self.dataset, dataset_args=self.dataset_args,
                                            model=self.model, model_kwargs=self.model_kwargs)
        return self._init_record

    def variant_configs(self) -> dict[str, "BenchConfig"]:
        """Label -> the config of that variant (shared fields, then its overrides); empty without variants."""
        out: dict[str, BenchConfig] = {}
        base = {k: v for k, v in self.to_dict().items() if k != "variants"}
        for label, overrides in self.variants.items():
            if not isinstance(label, str) or not VARIANT_LABEL_RE.match(label) or label in RESERVED_LABELS:
                raise InvalidConfigError(f"Variant label {label!r} must be letters, digits, '_', '-' or '.', start "
                                         f"with a letter or digit and not be {', '.join(RESERVED_LABELS)} "
                                         "(it names the variant's output folder).")
            if not isinstance(overrides, dict):
                raise InvalidConfigError(f"The overrides of variant {label!r} must be a mapping of config fields; "
                                         f"got {overrides!r}.")
            if "variants" in overrides or "name" in overrides:
                raise InvalidConfigError(f"Variant {label!r} cannot set 'variants' or 'name'.")
            try:
                out[label] = BenchConfig.from_dict({**base, **overrides, "name": f"{self.name}/{label}"})
            except UnlearnkitError as e:
                raise InvalidConfigError(f"Variant {label!r}: {e}") from None
        return out

    # ---------------------------------------------------------------------------------
    def method_config(self, method: str, meta: dict[str, Any] | None = None, *, overrides: dict | None = None,
                      overrides_only: bool = False):
        """The method's config (validated; ``overrides`` default: the config's for it); None when not registered."""
        from ..methods import list_methods
        from ..workflow import method_config_for

        if method not in list_methods():
            return None
        if overrides is None:
            overrides = self.methods.get(method, {})
        if meta is None:
            meta = {"recipe": self.recipe_for(0).to_dict()}
        try:
            return method_config_for(method, meta, overrides)
        except UnlearnkitError as e:
            raise InvalidConfigError(f"Benchmark method {method!r}: {e}") from None

    def recipe_for(self, seed: int):
        from ..training import Recipe

        return Recipe.from_dict({**self.recipe, "seed": seed})

    def config_hash(self) -> str:
        return stable_hash(self.to_dict())

    def original_key(self, seed: int) -> dict[str, Any]:
        """What determines an original model (its cache key is the hash of this)."""
        key = {"dataset": self.dataset, "dataset_args": self.dataset_args, "model": self.model,
               "model_kwargs": self.model_kwargs, "recipe": self.recipe_for(seed).key_dict(), "seed": seed}
        init = self.init_record()
        if init is not None:  # only when set: originals trained without one keep their keys
            key["init"] = {"sha256": init["sha256"], "reset_head": init["reset_head"]}
        return key


def _normalise_methods(methods: Any) -> dict[str, dict]:
    if methods is None:
        return {}
    if isinstance(methods, (list, tuple)):
        out: dict[str, dict] = {}
        for item in methods:
            if isinstance(item, str):
                out[item] = {}
            elif isinstance(item, dict) and len(item) == 1:
                (name, overrides), = item.items()
                out[str(name)] = dict(overrides or {})
            else:
                raise InvalidConfigError(
                    f"Each entry of 'methods' must be a name or {{name: overrides}}; got {item!r}.")
        return out
    if isinstance(methods, dict):
        out = {}
        for name, overrides in methods.items():
            if overrides is not None and not isinstance(overrides, dict):
                raise InvalidConfigError(
                    f"The overrides of method {name!r} must be a mapping of config fields; got {overrides!r}.")
            out[str(name)] = dict(overrides or {})
        return out
    raise InvalidConfigError(f"The 'methods' of a benchmark must be a mapping or a list; got {methods!r}.")


SHIPPED_CONFIGS = Path(__file__).resolve().parent / "configs"


def builtin_config_dirs() -> list[Path]:
    """Where ``--config NAME`` looks: ./benchmarks (your own configs) first, then the shipped ones."""
    return [Path.cwd() / "benchmarks", SHIPPED_CONFIGS]


def shipped_configs() -> list[str]:
    """Names of the configs installed with the package (smoke, cifar10-cpu, ...)."""
    return sorted(p.stem for p in SHIPPED_CONFIGS.iterdir() if p.suffix in CONFIG_SUFFIXES)


def resolve_config_path(name_or_path: str | Path) -> Path:
    path = Path(name_or_path)
    if path.is_file():
        return path
    if path.suffix not in CONFIG_SUFFIXES:
        for d in builtin_config_dirs():
            for suffix in CONFIG_SUFFIXES:
                candidate = d / f"{name_or_path}{suffix}"
                if candidate.is_file():
                    return candidate
    known = sorted({p.stem for d in builtin_config_dirs() if d.is_dir() for p in d.iterdir()
                    if p.suffix in CONFIG_SUFFIXES})
    raise UnlearnkitError(
        f"Benchmark config {str(name_or_path)!r} not found; give a file path or one of: {', '.join(known) or '(none)'}.")


def _parse_error_line(error: Exception, text: str) -> str:
    """'line N: message' for a YAML, TOML or JSON parse error (each library puts the line elsewhere)."""
    message = str(error).strip()
    mark = getattr(error, "problem_mark", None) or getattr(error, "context_mark", None)  # PyYAML, 0-based
    line = mark.line + 1 if mark is not None else getattr(error, "lineno", None)  # json (1-based)
    if line is None:  # tomllib: "... (at line 3, column 5)"
        import re

        found = re.search(r"line (\d+)", message)
        line = int(found.group(1)) if found else None
    problem = getattr(error, "problem", None) or getattr(error, "msg", None) or (message.splitlines() or [""])[0]
    problem = str(problem).strip() or type(error).__name__
    if line is None:
        return problem
    source = text.splitlines()[line - 1].strip() if 0 < line <= len(text.splitlines()) else ""
    return f"line {line}: {problem}" + (f" (near {source[:60]!r})" if source else "")


def read_config_file(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise UnlearnkitError(f"Cannot read benchmark config {str(path)!r}: {e}") from None
    try:
        if path.suffix == ".toml":
            import tomllib

            values = tomllib.loads(text)
        elif path.suffix == ".json":
            import json

            values = json.loads(text)
        else:
            import yaml

            values = yaml.safe_load(text)
    except Exception as e:  # parse errors of three libraries: one line naming the file and the line
        raise UnlearnkitError(f"Cannot parse benchmark config {str(path)!r}: {_parse_error_line(e, text)}") from None
    if values is None or values == {}:
        raise UnlearnkitError(f"Benchmark config {str(path)!r} is empty; it needs at least 'methods' (e.g. "
                              "{finetune: {}, retrain: {}}); see the shipped 'smoke' config.")
    if not isinstance(values, dict):
        raise UnlearnkitError(f"Benchmark config {str(path)!r} must be a mapping of fields; got {type(values).__name__}.")
    return values


def load_bench_config(name_or_path: str | Path | dict) -> BenchConfig:
    """A ``BenchConfig`` from a dict, a file path, or the name of a shipped config (``smoke``)."""
    if isinstance(name_or_path, BenchConfig):
        return name_or_path
    if isinstance(name_or_path, dict):
        if not name_or_path:
            raise UnlearnkitError("A benchmark config dict is empty; it needs at least 'methods', e.g. "
                                  "{'methods': {'finetune': {}, 'retrain': {}}}.")
        return BenchConfig.from_dict(name_or_path)
    path = resolve_config_path(name_or_path)
    values = read_config_file(path)
    values.setdefault("name", path.stem)
    try:
        return BenchConfig.from_dict(values)
    except UnlearnkitError as e:
        raise type(e)(f"{path}: {e}") from None
