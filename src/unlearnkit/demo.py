"""``unlearnkit demo``: the whole pipeline on bundled digits in well under a minute on 2 CPU cores."""

from __future__ import annotations

from pathlib import Path

from .checkpoint import read_meta
from .errors import UnlearnkitError
from .training import Recipe, accuracy
from .workflow import forget_data, load_original, method_config_for, save_model, train_original

DEMO_MODEL = "cnn"
DEMO_RECIPE = Recipe(epochs=15, lr=0.05, batch_size=64)
DEMO_FORGET = "class:3"
# Fine-tuning forgets an absent class only with enough steps; lr 1e-2 for 5 epochs does it on digits.
DEMO_METHODS = {"finetune": {"lr": 1e-2, "epochs": 5}, "retrain": {}}


def original_checkpoint(cache_dir: Path, seed: int, device: str) -> Path:
    """Train the demo's original once per seed; later runs load it from the cache."""
    path = Path(cache_dir) / f"digits-{DEMO_MODEL}-seed{seed}"
    try:
        read_meta(path)
        return path
    except UnlearnkitError:
        pass
    model, meta, splits = train_original("digits", DEMO_MODEL, DEMO_RECIPE, seed=seed, device=device)
    save_model(path, model, meta, {"seed": seed, "test_accuracy": accuracy(model, splits.test)})
    return path


def run_demo(cache_dir: Path, seed: int = 0, device: str = "auto"):
    from .api import unlearn

    model, meta, splits = load_original(original_checkpoint(cache_dir, seed, device), device=device)
    data = forget_data(splits, DEMO_FORGET, seed)
    columns = ["method", "forget acc", "retain acc", "test acc", "forgotten-class test acc", "seconds"]
    rows = [["original", accuracy(model, data.forget), accuracy(model, data.retain),
             accuracy(model, data.test_retain), accuracy(model, data.test_forget), 0.0]]
    for method, overrides in DEMO_METHODS.items():
        config = method_config_for(method, meta, overrides)
        result = unlearn(model, data.retain, data.forget, method, config=config, device=device, seed=seed)
        m = result.model
        rows.append([method, accuracy(m, data.forget), accuracy(m, data.retain), accuracy(m, data.test_retain),
                     accuracy(m, data.test_forget), result.seconds])
    return rows, columns
