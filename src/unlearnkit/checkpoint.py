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
MODEL_META_KEYS = ("model", "model_args", "num_classes", "dataset", "recipe", "compacted", "forgotten", "init")
FORMAT_VERSION = 1


# files unlearnkit itself writes into a checkpoint directory (and may replace with it)
RESULT = "result.json"
OWN_FILES = (WEIGHTS, META, RESULT, "pgu_gram.safetensors")
_TMP_TAG, _OLD_TAG = "tmp-", "old-"


def is_checkpoint_dir(directory: str | os.PathLike) -> bool:
    """A directory unlearnkit wrote: its weights and metadata, and nothing but files of its own."""
    directory = Path(directory)
    if not (directory / META).is_file() or not (directory / WEIGHTS).is_file():
        return False
    return all(p.name in OWN_FILES and p.is_file() for p in directory.iterdir())


def save_checkpoint(directory: str | os.PathLike, model: nn.Module, meta: dict[str, Any] | None = None,
                    *, overwrite: bool = True, extra_files: dict[str, str] | None = None) -> Path:
    """Write weights and metadata to ``directory``: built beside it, then swapped into place.

    An existing checkpoint is replaced only with ``overwrite``; anything else that is
    not empty (a file, a directory of other files) is never replaced.
    """
    from safetensors.torch import save_file

    from . import distributed

    directory = Path(directory)
    if not distributed.is_main_process():  # several processes: rank 0 checks and writes, the others wait for it
        distributed.barrier()
        return directory
    _check_replaceable(directory, overwrite)
    directory.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_siblings(directory)
    state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    record = {"format_version": FORMAT_VERSION, "model_class": type(model).__name__,
              "weights_sha": state_dict_hash(state), "environment": environment_info(), **(meta or {})}
    tmp = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}.{_TMP_TAG}"))
    try:
        save_file(state, str(tmp / WEIGHTS))
        (tmp / META).write_text(json.dumps(to_jsonable(record), indent=2, sort_keys=True) + "\n")
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text)
        replace_dir(tmp, directory)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    distributed.barrier()
    return directory


def _check_replaceable(directory: Path, overwrite: bool) -> None:
    if directory.is_symlink() or (directory.exists() and not directory.is_dir()):
        raise UnlearnkitError(f"{str(directory)!r} exists and is not a directory; a checkpoint is a directory.")
    if not directory.is_dir() or not any(directory.iterdir()):
        return
    if not is_checkpoint_dir(directory):
        raise UnlearnkitError(f"{str(directory)!r} is a non-empty directory that is not an unlearnkit checkpoint; "
                              "refusing to replace it.")
    if not overwrite:
        raise UnlearnkitError(f"Output directory {str(directory)!r} already exists.")


def replace_dir(new: Path, directory: Path) -> None:
    """Put directory ``new`` at ``directory``; an old one there is swapped out and removed.

    Readers see the old directory or the new one: an atomic exchange where the
    filesystem has one (Linux ``renameat2``), else two renames with a rollback.
    ``new`` is left empty or holding the old contents; the caller removes it.
    """
    if not directory.exists():
        os.replace(new, directory)
        return
    if _exchange(new, directory):
        return
    old = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}.{_OLD_TAG}"))
    os.rmdir(old)
    os.replace(directory, old)
    try:
        os.replace(new, directory)
    except BaseException:
        os.replace(old, directory)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically with Linux's renameat2(RENAME_EXCHANGE); False where unsupported."""
    import ctypes

    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


def _remove_stale_siblings(directory: Path) -> None:
    """Temporaries a killed earlier write of this checkpoint left beside it."""
    for tag in (_TMP_TAG, _OLD_TAG):
        for p in directory.parent.glob(f".{directory.name}.{tag}*"):
            shutil.rmtree(p, ignore_errors=True)


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
        from .components.compaction import resize_to

        resize_to(model, _weight_shapes(directory))
    load_weights(model, directory)
    return model.to(device).eval(), meta
