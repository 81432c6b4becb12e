"""The ``unlearnkit`` command line (typer).

Exit codes: 0 success, 2 bad input (an ``UnlearnkitError`` or a usage error, printed as one
line), 3 a deletion request refused by a gate, 130 interrupted (Ctrl-C) and 143 terminated
(SIGTERM, e.g. ``kill`` or a job scheduler): both stop like Ctrl-C, and one line says what was written.
"""

from __future__ import annotations

import contextlib
import json
import signal
import sys
import threading
from pathlib import Path
from typing import Callable, List, Optional

import typer
from rich.console import Console
from rich.markup import escape
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
QuietOpt = typer.Option(False, "--quiet", "-q", help="No progress bars or progress lines.")
DataRootOpt = typer.Option(None, "--data-root", help="Folder (or file) with the dataset; default $UNLEARNKIT_DATA.")
OverwriteOpt = typer.Option(False, "--overwrite", help="Replace a previous output of this command at --out "
                            "(never anything else).")

EXIT_OK, EXIT_USER_ERROR, EXIT_REFUSED, EXIT_INTERRUPTED, EXIT_TERMINATED = 0, 2, 3, 130, 143
MAX_MESSAGE_CHARS = 600

# what the running command has written so far, for the line an interruption prints
_interrupt_note: list[Callable[[], str]] = []


_terminated: list[bool] = []  # set when SIGTERM stopped the command


def _raise_interrupt_on_sigterm(signum, frame) -> None:
    _terminated[:] = [True]
    raise KeyboardInterrupt


@contextlib.contextmanager
def _sigterm_stops_like_ctrl_c():
    """SIGTERM raises KeyboardInterrupt, so that what a command writes is finished or cleaned up as for Ctrl-C."""
    if threading.current_thread() is not threading.main_thread():  # signals reach the main thread only
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_interrupt_on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


def _on_interrupt(describe: Callable[[], str]) -> None:
    """Say what an interruption from now on leaves behind (replaces the previous note)."""
    _interrupt_note[:] = [describe]


def _writing(out: Path) -> str:
    return f"{out} holds its previous contents or the complete new output, never a mix"


def _setup(quiet: bool) -> None:
    if quiet:
        set_progress(False)


def _print_error(text: str) -> None:
    """One line on stderr, printed literally (no rich markup), at most MAX_MESSAGE_CHARS long."""
    line = " ".join(str(text).split())
    if len(line) > MAX_MESSAGE_CHARS:
        line = line[:MAX_MESSAGE_CHARS - 3] + "..."
    err_console.print(line, markup=False, highlight=False, soft_wrap=True)


def _table(title: str, columns: list[str], rows: list[list]) -> Table:
    table = Table(title=escape(title))
    for c in columns:
        table.add_column(c, justify="left" if c in ("method", "name", "description", "split") else "right")
    for r in rows:
        table.add_row(*[f"{v:.2f}" if isinstance(v, float) else escape(str(v)) for v in r])
    return table


@app.callback(invoke_without_command=True)
def _main(version: bool = typer.Option(False, "--version", help="Print the version and exit."),
          mixed_precision: Optional[str] = typer.Option(
              None, "--mixed-precision", help="no, bf16 or fp16 (fp16 needs a GPU); applies to every loop."),
          threads: Optional[int] = typer.Option(
              None, "--threads", help="CPU threads torch uses (default: all cores; OMP_NUM_THREADS also sets it).")):
    if threads is not None:
        if threads < 1:
            raise UnlearnkitError(f"--threads must be a whole number >= 1; got {threads}.")
        import torch

        torch.set_num_threads(threads)
    if mixed_precision is not None:
        import os

        from .distributed import PRECISIONS

        if mixed_precision not in PRECISIONS:
            raise UnlearnkitError(f"Unknown mixed precision {mixed_precision!r}; allowed: {', '.join(PRECISIONS)}.")
        os.environ["UNLEARNKIT_MIXED_PRECISION"] = mixed_precision  # read when the context is first created
    if version:
        console.print(f"unlearnkit {__version__}")
        raise typer.Exit()


