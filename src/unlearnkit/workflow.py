"""The steps the CLI chains: train an original, load it back with its data, run a method.

Kept apart from the typer layer so the benchmark and the API share them.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
import typing
from pathlib import Path
from typing import Any

import torch

from .checkpoint import META, MODEL_META_KEYS, OWN_FILES, is_checkpoint_dir, load_checkpoint, read_meta, save_checkpoint
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
                   splits: DatasetSplits | None = None,
                   init: dict[str, Any] | None = None) -> tuple[torch.nn.Module, dict[str, Any], DatasetSplits]:
    """Train a registered model on a built-in dataset; returns (model, checkpoint metadata, splits).

    ``init`` (a ``pretraining.init_record``): start from those pretrained weights, the head freshly
    drawn unless it says ``reset_head: false``; the metadata keeps it, so retrain starts there too.
    """
    dataset_args = dict(dataset_args or {})
    splits = splits or load_dataset(dataset, root=data_root, **dataset_args)
    args = model_args_for(splits, **(model_kwargs or {}))
    if init and args.get("weights"):
        raise UnlearnkitError("Give the pretrained weights once: as the init or as the model's 'weights' argument.")
    torch.manual_seed(seed)
    model = build_initial_model(model_name, args, init).to(resolve_device(device))
    train(model, splits.train, recipe.replace(seed=seed), description=f"train {model_name}")
    meta = {"model": model_name, "model_args": args, "num_classes": splits.num_classes,
            "dataset": {"name": dataset, "args": dataset_args, "fingerprint": dataset_fingerprint(splits)},
            "recipe": recipe.replace(seed=seed).to_dict(), "seed": seed}
    if init:
        from .pretraining import find_head

        meta["init"] = {**init, "head": find_head(model) if init.get("reset_head", True) else None}
    return model, meta, splits


def build_initial_model(model_name: str, args: dict[str, Any], init: dict[str, Any] | None = None):
    """A fresh draw of the model (under the caller's seed), then ``init``'s pretrained weights if given."""
    model = create_model(model_name, **args)
    if init:
        from .pretraining import apply_init

        apply_init(model, init)
    return model


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

    A model created with an ``init`` (pretrained weights, head reset), ``pretrained=`` or
    ``weights=`` was fine-tuned from those weights, so its retrain oracle starts from them too
    (with the same freshly drawn head); None otherwise (retrain then re-draws every weight).
    """
    args = dict(meta.get("model_args") or {})
    init = meta.get("init")
    if "model" not in meta or not (init or args.get("pretrained") or args.get("weights")):
        return None
    return lambda: build_initial_model(meta["model"], args, init)


def retrain_start(meta: dict[str, Any]) -> dict[str, Any]:
    """Where the retrain oracle of a checkpoint starts, for the records."""
    init = meta.get("init")
    if init:
        return {"from": "pretrained init", "weights": init.get("weights"), "sha256": init.get("sha256"),
                "head_reset": bool(init.get("reset_head", True)), "head": init.get("head")}
    args = meta.get("model_args") or {}
    if args.get("pretrained") or args.get("weights"):
        return {"from": "the model's weights= / pretrained= weights", "weights": args.get("weights")}
    return {"from": "fresh random draw"}


def method_options_for(method: str, meta: dict[str, Any]) -> dict[str, Any]:
    """Options (not config fields) the CLI and the benchmark pass to a method built from a checkpoint."""
    factory = initial_model_factory(meta) if method == "retrain" else None
    return {"model_factory": factory} if factory is not None else {}


def forget_data(splits: DatasetSplits, spec: str, seed: int, meta: dict[str, Any] | None = None):
    """The request's splits; on a derived checkpoint the retain set also excludes every id it already forgot."""
    ids, classes = forgotten_so_far(meta or {}, len(splits.train))
    return make_unlearning_data(splits.train, splits.test, spec, seed=seed, num_classes=splits.num_classes,
                                already_forgotten=ids, forgotten_classes=classes)


def forgotten_so_far(meta: dict[str, Any], num_train: int) -> tuple[Any, tuple[int, ...]]:
    """(ids, classes) a checkpoint's earlier forget requests removed, from its ``forgotten`` record."""
    import numpy as np

    record = meta.get("forgotten")
    if record is None:
        return np.zeros(0, dtype=np.int64), ()
    ids = record.get("ids") if isinstance(record, dict) else None
    if not isinstance(ids, list) or not all(isinstance(i, int) and 0 <= i < num_train for i in ids):
        raise UnlearnkitError(f"The checkpoint's 'forgotten' record is damaged: it needs 'ids', a list of training "
                              f"ids 0..{num_train - 1}.")
    classes = {int(c) for r in record.get("requests", []) if isinstance(r, dict) and r.get("kind") == "class"
               for c in r.get("classes", [])}
    return np.asarray(ids, dtype=np.int64), tuple(sorted(classes))


def forgotten_after(meta: dict[str, Any], data) -> dict[str, Any]:
    """The ``forgotten`` record of a model derived from ``meta``'s by forgetting ``data``: cumulative."""
    import numpy as np

    before, _ = forgotten_so_far(meta, len(data.train))
    ids = np.union1d(before, data.forget_ids).astype(np.int64)
    requests = [*(meta.get("forgotten") or {}).get("requests", []), data.request.to_dict()]
    return {"ids": ids.tolist(), "requests": requests}


def save_model(directory: str | Path, model: torch.nn.Module, meta: dict[str, Any], extra: dict[str, Any],
               *, overwrite: bool = True, extra_files: dict[str, str] | None = None):
    keep = {k: meta[k] for k in MODEL_META_KEYS if k in meta}
    return save_checkpoint(directory, model, {**keep, **extra}, overwrite=overwrite, extra_files=extra_files)


# ---- where a command may write: checked before any work starts (Hugging Face's overwrite_output_dir rule) ----

def written_by(directory: str | Path) -> str | None:
    """The command that wrote this checkpoint directory (train, forget or compact), or None."""
    if not is_checkpoint_dir(directory):
        return None
    try:
        meta = json.loads((Path(directory) / META).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(meta, dict):
        return None
    if "compacted_from" in meta:
        return "compact"
    return "forget" if "unlearned" in meta else "train"


def check_output_dir(out: str | Path, command: str, *, inputs: tuple = (), overwrite: bool = False) -> Path:
    """Refuse an ``--out`` directory that would lose data; returns the resolved path to write.

    Allowed: a new or empty directory, or a previous output of the same ``command``
    with ``overwrite``. Refused: the current directory or a parent of it, an input or
    a directory containing one or inside one, a file, anything else that is not empty,
    and a place that cannot be written.
    """
    target = _check_location(out, inputs)
    _check_not_inside_inputs(target, out, inputs)
    if target.exists() and not target.is_dir():
        raise UnlearnkitError(f"--out {str(out)!r} is an existing file; `unlearnkit {command}` writes a directory.")
    if target.is_dir() and any(target.iterdir()):
        previous = written_by(target)
        if previous is None:
            names = sorted(p.name for p in target.iterdir() if p.name not in OWN_FILES)[:3]
            raise UnlearnkitError(f"--out {str(out)!r} is a non-empty directory that is not an unlearnkit checkpoint "
                                  f"(it holds {', '.join(names) or 'other files'}); refusing to replace it: "
                                  "choose a new directory.")
        if previous != command:
            raise UnlearnkitError(f"--out {str(out)!r} holds the output of `unlearnkit {previous}`, not of "
                                  f"`unlearnkit {command}`; refusing to replace it: choose a new directory.")
        if not overwrite:
            raise UnlearnkitError(f"--out {str(out)!r} holds a previous `unlearnkit {command}` output; pass "
                                  "--overwrite to replace it.")
    _check_writable(target, out)
    return target


def check_output_file(out: str | Path, *, inputs: tuple = (), overwrite: bool = False, is_previous=None) -> Path:
    """Refuse an ``--out`` file that would lose data: a directory, a file of an input checkpoint,
    an existing file that ``is_previous`` does not recognise, or one that does without ``overwrite``."""
    target = _check_location(out, inputs)
    if target.is_dir():
        raise UnlearnkitError(f"--out {str(out)!r} is a directory; it must be a file path.")
    if any(target.parent == Path(i).resolve() and target.name in OWN_FILES[:3] for i in inputs):
        raise UnlearnkitError(f"--out {str(out)!r} is a file of the input checkpoint; choose another path.")
    if target.exists():
        if is_previous is None or not is_previous(target):
            raise UnlearnkitError(f"--out {str(out)!r} exists and was not written by this command; refusing to "
                                  "replace it: choose a new path.")
        if not overwrite:
            raise UnlearnkitError(f"--out {str(out)!r} holds a previous output; pass --overwrite to replace it.")
    _check_writable(target, out)
    return target


def _check_location(out: str | Path, inputs: tuple) -> Path:
    target = Path(out).expanduser().resolve()
    cwd = Path.cwd().resolve()
    if target == cwd or target in cwd.parents:
        raise UnlearnkitError(f"--out {str(out)!r} is the current directory or one of its parents; "
                              "choose a new directory.")
    for given in inputs:
        source = Path(given).expanduser().resolve()
        if target == source or target in source.parents:
            raise UnlearnkitError(f"--out {str(out)!r} is (or contains) the input {str(given)!r}; the input is never "
                                  "replaced: choose another directory.")
    return target


def _check_not_inside_inputs(target: Path, out: str | Path, inputs: tuple) -> None:
    for given in inputs:
        if Path(given).expanduser().resolve() in target.parents:
            raise UnlearnkitError(f"--out {str(out)!r} is inside the input {str(given)!r}; "
                                  "choose a directory outside it.")


def _check_writable(target: Path, out: str | Path) -> None:
    """The nearest existing ancestor must be a directory we can create files in (tried, not guessed)."""
    parent = target.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise UnlearnkitError(f"--out {str(out)!r} cannot be created: {str(parent)!r} is a file, not a directory.")
    try:
        fd, probe = tempfile.mkstemp(dir=parent, prefix=".unlearnkit-probe-")
    except OSError as e:
        raise UnlearnkitError(f"--out {str(out)!r} cannot be written: {str(parent)!r}: {e.strerror}.") from None
    os.close(fd)
    os.unlink(probe)
