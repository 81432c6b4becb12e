"""Epoch checkpoints for long trainings: ``with resumable(directory, key=...)``, and ``fit`` resumes.

Inside the context every ``training.fit`` call gets a slot, numbered by call order (a method
that trains twice has slots 0 and 1), and after each completed epoch writes
``directory/fit<slot>.pt`` atomically: the model's state_dict, the optimizer's and the LR
schedule's state, the batch-order/augmentation generator, torch's global CPU (and CUDA) RNG,
NumPy's and Python's RNG, the fp16 gradient scaler of a mixed-precision context, the steps,
sample-passes and seconds done. A ``fit`` whose slot file exists with a matching fingerprint
(the context's key, the slot, the epochs, batch size, data size, schedule and the model's
tensor names and shapes) restores it and continues from the next epoch; the final weights are
bit for bit those of an uninterrupted run. A finished slot is restored without training, so the
code between two ``fit`` calls runs again from the same state. A mismatching or unreadable file
is ignored (one line says so) and overwritten by the next epoch's checkpoint. With
``max_overhead`` some epochs' writes are skipped to bound the time spent writing (a large model
with short epochs, on a GPU); which epoch a resume starts from then varies, the result does not.

Files are read with ``torch.load(weights_only=True)``: tensors, numbers, strings and containers,
never arbitrary objects. The caller deletes the directory (``Resumable.clear()``) once it has
saved the finished result.

With several processes (``torchrun``) checkpointing is off: the ranks' RNG states differ, and
one file per rank is not worth it for the single-machine benchmark; ``fit`` then trains as
without the context (one line says so). A one-process mixed-precision context is supported.
"""

from __future__ import annotations

import contextlib
import io
import random
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
import torch.nn as nn

from .errors import UnlearnkitError
from .progress import note
from .utils import atomic_write_bytes, stable_hash

CHECKPOINT_FORMAT = 1
_ACTIVE: "Resumable | None" = None


class Resumable:
    """The active context: where slots are written, what they are keyed by, what was restored."""

    def __init__(self, directory: str | Path, key: str, label: str, max_overhead: float | None = None):
        self.directory = Path(directory)
        self.key = key
        self.label = label
        self.max_overhead = max_overhead
        self.slots_claimed = 0
        self.resumed: list[dict[str, Any]] = []  # one entry per restored slot: slot, epoch, epochs, seconds
        self.notes: list[str] = []
        self._multiprocess_noted = False

    @property
    def seconds_before(self) -> float:
        """Training seconds the restored slots had spent before the interruption (to add to a run's time)."""
        return sum(r["seconds"] for r in self.resumed)

    def say(self, text: str) -> None:
        self.notes.append(text)
        note(text)

    def slot_path(self, slot: int) -> Path:
        return self.directory / f"fit{slot}.pt"

    def claim_slot(self) -> int:
        slot = self.slots_claimed
        self.slots_claimed += 1
        return slot

    def off_for_multiprocess(self) -> None:
        if not self._multiprocess_noted:
            self._multiprocess_noted = True
            self.say(f"{self.label}: epoch checkpoints are off with several processes; an interrupted "
                     "training restarts from its first epoch")

    def clear(self) -> None:
        """Delete the slot files (call once the finished result is saved), then the directory if that
        left it empty; nothing else in it is touched."""
        for path in [*self.directory.glob("fit*.pt"), *self.directory.glob(".fit*.pt.*.tmp")]:
            path.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            self.directory.rmdir()


@contextlib.contextmanager
def resumable(directory: str | Path, *, key: str = "", label: str = "training",
              max_overhead: float | None = None) -> Iterator[Resumable]:
    """Epoch checkpoints for every ``fit`` call inside the block (see the module docstring).

    ``key`` names the training the directory belongs to (a checkpoint written under another key
    is not resumed); ``label`` names it in the "resuming ..." line. ``max_overhead`` (e.g. 0.01)
    skips an epoch's write while the time since the last one is under the last write's duration
    / ``max_overhead`` (short epochs of a large model); a ``fit``'s first and last epochs are always
    written. None: every epoch.
    """
    global _ACTIVE
    if _ACTIVE is not None:
        raise UnlearnkitError(f"resumable({str(directory)!r}) inside resumable({str(_ACTIVE.directory)!r}): "
                              "the contexts do not nest; close the outer one first.")
    if max_overhead is not None and not 0 < max_overhead <= 1:
        raise UnlearnkitError(f"max_overhead must be in (0, 1] or None (every epoch); got {max_overhead!r}.")
    _ACTIVE = Resumable(directory, key, label, max_overhead)
    try:
        yield _ACTIVE
    finally:
        _ACTIVE = None


def active() -> Resumable | None:
    """The open ``resumable`` context, or None."""
    return _ACTIVE