@app.command()
def methods(pattern: str = typer.Argument("*", help="A method name (lists its parameters) or a shell-style "
                                          "filter, e.g. '*lora*'.")):
    """List the registered unlearning methods, or one method's parameters (`unlearnkit methods lora`)."""
    from .methods import list_methods, method_spec

    if pattern in list_methods():
        spec = method_spec(pattern)
        rows = [[p["name"], p["default"], p["allowed"], p["help"]] for p in spec.config_class.describe()]
        console.print(_table(f"{pattern}: {spec.description}", ["name", "default", "allowed", "description"], rows))
        renamed = spec.config_class.all_deprecated_names()
        if renamed:
            console.print("deprecated names: " + ", ".join(f"{old} -> {new}" for old, new in renamed.items()),
                          highlight=False)
        console.print(f"set them with `unlearnkit forget --set KEY=VALUE` or unlearnkit.unlearn(..., "
                      f"method={pattern!r}, KEY=VALUE).", highlight=False)
        return
    names = list_methods(pattern)
    if not names:
        from .errors import unknown_name_error

        raise unknown_name_error("method", pattern, list_methods())
    rows = [[name, method_spec(name).description] for name in names]
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
    recipe_name: str = typer.Option("scratch", "--recipe", help="Named recipe: scratch or finetune-original "
                                    "(pretrained backbone fine-tuned, the PruneLoRA setting); options below override it."),
    epochs: Optional[int] = typer.Option(None, help="Training epochs (recipe default 30)."),
    lr: Optional[float] = typer.Option(None, help="Peak learning rate."),
    optimizer: Optional[str] = typer.Option(None, help="sgd, adam or adamw."),
    batch_size: Optional[int] = typer.Option(None, help="Batch size."),
    weight_decay: Optional[float] = typer.Option(None, help="Weight decay."),
    schedule: Optional[str] = typer.Option(None, help="constant, cosine or step."),
    augment: Optional[bool] = typer.Option(None, "--augment/--no-augment", help="Random crop + flip."),
    augment_epochs: Optional[int] = typer.Option(None, "--augment-epochs", help="With --augment: only the first N "
                                                 "epochs augment, the rest train on the plain images."),
    subset: Optional[int] = typer.Option(None, help="cifar10 and mnist: a class-balanced subset of N training images."),
    model_arg: List[str] = typer.Option([], "--model-arg", help="Model argument KEY=VALUE (repeatable), e.g. "
                                        "width=32, pretrained=true, resize=224, weights=FILE."),
    init: Optional[str] = typer.Option(None, "--init", help="Start from `unlearnkit pretrain` weights (FILE or "
                                       "unlearnkit:NAME.safetensors), the head freshly drawn; retrain then starts "
                                       "there too."),
    keep_head: bool = typer.Option(False, "--keep-head", help="With --init: load the pretrained head as well."),
    resume_dir: Optional[Path] = typer.Option(None, "--resume-dir", help="Checkpoint every epoch into this folder "
                                              "(not inside --out); the same command continues an interrupted "
                                              "training from its last epoch; removed once the model is saved."),
    data_root: Optional[str] = DataRootOpt, overwrite: bool = OverwriteOpt,
    seed: int = SeedOpt, device: str = DeviceOpt, quiet: bool = QuietOpt,
):
    """Train an original model and save it as a checkpoint."""
    from .training import Recipe, accuracy
    from .workflow import check_output_dir, parse_model_args, save_model, train_original

    _setup(quiet)
    target = check_output_dir(out, "train", overwrite=overwrite)
    values = dict(epochs=epochs, lr=lr, optimizer=optimizer, batch_size=batch_size, weight_decay=weight_decay,
                  schedule=schedule, augment=augment, augment_epochs=augment_epochs)
    recipe = Recipe.preset(recipe_name, **{k: v for k, v in values.items() if v is not None})
    dataset_args = {"subset": subset} if subset is not None else {}  # 0 is refused by the loader, not ignored
    model_kwargs = parse_model_args(model_arg)
    if keep_head and init is None:
        raise UnlearnkitError("--keep-head needs --init FILE (the pretrained weights whose head to keep).")
    start = None
    if init is not None:
        from .pretraining import init_record

        start = init_record({"weights": init, "reset_head": not keep_head}, dataset=dataset,
                            dataset_args=dataset_args, model=model, model_kwargs=model_kwargs)
    training = {"dataset": dataset, "dataset_args": dataset_args, "model": model, "model_kwargs": model_kwargs,
                "recipe": recipe.replace(seed=seed).key_dict(), "data_root": data_root,
                "init": None if start is None else {"sha256": start["sha256"], "reset_head": start["reset_head"]}}
    with _epoch_checkpoints(resume_dir, target, training, f"train {model}") as resume:
        net, meta, splits = train_original(dataset, model, recipe, seed=seed, device=device, data_root=data_root,
                                           dataset_args=dataset_args, model_kwargs=model_kwargs, init=start)

    test_acc = accuracy(net, splits.test)
    _on_interrupt(lambda: _writing(out))
    save_model(target, net, meta, {"seed": seed, "test_accuracy": test_acc}, overwrite=overwrite)
    _on_interrupt(lambda: f"the checkpoint was written to {out}")
    if resume is not None:
        resume.clear()
    console.print(f"trained {model} on {dataset}: test accuracy {test_acc:.2f}% -> {out}", markup=False)


def _epoch_checkpoints(resume_dir: Path | None, out: Path, training: dict, label: str):
    """``--resume-dir``: epoch checkpoints keyed by what determines ``training`` (a no-op context without it)."""
    if resume_dir is None:
        return contextlib.nullcontext()
    from .resume import resumable
    from .utils import package_version, stable_hash

    _check_resume_dir(resume_dir, out)
    _on_interrupt(lambda: f"the last completed epoch is kept in {resume_dir}; the same command resumes from it"
                  if any(resume_dir.glob("fit*.pt")) else "nothing was written")
    key = stable_hash({**training, "version": package_version()})
    return resumable(resume_dir, key=key, label=label, max_overhead=0.01)


def _check_resume_dir(resume_dir: Path, out: Path) -> None:
    """The epoch checkpoints live apart from the output (which must be new or empty) and are not a file."""
    place = resume_dir.resolve()
    if place == out or out in place.parents:
        raise UnlearnkitError(f"--resume-dir {resume_dir} is inside --out {out}; give it a folder of its own.")
    if place.exists() and not place.is_dir():
        raise UnlearnkitError(f"--resume-dir {resume_dir} is a file; give a folder (new, or one a previous run "
                              "of this command wrote).")


