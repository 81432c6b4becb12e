"""The steps the CLI chains: train an original, load it back with its data, run a method.

Kept apart from the typer layer so the benchmark and the API share them.
"""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Any

import torch

from .checkpoint import MODEL_META_KEYS, load_checkpoint, read_meta, save_checkpoint
from .data import DatasetSplits, dataset_labels, load_dataset, make_unlearning_data
from .errors import UnlearnkitError, close_matches
from .methods import make_config, method_spec
from .models import create_model
from .training import Recipe, train
from .utils import resolve_device, stable_hash


def dataset_fingerprint(splits: DatasetSplits) -> str:
    """Hash of the training labels and sizes: enough to refuse a checkpoint of other data."""
    return stable_hash({"name": splits.name, "n_train": len(splits.train), "n_test": len(splits.test),
                        "labels": dataset_labels(splits.train).tolist()})


def model_args_for(splits: DatasetSplits, **model_kwargs) -> dict[str, Any]:
    return {"num_classes": splits.num_classes, "in_channels": splits.in_channels,
            "image_size": splits.image_size, **{k: v for k, v in model_kwargs.items() if v is not None}}


def train_original(dataset: str, model_name: str, recipe: Recipe, *, seed: int = 0, device: str = "auto",
                   data_root: str | None = None, dataset_args: dict | None = None, model_kwargs: dict | None = None,
                   splits: DatasetSplits | None = None) -> tuple[torch.nn.Module, dict[str, Any], DatasetSplits]:
    """Train a registered model on a built-in dataset; returns (model, checkpoint metadata, splits)."""
    dataset_args = dict(dataset_args or {})
    splits = splits or load_dataset(dataset, root=data_root, **dataset_args)
    args = model_args_for(splits, **(model_kwargs or {}))
    torch.manual_seed(seed)
    model = create_model(model_name, **args).to(resolve_device(device))
    train(model, splits.train, recipe.replace(seed=seed), description=f"train {model_name}")
    meta = {"model": model_name, "model_args": args, "num_classes": splits.num_classes,
            "dataset": {"name": dataset, "args": dataset_args, "fingerprint": dataset_fingerprint(splits)},
            "recipe": recipe.replace(seed=seed).to_dict(), "seed": seed}
    return model, meta, splits


def load_original(checkpoint: str | Path, *, data_root: str | None = None, device: str = "auto"):
    """Load a checkpoint and the dataset it was trained on (checked by fingerprint)."""
    meta = read_meta(checkpoint)
    info = meta.get("dataset") or {}
    if "name" not in info:
        raise UnlearnkitError(f"Checkpoint {str(checkpoint)!r} does not record its dataset.")
    splits = load_dataset(info["name"], root=data_root, **info.get("args", {}))
    if info.get("fingerprint") and info["fingerprint"] != dataset_fingerprint(splits):
        raise UnlearnkitError(
            f"Checkpoint {str(checkpoint)!r} was trained on other {info['name']} data (fingerprint mismatch)."
        )
    model, meta = load_checkpoint(checkpoint, num_classes=splits.num_classes, device=resolve_device(device))
    return model, meta, splits


def load_reference(reference: str | Path, meta: dict[str, Any], splits: DatasetSplits, *, device: str = "auto"):
    """The reference checkpoint of an evaluation: it must be of the same dataset and classes as the model."""
    ref_meta = read_meta(reference)
    mine, theirs = meta.get("dataset") or {}, ref_meta.get("dataset") or {}
    for what, a, b in (("dataset", mine.get("name"), theirs.get("name")),
                       ("dataset arguments", mine.get("args") or {}, theirs.get("args") or {}),
                       ("number of classes", meta.get("num_classes"), ref_meta.get("num_classes"))):
        if a != b:
            raise UnlearnkitError(f"The reference {str(reference)!r} is of another task than the model: its {what} "
                                  f"is {b!r}, the model's {a!r}; gaps compare models of the same data.")
    if mine.get("fingerprint") and theirs.get("fingerprint") and mine["fingerprint"] != theirs["fingerprint"]:
        raise UnlearnkitError(f"The reference {str(reference)!r} was trained on other {mine.get('name')} data than "
                              "the model (fingerprint mismatch).")
    return load_checkpoint(reference, num_classes=splits.num_classes, device=resolve_device(device))[0]


