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
    """Rows of UA, RA, TA, MIA-Efficacy and Avg.Gap (to the retrain row) and seconds, per method.

    The retrain oracle is run and evaluated first; its ``Evaluation`` is the reference of the
    original's and every method's Avg.Gap (docs/metrics.md defines each figure).
    """
    from .api import unlearn
    from .metrics import evaluate

    model, meta, splits = load_original(original_checkpoint(cache_dir, seed, device), device=device)
    data = forget_data(splits, DEMO_FORGET, seed)
    figures = ["UA", "RA", "TA", "MIA-Efficacy"]
    columns = ["method", *figures, "Avg.Gap", "seconds"]

    def run(method: str):
        config = method_config_for(method, meta, DEMO_METHODS[method])
        return unlearn(model, data.retain, data.forget, method, config=config, device=device, seed=seed)

    oracle = run("retrain")
    reference = evaluate(oracle.model, data, result=oracle, seed=seed)

    def row(name: str, evaluation, seconds: float, gap):
        summary = evaluation.summary()
        return [name, *[summary[k] for k in figures], gap if gap is not None else summary["Avg.Gap"], seconds]

    rows = [row("original", evaluate(model, data, reference=reference, seed=seed), 0.0, None),
            row("retrain", reference, oracle.seconds, "(ref)")]
    for method in DEMO_METHODS:
        if method == "retrain":
            continue
        result = run(method)
        rows.append(row(method, evaluate(result.model, data, reference=reference, result=result, seed=seed),
                        result.seconds, None))
    return rows, columns