@app.command()
def pretrain(
    out: Path = typer.Option(..., "--out", "-o", help="Weights file to write (.safetensors; FILE.json beside it)."),
    exclude_subset: int = typer.Option(..., "--exclude-subset", help="Train on the images NOT in this class-balanced "
                                       "subset (the benchmark's dataset_args subset)."),
    subset_seed: int = typer.Option(0, "--subset-seed", help="The subset's seed (the benchmark's subset_seed)."),
    dataset: str = DatasetOpt,
    model: str = typer.Option("resnet20", "--model", "-m", help="A registered model (see `unlearnkit models`)."),
    epochs: Optional[int] = typer.Option(None, help="Training epochs (default 15)."),
    lr: Optional[float] = typer.Option(None, help="Peak learning rate (default 0.1)."),
    optimizer: Optional[str] = typer.Option(None, help="sgd (default), adam or adamw."),
    batch_size: Optional[int] = typer.Option(None, help="Batch size (default 128)."),
    weight_decay: Optional[float] = typer.Option(None, help="Weight decay (default 5e-4)."),
    schedule: Optional[str] = typer.Option(None, help="constant, cosine (default) or step."),
    augment: Optional[bool] = typer.Option(None, "--augment/--no-augment", help="Random crop + flip (default on)."),
    model_arg: List[str] = typer.Option([], "--model-arg", help="Model argument KEY=VALUE (repeatable)."),
    resume_dir: Optional[Path] = typer.Option(None, "--resume-dir", help="Checkpoint every epoch into this folder; "
                                              "the same command continues an interrupted pretraining from its last "
                                              "epoch; removed once the weights are written."),
    data_root: Optional[str] = DataRootOpt, overwrite: bool = OverwriteOpt,
    seed: int = SeedOpt, device: str = DeviceOpt, quiet: bool = QuietOpt,
):
    """Pretrain a backbone on the training images outside a benchmark's subset (a benchmark's `init`)."""
    from .pretraining import PRETRAIN_RECIPE, is_pretrain_file, pretrain as run_pretrain, save_pretrained, sidecar_path
    from .training import Recipe
    from .workflow import check_output_file, parse_model_args

    _setup(quiet)
    if out.suffix != ".safetensors":
        raise UnlearnkitError(f"--out {str(out)!r} must be a .safetensors file path.")
    target = check_output_file(out, overwrite=overwrite, is_previous=is_pretrain_file)
    side = sidecar_path(target)
    if side.exists() and not (target.exists() and is_pretrain_file(target)):
        raise UnlearnkitError(f"{str(side)!r} exists and was not written by `unlearnkit pretrain`; refusing to "
                              "replace it: choose another --out.")
    values = dict(epochs=epochs, lr=lr, optimizer=optimizer, batch_size=batch_size, weight_decay=weight_decay,
                  schedule=schedule, augment=augment)
    recipe = Recipe(**{**PRETRAIN_RECIPE, **{k: v for k, v in values.items() if v is not None}})
    model_kwargs = parse_model_args(model_arg)
    training = {"command": "pretrain", "dataset": dataset, "model": model, "model_kwargs": model_kwargs,
                "exclude_subset": exclude_subset, "subset_seed": subset_seed,
                "recipe": recipe.replace(seed=seed).key_dict(), "data_root": data_root}
    with _epoch_checkpoints(resume_dir, target, training, f"pretrain {model}") as resume:
        net, provenance = run_pretrain(dataset, model, recipe, exclude_subset=exclude_subset, subset_seed=subset_seed,
                                       seed=seed, device=device, data_root=data_root, model_kwargs=model_kwargs)
    if resume is not None:  # the epochs trained before an interruption count too
        provenance["train_seconds"] = round(provenance["train_seconds"] + resume.seconds_before, 1)
    _on_interrupt(lambda: _writing(target))
    record = save_pretrained(target, net, provenance)
    _on_interrupt(lambda: f"the weights were written to {target}")
    if resume is not None:
        resume.clear()
    console.print(f"pretrained {model} on {provenance['num_images']} {dataset} images outside the "
                  f"{exclude_subset}-image subset: test accuracy {provenance['test_accuracy']:.2f}% in "
                  f"{provenance['train_seconds']:.0f} s -> {target} (sha256 {record['sha256'][:12]}) and {side.name}",
                  markup=False)


@app.command()
def forget(
    checkpoint: Path = typer.Option(..., "--checkpoint", "-c", help="Checkpoint directory of the original."),
    method: str = typer.Option("finetune", "--method", "-m", help="A registered method (see `unlearnkit methods`)."),
    forget_spec: str = typer.Option(..., "--forget", "-f", help="class:K[,K], random:F or ids:FILE."),
    out: Path = typer.Option(..., "--out", "-o", help="Directory for the unlearned checkpoint and result.json."),
    set_: List[str] = typer.Option([], "--set", "-s", help="Method parameter KEY=VALUE (repeatable)."),
    data_root: Optional[str] = DataRootOpt, overwrite: bool = OverwriteOpt,
    seed: int = SeedOpt, device: str = DeviceOpt, quiet: bool = QuietOpt,
):
    """Unlearn a forget set from a checkpoint with one method.

    On a checkpoint that is itself an unlearned model, the retain set also leaves out every
    id forgotten before (the checkpoint's `forgotten` record), so nothing comes back.
    """
    from .api import unlearn
    from .checkpoint import RESULT
    from .metrics import evaluate
    from .utils import to_jsonable
    from .workflow import (check_output_dir, forget_data, forgotten_after, load_original, method_config_for,
                           method_options_for, parse_overrides, save_model)

    _setup(quiet)
    target = check_output_dir(out, "forget", inputs=(checkpoint,), overwrite=overwrite)
    config = method_config_for(method, {}, parse_overrides(method, set_))  # validate before loading anything
    net, meta, splits = load_original(checkpoint, data_root=data_root, device=device)
    config = method_config_for(method, meta, parse_overrides(method, set_))
    data = forget_data(splits, forget_spec, seed, meta)
    result = unlearn(net, data.retain, data.forget, method, config=config, device=device, seed=seed,
                     **method_options_for(method, meta))
    evaluation = evaluate(result.model, data, result=result, seed=seed)
    record = {"result": result.to_dict(), "forget": data.request.to_dict(), "evaluation": evaluation.to_dict(),
              "original": str(checkpoint)}
    result_json = json.dumps(to_jsonable(record), indent=2, sort_keys=True) + "\n"
    _on_interrupt(lambda: _writing(out))
    save_model(target, result.model, meta, {"unlearned": {"method": method, "forget": data.request.to_dict(),
                                                          "config": config.to_dict(), "seed": seed},
                                            "forgotten": forgotten_after(meta, data)},
               overwrite=overwrite, extra_files={RESULT: result_json})
    _on_interrupt(lambda: f"the unlearned checkpoint was written to {out}")
    summary = evaluation.summary()
    columns = ["UA", "RA", "TA", "MIA-Efficacy"]
    rows = [[method, *[summary[k] for k in columns], result.seconds]]
    console.print(_table(f"forget {forget_spec}", ["method", *columns, "seconds"], rows))
    console.print(f"unlearned model -> {out}", markup=False)


