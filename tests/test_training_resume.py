"""Epoch checkpoints of ``fit`` under ``resumable``: an interrupted training resumes bit for bit."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import unlearnkit.resume as resume_module
from unlearnkit.errors import UnlearnkitError
from unlearnkit.resume import fit_checkpoint, resumable
from unlearnkit.training import Counter, fit, make_optimizer

EPOCHS, BATCH = 4, 64  # digits' 1,347 training images: 22 steps an epoch


pytestmark = pytest.mark.usefixtures("one_thread")


class TinyNet(nn.Module):
    """Conv + BatchNorm (running statistics) + Dropout (torch's global RNG) + a linear head."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.drop = nn.Dropout(0.2)
        self.head = nn.Linear(4 * 8 * 8, 10)

    def forward(self, x):
        return self.head(self.drop(F.relu(self.bn(self.conv(x)))).flatten(1))


def noisy_step(model, x, y):
    """Cross-entropy scaled by NumPy's and Python's RNG, so that those states matter too."""
    return F.cross_entropy(model(x), y) * (1 + 0.01 * float(np.random.rand()) + 0.01 * random.random())


def interrupt_at(step: int):
    """A step function that raises KeyboardInterrupt at its ``step``-th call (counting from 1)."""
    calls = [0]

    def step_fn(model, x, y):
        calls[0] += 1
        if calls[0] == step:
            raise KeyboardInterrupt
        return noisy_step(model, x, y)

    return step_fn


def train(data, *, init_seed=0, optimizer="sgd", step_fn=noisy_step, epochs=EPOCHS, max_steps=None,
          counter=None):
    """A fresh TinyNet trained with augmentation and a cosine schedule; (model, counter)."""
    torch.manual_seed(init_seed)
    np.random.seed(init_seed)
    random.seed(init_seed)
    model = TinyNet()
    opt = make_optimizer(model.parameters(), optimizer, 0.05 if optimizer == "sgd" else 1e-3, momentum=0.9,
                         weight_decay=5e-4)
    counter = fit(model, data, step_fn, opt, epochs=epochs, batch_size=BATCH, schedule="cosine", augment=True,
                  generator=torch.Generator().manual_seed(init_seed), counter=counter, max_steps=max_steps)
    return model, counter


def assert_same_weights(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for name in sa:
        assert torch.equal(sa[name], sb[name]), f"{name} differs"


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_an_interrupted_fit_resumes_to_the_same_weights(digits, tmp_path, optimizer):
    reference, ref_counter = train(digits.train, optimizer=optimizer)

    with resumable(tmp_path, key="unit") as first:  # interrupted in epoch 3, after two checkpoints
        with pytest.raises(KeyboardInterrupt):
            train(digits.train, optimizer=optimizer, step_fn=interrupt_at(2 * 22 + 5))
    assert (tmp_path / "fit0.pt").is_file() and first.resumed == []

    # a fresh start: another initialisation, another generator and global RNG seed; all of it is restored
    with resumable(tmp_path, key="unit") as second:
        resumed, counter = train(digits.train, optimizer=optimizer, init_seed=7)
    assert second.resumed[0]["epoch"] == 2 and second.resumed[0]["epochs"] == EPOCHS
    assert second.notes == [f"resuming training from epoch 2/{EPOCHS}"]
    assert_same_weights(resumed, reference)
    assert (counter.sample_passes, counter.steps) == (ref_counter.sample_passes, ref_counter.steps)


def test_each_fit_call_gets_its_own_slot(digits, tmp_path):
    def two_trainings(step_fn=noisy_step, init_seed=0):
        model, counter = train(digits.train, epochs=2, init_seed=init_seed)
        opt = make_optimizer(model.parameters(), "sgd", 0.01, momentum=0.9)
        fit(model, digits.train, step_fn, opt, epochs=2, batch_size=BATCH, schedule="cosine", augment=True,
            generator=torch.Generator().manual_seed(1), counter=counter)
        return model, counter

    reference, ref_counter = two_trainings()
    with resumable(tmp_path, key="unit"):
        with pytest.raises(KeyboardInterrupt):
            two_trainings(step_fn=interrupt_at(22 + 3))  # in the second training's second epoch
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fit0.pt", "fit1.pt"]
    with resumable(tmp_path, key="unit") as again:
        resumed, counter = two_trainings(init_seed=5)
    assert [(r["slot"], r["epoch"]) for r in again.resumed] == [(0, 2), (1, 1)]  # the first one finished
    assert_same_weights(resumed, reference)
    assert counter.sample_passes == ref_counter.sample_passes


def test_a_finished_max_steps_training_is_restored_without_training(digits, tmp_path):
    reference, _ = train(digits.train, max_steps=30)  # stops in epoch 2
    with resumable(tmp_path, key="unit"):
        train(digits.train, max_steps=30)

    def never(model, x, y):
        raise AssertionError("a finished slot trained again")

    with resumable(tmp_path, key="unit") as again:
        restored, counter = train(digits.train, max_steps=30, init_seed=3, step_fn=never)
    assert_same_weights(restored, reference)
    assert counter.steps == 30 and again.resumed[0]["epoch"] == 2


@pytest.mark.parametrize("change", ["key", "epochs"])
def test_a_mismatching_checkpoint_is_not_resumed(digits, tmp_path, change):
    with resumable(tmp_path, key="unit"):
        with pytest.raises(KeyboardInterrupt):
            train(digits.train, step_fn=interrupt_at(22 + 2))
    key, epochs = ("other", EPOCHS) if change == "key" else ("unit", EPOCHS - 1)
    reference, _ = train(digits.train, epochs=epochs)
    with resumable(tmp_path, key=key) as again:
        model, counter = train(digits.train, epochs=epochs)
    assert again.resumed == [] and "fingerprint mismatch" in again.notes[0]
    assert counter.steps == epochs * 22
    assert_same_weights(model, reference)


def test_an_unreadable_checkpoint_is_ignored_and_overwritten(digits, tmp_path):
    (tmp_path / "fit0.pt").write_bytes(b"not a checkpoint")
    with resumable(tmp_path, key="unit") as ctx:
        train(digits.train, epochs=1)
    assert ctx.resumed == [] and "unreadable" in ctx.notes[0]
    state = torch.load(tmp_path / "fit0.pt", weights_only=True)  # tensors, numbers and containers only
    assert state["epoch"] == 1 and state["finished"] and state["rng"]["generator"].dtype == torch.uint8


def test_without_a_context_nothing_is_written(digits, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    train(digits.train, epochs=1)
    assert list(tmp_path.iterdir()) == []


def test_contexts_do_not_nest(tmp_path):
    with resumable(tmp_path / "a"):
        with pytest.raises(UnlearnkitError, match="do not nest"):
            with resumable(tmp_path / "b"):
                pass


def test_several_processes_turn_checkpoints_off_with_a_note(tmp_path):
    class FakeContext:
        distributed = True
        scaler = None

    model = TinyNet()
    with resumable(tmp_path, label="original seed 0") as ctx:
        slot = fit_checkpoint({"epochs": 1}, ctx=FakeContext(), model=model,
                              optimizer=make_optimizer(model.parameters(), "sgd", 0.1), scheduler=None,
                              generator=torch.Generator(), counter=Counter())
    assert slot is None
    assert ctx.notes == ["original seed 0: epoch checkpoints are off with several processes; an interrupted "
                         "training restarts from its first epoch"]


def test_clear_removes_the_directory(digits, tmp_path):
    with resumable(tmp_path / "partial", key="unit") as ctx:
        train(digits.train, epochs=1)
    assert (tmp_path / "partial" / "fit0.pt").is_file()
    ctx.clear()
    assert not (tmp_path / "partial").exists()


def test_clear_deletes_only_the_slot_files(digits, tmp_path):
    (tmp_path / "notes.txt").write_text("not ours")
    with resumable(tmp_path, key="unit") as ctx:
        train(digits.train, epochs=1)
    ctx.clear()
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


def test_max_overhead_skips_writes_until_enough_time_has_passed(tmp_path, monkeypatch):
    clock = [100.0]

    class FakeTime:
        @staticmethod
        def perf_counter():
            return clock[0]

    monkeypatch.setattr(resume_module, "time", FakeTime)
    model = TinyNet()
    with resumable(tmp_path, max_overhead=0.1):
        slot = fit_checkpoint({"epochs": 3}, model=model, optimizer=make_optimizer(model.parameters(), "sgd", 0.1),
                              scheduler=None, generator=torch.Generator(), counter=Counter())
    assert slot.due(finished=False)  # the first epoch is always written
    slot.last_write = (100.0, 1.0)  # a write of 1 s: the next one 10 s later at the earliest
    clock[0] = 105.0
    assert not slot.due(finished=False) and slot.due(finished=True)  # the last epoch is always written
    clock[0] = 110.0
    assert slot.due(finished=False)
    for bad in (0, 1.5):
        with pytest.raises(UnlearnkitError, match="max_overhead must be in"):
            with resumable(tmp_path, max_overhead=bad):
                pass
