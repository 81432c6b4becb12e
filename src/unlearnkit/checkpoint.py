"""Checkpoints: ``model.safetensors`` + ``checkpoint.json`` in a directory, written atomically.

Loading never unpickles: weights come from safetensors, metadata from JSON. A
checkpoint whose architecture or class count does not match gives a one-line error.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from .errors import UnlearnkitError
from .utils import environment_info, state_dict_hash, to_jsonable

WEIGHTS = "model.safetensors"
META = "checkpoint.json"
# what a checkpoint derived from another (an unlearned or compacted model, a store version) carries over
MODEL_META_KEYS = ("model", "model_args", "num_classes", "dataset", "recipe", "compacted")
FORMAT_VERSION = 1


def save_checkpoint(directory: str | os.PathLike, model: nn.Module, meta: dict[str, Any] | None = None,
                    *, overwrite: bool = True, extra_files: dict[str, str] | None = None) -> Path:
    """Write weights and metadata to ``directory`` (built in a temp dir, then renamed into place)."""
    from safetensors.torch import save_file

    from . import distributed

    directory = Path(directory)
    if directory.exists() and not overwrite:
        raise UnlearnkitError(f"Output directory {str(directory)!r} already exists.")
    if not distributed.is_main_process():  # several processes: rank 0 writes, the others wait for it
        distributed.barrier()
        return directory
    directory.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    record = {"format_version": FORMAT_VERSION, "model_class": type(model).__name__,
              "weights_sha": state_dict_hash(state), "environment": environment_info(), **(meta or {})}
    tmp = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}."))
    try:
        save_file(state, str(tmp / WEIGHTS))
        (tmp / META).write_text(json.dumps(to_jsonable(record), indent=2, sort_keys=True) + "\n")
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text)
        if directory.exists():
            old = directory.with_name(f".{directory.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(directory, old)
            os.replace(tmp, directory)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    distributed.barrier()
    return directory


def read_meta(directory: str | os.PathLike) -> dict[str, Any]:
    directory = Path(directory)
    meta_path = directory / META
    if not directory.is_dir() or not meta_path.is_file() or not (directory / WEIGHTS).is_file():
        raise UnlearnkitError(f"{str(directory)!r} is not an unlearnkit checkpoint (needs {META} and {WEIGHTS}).")
    try:
        return json.loads(meta_path.read_text())
    except json.JSONDecodeError as e:
        raise UnlearnkitError(f"{meta_path} is not valid JSON: {e}") from None


def _weight_shapes(directory: str | os.PathLike) -> dict[str, tuple[int, ...]]:
    from safetensors import SafetensorError, safe_open

    path = Path(directory) / WEIGHTS
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except (SafetensorError, OSError) as e:
        raise UnlearnkitError(f"Cannot read weights {str(path)!r}: {e}") from None


def load_weights(model: nn.Module, directory: str | os.PathLike) -> nn.Module:
    """Load a checkpoint's weights into ``model``; mismatched names or shapes are a clear error."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(directory) / WEIGHTS
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError) as e:
        raise UnlearnkitError(f"Cannot read weights {str(path)!r}: {e}") from None
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise UnlearnkitError(
            f"Checkpoint {str(directory)!r} does not match {type(model).__name__}: "
            f"missing {missing[:3]}, unexpected {unexpected[:3]}."
        )
    for name in expected:  # model order, so the first mismatch reported is the first layer that differs
        tensor = state[name]
        if tuple(tensor.shape) != tuple(expected[name].shape):
            raise UnlearnkitError(
                f"Checkpoint {str(directory)!r} does not match {type(model).__name__}: {name!r} has shape "
                f"{tuple(tensor.shape)} in the file but {tuple(expected[name].shape)} in the model "
                "(another architecture or class count?)."
            )
    model.load_state_dict(state)
    return model


def load_checkpoint(directory: str | os.PathLike, *, num_classes: int | None = None,
                    device: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a registered model from its checkpoint; returns (model, metadata)."""
    from .models import create_model

    meta = read_meta(directory)
    if "model" not in meta:
        raise UnlearnkitError(
            f"Checkpoint {str(directory)!r} holds a custom model; build it yourself and call load_weights(model, dir)."
        )
    if num_classes is not None and meta.get("num_classes") != num_classes:
        raise UnlearnkitError(
            f"Checkpoint {str(directory)!r} has {meta.get('num_classes')} classes but the data has {num_classes}."
        )
    # the checkpoint holds every weight: never download or read the pretrained ones again
    args = {k: v for k, v in meta.get("model_args", {}).items() if k not in ("pretrained", "weights")}
    model = create_model(meta["model"], **args)
    if meta.get("compacted"):  # pruned channels were removed: give the layers the file's sizes first
        from .compact import resize_to

        resize_to(model, _weight_shapes(directory))
    load_weights(model, directory)
    return model.to(device).eval(), meta