@app.command("compact")
def compact_(
    checkpoint: Path = typer.Option(..., "--checkpoint", "-c", help="Checkpoint of a structurally pruned model."),
    out: Path = typer.Option(..., "--out", "-o", help="Directory for the compact checkpoint."),
    overwrite: bool = OverwriteOpt, quiet: bool = QuietOpt,
):
    """Remove pruned channels physically (same outputs, fewer parameters); see docs/methods/pruning.md."""
    from .checkpoint import load_checkpoint
    from .components.compaction import compact
    from .workflow import check_output_dir, save_model

    _setup(quiet)
    target = check_output_dir(out, "compact", inputs=(checkpoint,), overwrite=overwrite)
    net, meta = load_checkpoint(checkpoint)
    result = compact(net)
    if not result.removed:
        raise UnlearnkitError(f"{str(checkpoint)!r} has no removable pruned channel; prune with "
                              "`--method prune_finetune --set prune_norms=true` (or prune_lora) first.")
    removed = {**(meta.get("compacted") or {})}
    for layer, n in result.removed.items():
        removed[layer] = removed.get(layer, 0) + n
    _on_interrupt(lambda: _writing(out))
    save_model(target, result.model, meta, {"compacted": removed, "compacted_from": str(checkpoint)},
               overwrite=overwrite)
    _on_interrupt(lambda: f"the compact checkpoint was written to {out}")
    console.print(f"compact: {sum(result.removed.values())} channels removed in {len(result.removed)} layers, "
                  f"parameters {result.params_before:,} -> {result.params_after:,} -> {out}", markup=False)


@app.command("eval")
def eval_(
    checkpoint: Path = typer.Option(..., "--checkpoint", "-c", help="Checkpoint directory of the model to evaluate."),
    forget_spec: str = typer.Option(..., "--forget", "-f", help="class:K[,K], random:F or ids:FILE."),
    reference: Optional[Path] = typer.Option(None, "--reference", "-r",
                                             help="Checkpoint of the reference (normally the retrain oracle)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Write the evaluation as JSON to this file."),
    data_root: Optional[str] = DataRootOpt, overwrite: bool = OverwriteOpt,
    seed: int = SeedOpt, device: str = DeviceOpt, quiet: bool = QuietOpt,
):
    """Evaluate a checkpoint on a forget request (UA, RA, TA, MIA, gaps to a reference); see docs/metrics.md."""
    from .metrics import evaluate
    from .utils import atomic_write_json
    from .workflow import check_output_file, forget_data, load_original, load_reference

    _setup(quiet)
    inputs = (checkpoint,) + ((reference,) if reference is not None else ())
    target = (check_output_file(out, inputs=inputs, overwrite=overwrite, is_previous=_is_eval_record)
              if out is not None else None)
    net, meta, splits = load_original(checkpoint, data_root=data_root, device=device)
    ref = load_reference(reference, meta, splits, device=device) if reference is not None else None
    data = forget_data(splits, forget_spec, seed, meta)
    result = _stored_result(checkpoint, data.request.to_dict())
    evaluation = evaluate(net, data, reference=ref, result=result, seed=seed)
    record = {**evaluation.to_dict(), "checkpoint": str(checkpoint),
              "reference": str(reference) if reference is not None else None}
    if target is not None:
        atomic_write_json(target, record)
        _on_interrupt(lambda: f"the evaluation was written to {out}")
    console.print(evaluation.table(escape(f"eval {checkpoint} on {forget_spec}")))
    if out is not None:
        console.print(f"evaluation -> {out}", markup=False)


def _is_eval_record(path: Path) -> bool:
    """A JSON file `unlearnkit eval --out` wrote before."""
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(record, dict) and {"metrics", "checkpoint", "reference"} <= set(record)


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
    console.print("UA = 100 - forget acc, RA retain acc, TA test acc without class 3, MIA-Efficacy % of the forget "
                  "set an SVC attack calls non-member; Avg.Gap = mean |difference| to retrain over those four "
                  "(docs/metrics.md).", highlight=False)


