"""Our own pretrained backbones, and models that start from one (benchmark regime 2).

No hub weights can be downloaded here, so pretraining on the training images *outside* a
benchmark's subset stands in for ImageNet pretraining: ``pretrain`` trains a registered model on
``{subset: N, complement: true}`` (disjoint from the ``{subset: N}`` images the benchmark
unlearns) and ``save_pretrained`` writes its weights as safetensors with a JSON sidecar
(``FILE.json``: dataset, excluded subset and seed, recipe, versions, the weights' sha256).

A model starts from such a file through an *init* (``{weights: FILE, reset_head: true}``): every
tensor but the classifier head's is loaded; the head keeps the model's own fresh draw. The
benchmark fine-tunes the original from it and starts the retrain oracle from it again (same
body, fresh head, as the PruneLoRA and RFA papers do with their ImageNet backbones).
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from .errors import UnlearnkitError
from .models.registry import classifier_head
from .utils import atomic_write_bytes, atomic_write_json, package_version

FORMAT = "unlearnkit-pretrain/1"
HEADER_KEY = "unlearnkit_pretrain"  # the provenance JSON, also kept in the safetensors header
PACKAGE_PREFIX = "unlearnkit:"  # init weights shipped with the package: unlearnkit:NAME.safetensors
SHIPPED_WEIGHTS = Path(__file__).resolve().parent / "bench" / "weights"
INIT_FIELDS = ("weights", "reset_head")
# ResNet-20's regime-1 recipe, augmented throughout (features for transfer, not memorisation)
PRETRAIN_RECIPE = dict(optimizer="sgd", lr=0.1, momentum=0.9, weight_decay=5e-4, epochs=15, batch_size=128,
                       schedule="cosine", augment=True)


# ---- files -------------------------------------------------------------------------------------
def resolve_weights(spec: str) -> Path:
    """The file an init names: ``unlearnkit:NAME`` (shipped with the package) or a path (relative to the cwd)."""
    if spec.startswith(PACKAGE_PREFIX):
        return SHIPPED_WEIGHTS / spec[len(PACKAGE_PREFIX):]
    return Path(spec).expanduser()


def sidecar_path(weights: str | Path) -> Path:
    return Path(weights).with_suffix(".json")


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_provenance(path: str | Path) -> dict | None:
    """What ``pretrain`` recorded about a weights file (the sidecar, else the file's header); None if not ours."""
    side = sidecar_path(path)
    if side.is_file():
        try:
            record = json.loads(side.read_text())
        except (OSError, ValueError):
            record = None
        if isinstance(record, dict) and record.get("format") == FORMAT:
            return record
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            text = (f.metadata() or {}).get(HEADER_KEY)
        record = json.loads(text) if text else None
    except Exception:  # not a safetensors file, or not readable: no provenance
        return None
    return record if isinstance(record, dict) and record.get("format") == FORMAT else None


def is_pretrain_file(path: str | Path) -> bool:
    """A weights file an earlier ``unlearnkit pretrain`` wrote (its header says so)."""
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            return HEADER_KEY in (f.metadata() or {})
    except Exception:
        return False


def save_pretrained(path: str | Path, model: nn.Module, provenance: dict[str, Any]) -> dict[str, Any]:
    """Write the weights (provenance in the header) then the sidecar, each atomically; returns the sidecar record."""
    from safetensors.torch import save

    path = Path(path)
    state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    record = {"format": FORMAT, **provenance}
    blob = save(state, metadata={HEADER_KEY: json.dumps(record, sort_keys=True)})
    atomic_write_bytes(path, blob)
    record = {**record, "weights_file": path.name, "sha256": hashlib.sha256(blob).hexdigest(), "bytes": len(blob)}
    atomic_write_json(sidecar_path(path), record)
    return record


# ---- the head --------------------------------------------------------------------------------------
def find_head(model: nn.Module) -> str:
    """Name of the classifier layer an init resets: ``classifier_head(model, guess=False)``'s (known
    names only: ``head``, torchvision's and timm's, never a guess)."""
    try:
        return classifier_head(model, guess=False)[0]
    except UnlearnkitError as e:
        raise UnlearnkitError(f"{str(e).rstrip('.')}, or set init reset_head: false.") from None


# ---- inits --------------------------------------------------------------------------------------
def check_init(init: Any) -> None:
    """An init is {} (none) or {weights: FILE or unlearnkit:NAME, reset_head: bool (default true)}."""
    if init in (None, {}):
        return
    allowed = "{weights: FILE or unlearnkit:NAME.safetensors, reset_head: true or false}"
    if not isinstance(init, dict):
        raise UnlearnkitError(f"The 'init' of a benchmark must be {allowed}; got {init!r}.")
    unknown = sorted(set(init) - set(INIT_FIELDS))
    if unknown:
        raise UnlearnkitError(f"The 'init' of a benchmark takes no field(s) {', '.join(map(repr, unknown))}; "
                              f"allowed: {allowed}.")
    weights = init.get("weights")
    if not isinstance(weights, str) or not weights.strip() or not weights.endswith(".safetensors"):
        raise UnlearnkitError(f"The 'init' weights must be a .safetensors file path or unlearnkit:NAME.safetensors; "
                              f"got {weights!r}.")
    if not isinstance(init.get("reset_head", True), bool):
        raise UnlearnkitError(f"The 'init' reset_head must be true or false; got {init['reset_head']!r}.")


def pretrain_command(dataset: str, model: str, dataset_args: dict, model_kwargs: dict, out: Path) -> str:
    """The ``unlearnkit pretrain`` command that makes the init weights of a benchmark on this data."""
    parts = ["unlearnkit pretrain", f"--dataset {dataset}", f"--model {model}"]
    if dataset_args.get("subset") is not None:
        parts.append(f"--exclude-subset {dataset_args['subset']}")
    if dataset_args.get("subset_seed", 0):
        parts.append(f"--subset-seed {dataset_args['subset_seed']}")
    parts += [f"--model-arg {k}={v}" for k, v in model_kwargs.items()]
    return " ".join(parts + [f"--out {out}"])


def init_record(init: dict, *, dataset: str, dataset_args: dict, model: str, model_kwargs: dict) -> dict[str, Any]:
    """The resolved init a model starts from (its file's sha256 goes into cache keys and records).

    A missing file is one line naming the command that makes it; weights pretrained on the same
    dataset must have excluded exactly this benchmark's subset (else the pretraining saw its images).
    """
    check_init(init)
    path = resolve_weights(init["weights"])
    if not path.is_file():
        raise UnlearnkitError(f"The init weights file {str(path)!r} does not exist yet; make it with: "
                              f"{pretrain_command(dataset, model, dataset_args, model_kwargs, path)} "
                              "(see docs/benchmark-regimes.md).")
    provenance = read_provenance(path)
    if provenance is not None and provenance.get("dataset") == dataset:
        excluded = provenance.get("excluded") or {}
        mine = {"subset": dataset_args.get("subset"), "subset_seed": dataset_args.get("subset_seed", 0)}
        if mine["subset"] is None or excluded != mine:
            raise UnlearnkitError(f"The init weights {str(path)!r} were pretrained on {dataset} excluding "
                                  f"{excluded}, but this benchmark trains on {mine}: the pretraining images would "
                                  "overlap the unlearning data; pretrain with --exclude-subset matching the "
                                  "benchmark's subset.")
    record = {"weights": init["weights"], "sha256": file_sha256(path), "reset_head": init.get("reset_head", True)}
    if provenance is not None:
        record["pretrained_on"] = {k: provenance.get(k) for k in ("dataset", "excluded", "num_images", "recipe")}
    return record


def apply_init(model: nn.Module, record: dict[str, Any]) -> nn.Module:
    """Load ``record``'s weights into ``model`` (which holds a fresh draw): all of them, or all but the head.

    The file must hold every other tensor of the model with its shape (another architecture is an
    error, not a silent partial load), and must still be the file whose sha256 the record names.
    """
    from safetensors.torch import load_file

    path = resolve_weights(record["weights"])
    if not path.is_file():
        raise UnlearnkitError(f"The init weights file {str(path)!r} is gone; the model was built from it "
                              f"(sha256 {record['sha256'][:12]}): restore it or re-run from scratch.")
    if file_sha256(path) != record["sha256"]:
        raise UnlearnkitError(f"The init weights file {str(path)!r} changed since this model was built from it "
                              f"(sha256 {record['sha256'][:12]} expected): restore it, or start a new run.")
    state = load_file(str(path))
    own = model.state_dict()
    head = find_head(model) if record.get("reset_head", True) else None
    wanted = [k for k in own if head is None or not k.startswith(head + ".")]
    bad = [k for k in wanted if k not in state or tuple(state[k].shape) != tuple(own[k].shape)]
    if bad:
        what = "lacks" if bad[0] not in state else "has another shape for"
        raise UnlearnkitError(f"The init weights {str(path)!r} are of another architecture: the file {what} "
                              f"{bad[0]!r} ({len(bad)} tensor(s) differ from {type(model).__name__}'s).")
    model.load_state_dict({k: state[k] for k in wanted}, strict=False)
    return model


# ---- pretraining -----------------------------------------------------------------------------------
def pretrain(dataset: str, model_name: str, recipe, *, exclude_subset: int, subset_seed: int = 0, seed: int = 0,
             device: str = "auto", data_root: str | None = None, model_kwargs: dict | None = None):
    """Train ``model_name`` on ``dataset``'s training images outside the balanced ``exclude_subset``.

    Returns (model, provenance) for ``save_pretrained``.
    """
    from .data import load_dataset
    from .training import accuracy, train
    from .utils import resolve_device
    from .workflow import model_args_for

    dataset_args = {"subset": exclude_subset, "subset_seed": subset_seed, "complement": True}
    splits = load_dataset(dataset, root=data_root, **dataset_args)
    args = model_args_for(splits, **(model_kwargs or {}))
    torch.manual_seed(seed)
    from .models import create_model

    model = create_model(model_name, **args).to(resolve_device(device))
    recipe = recipe.replace(seed=seed)
    start = time.perf_counter()
    train(model, splits.train, recipe, description=f"pretrain {model_name}")
    seconds = time.perf_counter() - start
    provenance = {
        "dataset": dataset, "excluded": {"subset": exclude_subset, "subset_seed": subset_seed},
        "num_images": len(splits.train), "model": model_name, "model_args": args, "recipe": recipe.to_dict(),
        "seed": seed, "train_seconds": round(seconds, 1), "test_accuracy": accuracy(model, splits.test),
        "versions": {"unlearnkit": package_version(), "torch": torch.__version__},
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    return model, provenance