def model_signature(model: nn.Module) -> str:
    """A hash of the model's tensor names, shapes and dtypes (not its values)."""
    return stable_hash([(name, list(t.shape), str(t.dtype)) for name, t in model.state_dict().items()])


# ---- RNG states as tensors and numbers (loadable with weights_only=True) -------------------
def rng_state(generator: torch.Generator) -> dict[str, Any]:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {"generator": generator.get_state(), "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None,
            "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                      "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
            "python": random.getstate()}


def set_rng_state(state: dict[str, Any], generator: torch.Generator) -> None:
    generator.set_state(state["generator"])
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


class FitCheckpoint:
    """One ``fit`` call's slot: ``restore()`` before the first epoch, ``save()`` after each."""

    def __init__(self, owner: Resumable, slot: int, fingerprint: dict[str, Any], *, model: nn.Module,
                 optimizer: torch.optim.Optimizer, scheduler, generator: torch.Generator, counter, scaler=None):
        self.owner, self.slot = owner, slot
        self.path = owner.slot_path(slot)
        self.fingerprint = stable_hash({**fingerprint, "model": model_signature(model), "key": owner.key,
                                        "slot": slot})
        self.epochs = fingerprint["epochs"]
        self.model, self.optimizer, self.scheduler = model, optimizer, scheduler
        self.generator, self.counter, self.scaler = generator, counter, scaler
        self.base_passes, self.base_steps = counter.sample_passes, counter.steps
        self.seconds_before = 0.0
        self.started = time.perf_counter()
        self.last_write: tuple[float, float] | None = None  # (when it ended, how long it took)

    def _describe(self) -> str:
        return self.owner.label if self.slot == 0 else f"{self.owner.label} (training {self.slot + 1})"

    def _read(self) -> dict[str, Any] | None:
        if not self.path.is_file():
            return None
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as e:  # a truncated or foreign file: train from the start and overwrite it
            self.owner.say(f"ignoring the partial checkpoint {self.path}: unreadable ({type(e).__name__}); "
                           f"{self._describe()} starts from epoch 0")
            return None
        if not isinstance(state, dict) or state.get("fingerprint") != self.fingerprint:
            self.owner.say(f"ignoring the partial checkpoint {self.path}: written by another training "
                           f"(fingerprint mismatch); {self._describe()} starts from epoch 0")
            return None
        return state

    def restore(self) -> tuple[int, int]:
        """(first epoch to run, steps already done): (0, 0) without a usable checkpoint."""
        state = self._read()
        if state is None:
            return 0, 0
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None and state["scaler"] is not None:
            self.scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"], self.generator)
        self.counter.sample_passes += state["sample_passes"]
        self.counter.steps += state["steps"]
        self.seconds_before = state["seconds"]
        epoch = self.epochs if state["finished"] else state["epoch"]
        self.owner.resumed.append({"slot": self.slot, "epoch": state["epoch"], "epochs": self.epochs,
                                   "seconds": state["seconds"]})
        self.owner.say(f"resuming {self._describe()} from epoch {state['epoch']}/{self.epochs}")
        return epoch, state["done"]

    def due(self, finished: bool) -> bool:
        """Whether this epoch's checkpoint is written (see ``resumable``'s ``max_overhead``)."""
        if finished or self.last_write is None or self.owner.max_overhead is None:
            return True
        ended, took = self.last_write
        return time.perf_counter() - ended >= took / self.owner.max_overhead

    def save(self, epochs_done: int, steps_done: int, *, finished: bool) -> None:
        if not self.due(finished):
            return
        start = time.perf_counter()
        state = {"format": CHECKPOINT_FORMAT, "fingerprint": self.fingerprint, "label": self._describe(),
                 "epoch": epochs_done, "epochs": self.epochs, "done": steps_done, "finished": finished,
                 "seconds": self.seconds_before + time.perf_counter() - self.started,
                 "sample_passes": self.counter.sample_passes - self.base_passes,
                 "steps": self.counter.steps - self.base_steps,
                 "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                 "scheduler": None if self.scheduler is None else self.scheduler.state_dict(),
                 "scaler": None if self.scaler is None else self.scaler.state_dict(),
                 "rng": rng_state(self.generator)}
        buffer = io.BytesIO()
        torch.save(state, buffer)
        atomic_write_bytes(self.path, buffer.getvalue())
        self.last_write = (time.perf_counter(), time.perf_counter() - start)


def fit_checkpoint(fingerprint: dict[str, Any], *, ctx=None, **objects) -> FitCheckpoint | None:
    """The slot of the ``fit`` call now starting, or None (no ``resumable`` context, or several processes)."""
    owner = _ACTIVE
    if owner is None:
        return None
    if ctx is not None and ctx.distributed:
        owner.off_for_multiprocess()
        return None
    scaler = getattr(ctx, "scaler", None) if ctx is not None else None
    return FitCheckpoint(owner, owner.claim_slot(), fingerprint, scaler=scaler, **objects)