@app.command()
def bench(
    config: str = typer.Option(..., "--config", "-c", help="A config file, or a shipped one: smoke, cifar10-memorise, cifar10-pretrained, cifar10-cpu, cifar10-full, cifar10-gpu, unlearn-sparse-gpu."),
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
    stored: list[dict] = []
    partial = (cache_dir if cache_dir is not None else out / "cache") / "partial"

    def interrupted_bench() -> str:
        line = f"{len(stored)} new run(s) stored in {out}; resume with the same command (stored runs are reused)"
        if any(partial.glob("*/fit*.pt")):
            line += f"; a training in progress resumes from its last completed epoch (kept in {partial})"
        return line

    _on_interrupt(interrupted_bench)
    summary = run_benchmark(cfg, out, overwrite=overwrite, device=device, cache_dir=cache_dir,
                            on_result=stored.append)
    md, html_path = write_report(out)
    console.print(f"bench {cfg.name}: {summary.computed} run(s) computed, {summary.cached} reused, "
                  f"{summary.originals_trained} original(s) and {summary.oracles_trained} oracle(s) trained "
                  f"in {summary.seconds:.0f} s")
    for line in summary.errors:
        err_console.print(f"failed: {line}", markup=False, highlight=False, soft_wrap=True)
    console.print(f"report -> {md} and {html_path}", markup=False)


@app.command()
def report(results: Path = typer.Argument(..., help="A directory written by `unlearnkit bench`.")):
    """Rewrite report.md and report.html from a benchmark's stored results."""
    from .bench import write_report

    md, html_path = write_report(results)
    console.print(f"report -> {md} and {html_path}", markup=False)


@app.command()
def prepare(
    checkpoint: Path = typer.Option(..., "--checkpoint", "-c", help="Checkpoint directory of the original."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Cache file (default: CHECKPOINT/pgu_gram.safetensors)."),
    batch_size: int = typer.Option(128, "--batch-size", help="Batch size of the no-grad pass."),
    max_dense_features: int = typer.Option(4096, help="Wider layers get a randomized low-rank sketch."),
    rank: int = typer.Option(256, help="Sketch rank of the low-rank layers."),
    max_samples: int = typer.Option(1000, help="Training samples the Grams hold, chosen by id (0: all)."),
    max_patches: int = typer.Option(64, help="Patches (conv positions or tokens) per sample (0: all)."),
    data_root: Optional[str] = DataRootOpt, overwrite: bool = OverwriteOpt,
    seed: int = SeedOpt, device: str = DeviceOpt, quiet: bool = QuietOpt,
):
    """PGU's one-time step: per-layer input Grams over a sample of the training set, beside the checkpoint."""
    import time

    from .components.gradient_projection import default_cache_path
    from .components.gradient_projection import prepare as pgu_prepare
    from .workflow import check_output_file, load_original

    _setup(quiet)
    for name, value in (("--max-samples", max_samples), ("--max-patches", max_patches)):
        if value < 0:
            raise UnlearnkitError(f"{name} must be a positive integer or 0 (all); got {value}.")
    if out is not None:  # the default path is the checkpoint's own cache, recomputed each time
        path = check_output_file(out, inputs=(checkpoint,), overwrite=overwrite, is_previous=_is_pgu_cache)
    else:
        path = default_cache_path(checkpoint)
    net, _, splits = load_original(checkpoint, data_root=data_root, device=device)
    start = time.perf_counter()
    cache = pgu_prepare(net, splits.train, path=path, batch_size=batch_size, max_dense_features=max_dense_features,
                        rank=rank, seed=seed, max_samples=max_samples or None, max_patches=max_patches or None)
    _on_interrupt(lambda: f"the PGU cache was written to {path}")
    console.print(f"PGU Gram of {len(cache.layers)} layers over {len(cache.gram_ids)} of {len(cache.ids)} samples "
                  f"({cache.memory_bytes / 2**20:.1f} MiB) in {time.perf_counter() - start:.1f} s -> {path}",
                  markup=False)


def _is_pgu_cache(path: Path) -> bool:
    """A file `unlearnkit prepare` wrote before (a safetensors file with PGU's header)."""
    from safetensors import SafetensorError, safe_open

    from .components.gradient_projection import META_KEY

    try:
        with safe_open(str(path), framework="pt") as f:
            return META_KEY in (f.metadata() or {})
    except (SafetensorError, OSError, ValueError):
        return False


# ---- deletion requests: a model store with a ledger (docs/deletion-requests.md) ----------------------
def _gate_value(text: Optional[str], name: str):
    """'none' / 'off' disables a gate; otherwise a number."""
    if text is None:
        return None, False
    if text.strip().lower() in ("none", "off"):
        return None, True
    try:
        return float(text), True
    except ValueError:
        raise UnlearnkitError(f"--{name} must be a number or 'none'; got {text!r}.") from None


KeyFileOpt = typer.Option(None, "--key-file", help="File holding the store's signing key (HMAC-SHA256); "
                           "default $UNLEARNKIT_STORE_KEY. A signed store needs it for every command.")


def _store_key(key_file: Optional[Path]) -> Optional[bytes]:
    """The key in ``key_file`` (its trailing newline removed), or None to use $UNLEARNKIT_STORE_KEY."""
    if key_file is None:
        return None
    try:
        key = key_file.read_bytes().rstrip(b"\r\n")
    except OSError as e:
        raise UnlearnkitError(f"Cannot read --key-file {str(key_file)!r}: {e.strerror}.") from None
    if not key:
        raise UnlearnkitError(f"--key-file {str(key_file)!r} is empty; it must hold the store's key.")
    return key


def _print_notes(st) -> None:
    for note in st.notes:
        err_console.print(f"note: {note}", markup=False, highlight=False, soft_wrap=True)


@app.command("store-init")
def store_init(
    checkpoint: Path = typer.Option(..., "--checkpoint", "-c", help="Checkpoint directory (from `unlearnkit train`)."),
    store: Path = typer.Option(..., "--store", help="New store directory."),
    method: List[str] = typer.Option(["finetune"], "--method", "-m", help="Method(s); the first is the default, "
                                     "the rest the fallback order (repeatable)."),
    fallback: bool = typer.Option(False, "--fallback/--no-fallback", help="Try the next method when one fails its gates."),
    set_: List[str] = typer.Option([], "--set", "-s", help="Method parameter METHOD.KEY=VALUE (repeatable)."),
    forget_margin: Optional[str] = typer.Option(None, help="Gate: forget acc <= test acc + this (points; default 2, 'none' off)."),
    forget_confidence: Optional[str] = typer.Option(None, help="Forget gate refuses only when the Wilson lower bound "
                                                    "of forget acc at this confidence exceeds its limit (default "
                                                    "0.95; 'none': compare the measured accuracy)."),
    max_retain_drop: Optional[str] = typer.Option(None, help="Gate: retain acc drop <= this (points; default 5, 'none' off)."),
    min_mia_efficacy: Optional[str] = typer.Option(None, help="Gate: MIA-Efficacy >= this (%; default off)."),
    retrain_after: Optional[int] = typer.Option(None, help="Full retrain once this many requests were unlearned."),
    max_drift: Optional[float] = typer.Option(None, help="Full retrain once retain acc dropped more than this (points)."),
    recalibrate_bn: str = typer.Option("auto", help="Recalibrate BatchNorm on retain data: auto, on or off."),
    training_ids: Optional[str] = typer.Option(None, help="ids:FILE of forget-able training ids (default: all)."),
    record_ids: bool = typer.Option(False, "--record-ids", help="Write forget ids into receipts (default: hash only)."),
    lock_timeout: float = typer.Option(60.0, help="Seconds a second process waits for the store's lock."),
    key_file: Optional[Path] = KeyFileOpt,
    data_root: Optional[str] = DataRootOpt, seed: int = SeedOpt, device: str = DeviceOpt, quiet: bool = QuietOpt,
):
    """Create a model store (current model, ledger, gates, policy) from a checkpoint."""
    from .store import Store
    from .workflow import parse_overrides

    _setup(quiet)
    configs: dict = {}
    for pair in set_:
        name, dot, rest = pair.partition(".")
        if not dot or "=" not in rest:
            raise UnlearnkitError(f"--set expects METHOD.KEY=VALUE; got {pair!r}.")
        configs.setdefault(name, {}).update(parse_overrides(name, [rest]))
    options: dict = {}
    for key, text in (("forget_margin", forget_margin), ("forget_confidence", forget_confidence),
                      ("max_retain_drop", max_retain_drop), ("min_mia_efficacy", min_mia_efficacy)):
        value, given = _gate_value(text, key.replace("_", "-"))
        if given:
            options[key] = value
    bn = {"auto": "auto", "on": True, "off": False}.get(recalibrate_bn)
    if bn is None:
        raise UnlearnkitError(f"--recalibrate-bn must be auto, on or off; got {recalibrate_bn!r}.")
    ids = None
    if training_ids is not None:
        from .data.forget import read_ids_file

        ids = read_ids_file(training_ids[4:] if training_ids.startswith("ids:") else training_ids)
    st = Store.create(store, checkpoint, training_ids=ids, data_root=data_root, key=_store_key(key_file),
                      methods=list(method),
                      method_configs=configs, fallback=fallback, retrain_after=retrain_after, max_drift=max_drift,
                      recalibrate_bn=bn, record_ids=record_ids, lock_timeout=lock_timeout, seed=seed, device=device,
                      **options)
    s = st.summary()
    console.print(f"store {store}: model {s['model']} ({s['model_hash']}), {s['training_ids']} training ids, "
                  f"methods {', '.join(st.config.methods)}", markup=False)


@app.command("request")
def request_(
    store: Path = typer.Option(..., "--store", help="Store directory (from `unlearnkit store-init`)."),
    forget_spec: str = typer.Option(..., "--forget", "-f", help="ids:FILE (.txt or .npy) of training ids to forget."),
    method: Optional[str] = typer.Option(None, "--method", "-m", help="Method (default: the store's first)."),
    set_: List[str] = typer.Option([], "--set", "-s", help="Method parameter KEY=VALUE for this request (repeatable)."),
    fallback: Optional[bool] = typer.Option(None, "--fallback/--no-fallback", help="Override the store's fallback."),
    record_ids: Optional[bool] = typer.Option(None, "--record-ids/--hash-ids", help="Ids in the receipt, or their hash."),
    receipt_out: Optional[Path] = typer.Option(None, "--receipt", help="Also write the receipt as JSON to this file."),
    audit: Optional[str] = typer.Option(None, "--audit", help="Record an audit of the deletion in the receipt: relearn "
                                        "(relearning attack on the model before and after; seconds), full or full:K "
                                        "(also forgetting quality and U-LiRA over K originals and K retrains; K "
                                        "default: the store's audit_k). See docs/deletion-requests.md."),
    lock_timeout: Optional[float] = typer.Option(None, help="Seconds to wait for another process's request."),
    key_file: Optional[Path] = KeyFileOpt,
    data_root: Optional[str] = DataRootOpt, quiet: bool = QuietOpt,
):
    """Run one deletion request on a store. Exit 0: applied (or nothing new to forget); 3: refused by a gate;
    2: not applied (bad input, damaged or locked store, disk full, no permission; the store is unchanged)."""
    from .audit.deletion import parse_audit_spec
    from .store import Store
    from .utils import atomic_write_json
    from .workflow import parse_overrides

    _setup(quiet)
    if not forget_spec.startswith("ids:"):
        raise UnlearnkitError(f"--forget must be ids:FILE for a store request; got {forget_spec!r}.")
    parse_audit_spec(audit, 3)  # a bad value fails before the store is opened (K is checked again with the store's)
    _on_interrupt(lambda: f"the store holds the model from before or after this request; `unlearnkit store-show "
                          f"--store {store}` says which")
    st = Store.open(store, data_root=data_root, lock_timeout=lock_timeout, key=_store_key(key_file))
    _print_notes(st)
    overrides = parse_overrides(method or st.config.methods[0], set_)
    receipt = st.request(forget_spec, method=method, fallback=fallback, record_ids=record_ids, audit=audit,
                         **overrides)
    if receipt_out is not None:
        atomic_write_json(receipt_out, receipt.to_dict())
    f = receipt.forget
    if f["num_already_forgotten"]:
        console.print(f"{f['num_already_forgotten']} of {f['num_ids']} ids were already forgotten by earlier requests")
    columns = ["forget_acc", "UA", "RA", "TA", "MIA-Efficacy"]
    rows = [[a["method"], *[a.get("figures", {}).get(c, "n/a") for c in columns],
             "pass" if a.get("passed") else ("error: " + a["error"] if "error" in a else "fail")]
            for a in receipt.attempts]
    if rows:
        console.print(_table(f"request {receipt.request_id}", ["method", *columns, "gates"], rows))
    for a in receipt.attempts:
        for name, g in a.get("gates", {}).items():
            if isinstance(g, dict) and not g.get("passed"):
                text = g.get("message") or f"gate {name} failed: {g['value']:.2f} (rule {g['rule']} = {g['limit']:.2f})"
                console.print(f"{a['method']}: {text}", markup=False, highlight=False)
    if "audit" in receipt.extra:
        console.print(_audit_line(receipt.extra["audit"]), markup=False, highlight=False, soft_wrap=True)
    if "ledger_pending" in receipt.extra:
        err_console.print(f"note: {receipt.extra['ledger_pending']}", markup=False, highlight=False, soft_wrap=True)
    console.print(f"{receipt.status}: {receipt.request_id}, model {receipt.model_before} -> {receipt.model_after} "
                  f"({receipt.version})", markup=False)
    if receipt.exit_code:
        raise SystemExit(receipt.exit_code)  # typer.Exit is returned, not raised, by main()'s non-standalone app()


def _audit_line(audit: dict) -> str:
    """One line of a receipt's audit: the relearning attack, and the per-example figures of a full one."""
    if "skipped" in audit:
        return f"audit skipped: {audit['skipped']}"
    rel, parts = audit.get("relearn", {}), []
    if "error" in rel:
        parts.append(f"relearn attack not run: {rel['error']}")
    elif rel:
        def steps(s):
            return f"> {rel['steps']}" if s is None else str(s)

        a = rel["after"]
        parts.append(f"relearn attack on {rel['heldout_ids']} held-out ids: accuracy "
                     f"{rel['before']['heldout_acc']:.1f} before -> {a['heldout_acc']:.1f} after; back at "
                     f"{rel['level']:.1f} in {steps(a['steps_to_level'])} steps on {rel['relearn_ids']} forgotten ids "
                     f"(retain-only control: "
                     f"{steps(a['retain_control_steps_to_level'])})")
    full = audit.get("full")
    if full and "error" in full:
        parts.append(f"full audit not run: {full['error']}")
    elif full:
        parts.append(f"K={full['k']}: forgetting quality {full['forgetting_quality']:.3f} (ceiling "
                     f"{full['null_ceiling']:.3f}), U-LiRA {full['ulira_accuracy']:.1f}%, relearn steps "
                     f"{full['relearn_steps']:g} vs retrain {full['retrain_relearn_steps']:g} ({full['audit_json']})")
    return "audit: " + "; ".join(parts)


@app.command("store-show")
def store_show(
    store: Path = typer.Option(..., "--store", help="Store directory."),
    last: int = typer.Option(20, "--last", help="Show the last N receipts."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary and receipts as JSON."),
    key_file: Optional[Path] = KeyFileOpt,
):
    """Show a store: current model, forgotten count, and its ledger of deletion requests (chain verified)."""
    from .store import Store

    st = Store.open(store, key=_store_key(key_file))
    _print_notes(st)
    receipts = st.receipts()[-last:] if last > 0 else []
    if as_json:
        print(json.dumps({"summary": st.summary(), "receipts": [r.to_dict() for r in receipts]}, indent=2))
        return
    s = st.summary()
    console.print(f"store {store}: model {s['model']} {s['model_hash']} ({s['version']}), {s['forgotten']} of "
                  f"{s['training_ids']} training ids forgotten; {s['requests']} requests ({s['applied']} applied, "
                  f"{s['refused']} refused, {s['noop']} nothing new)", markup=False)
    rows = [[r.request_id.split("-")[0], r.status, r.method or "-", r.forget["num_new"],
             r.figures.get("UA", "-"), r.figures.get("RA", "-"), r.figures.get("TA", "-"),
             r.figures.get("MIA-Efficacy", "-")] for r in receipts]
    console.print(_table("ledger (store-show --json for full receipts)",
                         ["request", "status", "method", "new ids", "UA", "RA", "TA", "MIA"], rows))


@app.command("audit")
def audit_(
    method: Optional[str] = typer.Option(None, "--method", "-m", help="A registered method (default finetune)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output directory (a previous audit's is reused; else empty)."),
    forget_spec: Optional[str] = typer.Option(None, "--forget", "-f", help="class:K[,K], random:F or ids:FILE (default class:3)."),
    k: Optional[int] = typer.Option(None, "--k", "-k", help="Originals, unlearned models and oracles each (>= 3; default 8)."),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML/TOML/JSON of audit fields; options override it."),
    set_: List[str] = typer.Option([], "--set", "-s", help="Method parameter KEY=VALUE (repeatable)."),
    dataset: Optional[str] = typer.Option(None, "--dataset", "-d", help="digits (default), mnist or cifar10."),
    model: Optional[str] = typer.Option(None, "--model", help="The originals' model (default cnn)."),
    model_arg: List[str] = typer.Option([], "--model-arg", help="Model argument KEY=VALUE (repeatable), e.g. width=16."),
    epochs: Optional[int] = typer.Option(None, "--epochs", help="The originals' (and oracles') training epochs."),
    lr: Optional[float] = typer.Option(None, "--lr", help="The originals' learning rate."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="The originals' batch size."),
    relearn_steps: Optional[int] = typer.Option(None, "--relearn-steps", help="Steps of the relearning attack (default 30)."),
    attacks: Optional[str] = typer.Option(None, "--attacks", help="competition (default) or all threshold attacks."),
    seed: Optional[int] = typer.Option(None, "--seed", help="First model seed (default 0)."),
    cache_dir: Optional[Path] = typer.Option(None, "--cache-dir", help="Cache of originals and oracles (e.g. a bench's "
                                             "OUT/cache); default OUT/cache."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Write into a non-empty directory that is not an audit."),
    data_root: Optional[str] = DataRootOpt,
    device: Optional[str] = typer.Option(None, "--device", help="cpu, cuda, cuda:N or auto (default)."),
    quiet: bool = QuietOpt,
):
    """Audit a method over K models: per-example forgetting quality, U-LiRA, relearning attack; writes report.md."""
    from .audit import audit
    from .bench.config import read_config_file
    from .workflow import parse_model_args, parse_overrides

    _setup(quiet)
    if config is not None and not config.is_file():
        raise UnlearnkitError(f"Audit config {str(config)!r} does not exist.")
    values = read_config_file(config) if config is not None else {}
    method = method or values.pop("method", "finetune")
    values.pop("method", None)
    recipe = dict(values.get("recipe", {}))
    recipe.update({k_: v for k_, v in (("epochs", epochs), ("lr", lr), ("batch_size", batch_size)) if v is not None})
    options = {"scenario": forget_spec, "k": k, "dataset": dataset, "model": model, "relearn_steps": relearn_steps,
               "attacks": attacks, "seed": seed, "data_root": data_root, "device": device}
    values.update({name: v for name, v in options.items() if v is not None})
    values["recipe"] = recipe
    if model_arg:
        values["model_kwargs"] = {**values.get("model_kwargs", {}), **parse_model_args(model_arg)}
    if set_:
        values["method_args"] = {**values.get("method_args", {}), **parse_overrides(method, set_)}
    result = audit(method, out, config=values, overwrite=overwrite, cache_dir=cache_dir)
    r = result.results
    fq, lira, rel = r["forgetting_quality"], r["ulira"], r["relearn"]
    console.print(f"audit {method} K={values.get('k', 8)}: forgetting quality {fq['forgetting_quality']:.3f} "
                  f"(null ceiling {fq['null_ceiling']:.3f}, untouched original {fq['original']:.3f}); "
                  f"U-LiRA accuracy {lira['accuracy']:.1f}%; relearn steps {rel['unlearned']['forget']['median_steps']:g}"
                  f" vs retrain {rel['retrain']['forget']['median_steps']:g}; {r['seconds']:.0f} s")
    console.print(f"report -> {result.report}")

_USAGE_ERRORS = {"UsageError", "BadParameter", "MissingParameter", "NoSuchOption", "BadOptionUsage",
                 "BadArgumentUsage", "ClickException", "FileError"}


def _command():
    """The click command typer builds from ``app``, with flags shown as flags in --help (no ``<bool>``)."""
    group = typer.main.get_command(app)
    for command in [group, *getattr(group, "commands", {}).values()]:
        with command.context_class(command) as ctx:
            help_option = command.get_help_option(ctx)
        for param in [*command.params, *([help_option] if help_option is not None else [])]:
            if getattr(param, "is_flag", False):
                param.metavar = ""
    return group


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit code (see the module docstring)."""
    _interrupt_note[:] = []
    _terminated[:] = []
    with _sigterm_stops_like_ctrl_c():
        try:
            code = _command()(args=argv, standalone_mode=False)  # typer turns Ctrl-C in a command into Exit(130)
        except UnlearnkitError as e:
            _print_error(f"Error: {e}")
            return EXIT_USER_ERROR
        except (typer.Exit, SystemExit) as e:
            code = getattr(e, "exit_code", getattr(e, "code", 0))
        except (typer.Abort, KeyboardInterrupt):
            code = EXIT_INTERRUPTED
        except Exception as e:
            # usage errors (unknown option, missing argument) from click, or from the copy typer vendors
            if type(e).__name__ in _USAGE_ERRORS and hasattr(e, "show"):
                e.show()
                return EXIT_USER_ERROR
            raise
        code = code if isinstance(code, int) else EXIT_OK  # a command's return value is not an exit code
        if code == EXIT_INTERRUPTED:
            done = _interrupt_note[0]() if _interrupt_note else "nothing was written"
            code, what = (EXIT_TERMINATED, "terminated") if _terminated else (code, "interrupted")
            _print_error(f"{what}: {done}.")
    return code


if __name__ == "__main__":
    sys.exit(main())
