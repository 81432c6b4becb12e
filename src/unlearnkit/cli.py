"""The ``unlearnkit`` command line (typer).

Every user error is an ``UnlearnkitError``: printed as one line, exit code 2.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.table import Table

from . import __version__
from .errors import UnlearnkitError
from .progress import set_progress

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Machine unlearning for trained PyTorch classifiers.")
console = Console()
err_console = Console(stderr=True)

DatasetOpt = typer.Option("digits", "--dataset", "-d", help="digits (bundled), mnist or cifar10.")
DeviceOpt = typer.Option("auto", "--device", help="cpu, cuda, cuda:N or auto.")
SeedOpt = typer.Option(0, "--seed", help="One seed fixes every random choice.")
QuietOpt = typer.Option(False, "--quiet", "-q", help="No progress bars.")
DataRootOpt = typer.Option(None, "--data-root", help="Folder (or file) with the dataset; default $UNLEARNKIT_DATA.")


def _setup(quiet: bool, threads: int | None = None) -> None:
    set_progress(not quiet)


def _table(title: str, columns: list[str], rows: list[list]) -> Table:
    table = Table(title=title)
    for c in columns:
        table.add_column(c, justify="left" if c in ("method", "name", "description", "split") else "right")
    for r in rows:
        table.add_row(*[f"{v:.2f}" if isinstance(v, float) else str(v) for v in r])
    return table


@app.callback(invoke_without_command=True)
def _main(version: bool = typer.Option(False, "--version", help="Print the version and exit.")):
    if version:
        console.print(f"unlearnkit {__version__}")
        raise typer.Exit()


@app.command()
def methods(pattern: str = typer.Argument("*", help="Shell-style filter, e.g. '*lora*'.")):
    """List the registered unlearning methods."""
    from .methods import list_methods, method_spec

    rows = [[name, method_spec(name).description] for name in list_methods(pattern)]
    console.print(_table("unlearnkit methods", ["name", "description"], rows))


@app.command()
def models():
    """List the registered model architectures."""
    from .models import list_models
    from .models.registry import _MODELS

    rows = [[n, (_MODELS[n].__doc__ or "").strip().splitlines()[0]] for n in list_models()]
    console.print(_table("unlearnkit models", ["name", "description"], rows))


@app.command()
def train(
    out: Path = typer.Option(..., "--out", "-o", help="Checkpoint directory to write."),
    dataset: str = DatasetOpt,
    model: str = typer.Option("cnn", "--model", "-m", help="mlp, cnn, resnet20, resnet56, vit_tiny, timm:NAME, ..."),
    epochs: Optional[int] = typer.Option(None, help="Training epochs (recipe default 30)."),
    lr: Optional[float] = typer.Option(None, help="Peak learning rate."),
    optimizer: Optional[str] = typer.Option(None, help="sgd, adam or adamw."),
    batch_size: Optional[int] = typer.Option(None, help="Batch size."),
    weight_decay: Optional[float] = typer.Option(None, help="Weight decay."),
    schedule: Optional[str] = typer.Option(None, help="constant, cosine or step."),
    augment: Optional[bool] = typer.Option(None, "--augment/--no-augment", help="Random crop + flip."),
    subset: Optional[int] = typer.Option(None, help="cifar10 only: a class-balanced subset of N training images."),
    data_root: Optional[str] = DataRootOpt,
    seed: int = SeedOpt, device: str = DeviceOpt, quiet: bool = QuietOpt,
):
    """Train an original model and save it as a checkpoint."""
    from .training import Recipe, accuracy
    from .workflow import train_original

    _setup(quiet)
    values = dict(epochs=epochs, lr=lr, optimizer=optimizer, batch_size=batch_size, weight_decay=weight_decay,
                  schedule=schedule, augment=augment)
    recipe = Recipe(**{k: v for k, v in values.items() if v is not None})
    dataset_args = {"subset": subset} if subset else {}
    net, meta, splits = train_original(dataset, model, recipe, seed=seed, device=device, data_root=data_root,
                                       dataset_args=dataset_args)
    from .workflow import save_model

    test_acc = accuracy(net, splits.test)
    save_model(out, net, meta, {"seed": seed, "test_accuracy": test_acc})
    console.print(f"trained {model} on {dataset}: test accuracy {test_acc:.2f}% -> {out}")


@app.command()
def forget(
    checkpoint: Path = typer.Option(..., "--checkpoint", "-c", help="Checkpoint directory of the original."),
    method: str = typer.Option("finetune", "--method", "-m", help="A registered method (see `unlearnkit methods`)."),
    forget_spec: str = typer.Option(..., "--forget", "-f", help="class:K[,K], random:F or ids:FILE."),
    out: Path = typer.Option(..., "--out", "-o", help="Directory for the unlearned checkpoint and result.json."),
    set_: List[str] = typer.Option([], "--set", "-s", help="Method parameter KEY=VALUE (repeatable)."),
    data_root: Optional[str] = DataRootOpt,
    seed: int = SeedOpt, device: str = DeviceOpt, quiet: bool = QuietOpt,
):
    """Unlearn a forget set from a checkpoint with one method."""
    from .api import unlearn
    from .metrics import evaluate
    from .utils import atomic_write_json
    from .workflow import forget_data, load_original, method_config_for, parse_overrides, save_model

    _setup(quiet)
    config = method_config_for(method, {}, parse_overrides(method, set_))  # validate before loading anything
    net, meta, splits = load_original(checkpoint, data_root=data_root, device=device)
    config = method_config_for(method, meta, parse_overrides(method, set_))
    data = forget_data(splits, forget_spec, seed)
    result = unlearn(net, data.retain, data.forget, method, config=config, device=device, seed=seed)
    evaluation = evaluate(result.model, data, result=result, seed=seed)
    record = {"result": result.to_dict(), "forget": data.request.to_dict(), "evaluation": evaluation.to_dict(),
              "original": str(checkpoint)}
    save_model(out, result.model, meta, {"unlearned": {"method": method, "forget": data.request.to_dict(),
                                                       "config": config.to_dict(), "seed": seed}})
    atomic_write_json(Path(out) / "result.json", record)
    summary = evaluation.summary()
    columns = ["UA", "RA", "TA", "MIA-Efficacy"]
    rows = [[method, *[summary[k] for k in columns], result.seconds]]
    console.print(_table(f"forget {forget_spec}", ["method", *columns, "seconds"], rows))
    console.print(f"unlearned model -> {out}")


@app.command("eval")
def eval_(
    checkpoint: Path = typer.Option(..., "--checkpoint", "-c", help="Checkpoint directory of the model to evaluate."),
    forget_spec: str = typer.Option(..., "--forget", "-f", help="class:K[,K], random:F or ids:FILE."),
    reference: Optional[Path] = typer.Option(None, "--reference", "-r",
                                             help="Checkpoint of the reference (normally the retrain oracle)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Write the evaluation as JSON to this file."),
    data_root: Optional[str] = DataRootOpt,
    seed: int = SeedOpt, device: str = DeviceOpt, quiet: bool = QuietOpt,
):
    """Evaluate a checkpoint on a forget request (UA, RA, TA, MIA, gaps to a reference); see docs/metrics.md."""
    from .metrics import evaluate
    from .utils import atomic_write_json
    from .workflow import forget_data, load_original

    _setup(quiet)
    net, _, splits = load_original(checkpoint, data_root=data_root, device=device)
    data = forget_data(splits, forget_spec, seed)
    ref = load_original(reference, data_root=data_root, device=device)[0] if reference is not None else None
    result = _stored_result(checkpoint, data.request.to_dict())
    evaluation = evaluate(net, data, reference=ref, result=result, seed=seed)
    record = {**evaluation.to_dict(), "checkpoint": str(checkpoint),
              "reference": str(reference) if reference is not None else None}
    if out is not None:
        atomic_write_json(out, record)
    console.print(evaluation.table(f"eval {checkpoint} on {forget_spec}"))
    if out is not None:
        console.print(f"evaluation -> {out}")


def _stored_result(checkpoint: Path, request: dict) -> dict | None:
    """The run facts `unlearnkit forget` stored next to the checkpoint, when they are of this request."""
    path = Path(checkpoint) / "result.json"
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("forget") != request or not isinstance(record.get("result"), dict):
        return None
    return record["result"]


@app.command()
def demo(
    cache_dir: Path = typer.Option(Path(".unlearnkit-cache"), help="Where the original model is cached."),
    seed: int = SeedOpt, device: str = DeviceOpt, quiet: bool = QuietOpt,
):
    """Train a CNN on digits (cached), forget class 3 with finetune and retrain, print a table."""
    from .demo import run_demo

    _setup(quiet)
    rows, columns = run_demo(cache_dir=cache_dir, seed=seed, device=device)
    console.print(_table("unlearnkit demo: digits, cnn, forget class 3", columns, rows))


@app.command()
def bench(
    config: str = typer.Option(..., "--config", "-c", help="A config file, or a shipped one: smoke, cifar10-cpu, cifar10-full."),
    out: Path = typer.Option(..., "--out", "-o", help="Results directory (reused: cached runs are skipped)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Recompute everything, originals and oracles included."),
    cache_dir: Optional[Path] = typer.Option(None, "--cache-dir", help="Where originals and oracles are cached; default OUT/cache."),
    device: Optional[str] = typer.Option(None, "--device", help="Overrides the config's device (cpu, cuda, auto)."),
    quiet: bool = QuietOpt,
):
    """Run a benchmark suite (resumable, cached) and write report.md and report.html."""
    from .bench import load_bench_config, run_benchmark, write_report

    _setup(quiet)
    cfg = load_bench_config(config)
    summary = run_benchmark(cfg, out, overwrite=overwrite, device=device, cache_dir=cache_dir)
    md, html_path = write_report(out)
    console.print(f"bench {cfg.name}: {summary.computed} run(s) computed, {summary.cached} reused, "
                  f"{summary.originals_trained} original(s) and {summary.oracles_trained} oracle(s) trained "
                  f"in {summary.seconds:.0f} s")
    for line in summary.errors:
        err_console.print(f"failed: {line}", highlight=False, soft_wrap=True)
    console.print(f"report -> {md} and {html_path}")


@app.command()
def report(results: Path = typer.Argument(..., help="A directory written by `unlearnkit bench`.")):
    """Rewrite report.md and report.html from a benchmark's stored results."""
    from .bench import write_report

    md, html_path = write_report(results)
    console.print(f"report -> {md} and {html_path}")

def main(argv: list[str] | None = None) -> int:
    try:
        app(args=argv, standalone_mode=False)
    except UnlearnkitError as e:
        err_console.print(f"Error: {e}", highlight=False, soft_wrap=True)
        return 2
    except (typer.Exit, SystemExit) as e:
        return int(getattr(e, "exit_code", getattr(e, "code", 0)) or 0)
    except (typer.Abort, KeyboardInterrupt):
        err_console.print("Aborted.")
        return 130
    except Exception as e:  # click usage errors
        import click

        if isinstance(e, click.exceptions.ClickException):
            e.show()
            return 2
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