def parse_overrides(method: str, pairs: list[str]) -> dict[str, Any]:
    """``["lr=0.01", "epochs=3"]`` -> typed config overrides for ``method``."""
    config_class = method_spec(method).config_class
    hints = typing.get_type_hints(config_class)
    names = [f.name for f in dataclasses.fields(config_class)]
    renamed = config_class.all_deprecated_names()
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        key = key.strip().replace("-", "_")
        if not sep:
            raise UnlearnkitError(f"--set expects KEY=VALUE; got {pair!r}.")
        if key not in names and key not in renamed:
            raise UnlearnkitError(f"Unknown parameter {key!r} for method {method!r}; allowed: {', '.join(names)}."
                                  f"{close_matches(key, names)}")
        out[key] = _parse_value(raw.strip(), hints.get(renamed.get(key, key), str), key)
    return out


def parse_model_args(pairs: list[str]) -> dict[str, Any]:
    """``["width=32", "pretrained=true"]`` -> model kwargs (int, float, bool, None or string).

    Types and ranges are checked against the model when it is built (``create_model``).
    """
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip() or not raw.strip():
            raise UnlearnkitError(f"--model-arg expects KEY=VALUE; got {pair!r}.")
        if key.strip().replace("-", "_") in out:
            raise UnlearnkitError(f"--model-arg {key.strip()!r} is given twice.")
        raw = raw.strip()
        lowered = raw.lower()
        value: Any = raw
        if lowered in ("true", "false"):
            value = lowered == "true"
        elif lowered == "none":
            value = None
        else:
            for cast in (int, float):
                try:
                    value = cast(raw)
                    break
                except ValueError:
                    continue
        out[key.strip().replace("-", "_")] = value
    return out


def _parse_value(raw: str, hint, key: str):
    origin = typing.get_origin(hint)
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if raw.lower() == "none" and type(None) in typing.get_args(hint):
        return None
    if origin is typing.Union or str(origin) == "<class 'types.UnionType'>":
        for a in args:
            try:
                return _parse_value(raw, a, key)
            except UnlearnkitError:
                continue
        raise UnlearnkitError(f"Cannot parse {raw!r} for {key!r}.")
    if origin is typing.Literal:
        return raw
    if origin in (tuple, list):
        inner = args[0] if args else str
        return tuple(_parse_value(t, inner, key) for t in raw.split(",") if t)
    try:
        if hint is bool:
            if raw.lower() in ("true", "1", "yes", "on"):
                return True
            if raw.lower() in ("false", "0", "no", "off"):
                return False
            raise ValueError
        if hint is int:
            return int(raw)
        if hint is float:
            return float(raw)
    except ValueError:
        raise UnlearnkitError(f"Cannot parse {raw!r} as {getattr(hint, '__name__', hint)} for {key!r}.") from None
    return raw


def method_config_for(method: str, meta: dict[str, Any], overrides: dict[str, Any]):
    """A method's config; retrain defaults to the original's recipe stored in the checkpoint."""
    base: dict[str, Any] = {}
    if method == "retrain" and "recipe" in meta:
        base = {k: v for k, v in meta["recipe"].items() if k != "seed"}
    return make_config(method, base, **overrides)


def initial_model_factory(meta: dict[str, Any]):
    """How the checkpoint's model was first built, when that was not a plain random draw.

    A model created with ``pretrained=`` or ``weights=`` was fine-tuned from those weights, so
    its retrain oracle starts from them too (with the same freshly drawn head); None otherwise
    (retrain then re-draws every weight).
    """
    args = dict(meta.get("model_args") or {})
    if "model" not in meta or not (args.get("pretrained") or args.get("weights")):
        return None
    from .models import create_model

    return lambda: create_model(meta["model"], **args)


def method_options_for(method: str, meta: dict[str, Any]) -> dict[str, Any]:
    """Options (not config fields) the CLI and the benchmark pass to a method built from a checkpoint."""
    factory = initial_model_factory(meta) if method == "retrain" else None
    return {"model_factory": factory} if factory is not None else {}


def forget_data(splits: DatasetSplits, spec: str, seed: int):
    return make_unlearning_data(splits.train, splits.test, spec, seed=seed, num_classes=splits.num_classes)


def save_model(directory: str | Path, model: torch.nn.Module, meta: dict[str, Any], extra: dict[str, Any]):
    keep = {k: meta[k] for k in MODEL_META_KEYS if k in meta}
    return save_checkpoint(directory, model, {**keep, **extra})
