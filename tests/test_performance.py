"""Accelerator throughput settings: deferred divergence checks, channels_last, data kept on the device."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import unlearnkit as uk
from unlearnkit import performance, training
from unlearnkit.data.loading import iterate_batches
from unlearnkit.errors import DivergenceError
from unlearnkit.training import fit, make_optimizer


def _mlp():
    torch.manual_seed(0)
    return uk.create_model("mlp", num_classes=10, in_channels=1, image_size=8, hidden=16)


def test_deferred_check_still_stops_a_diverged_loss_within_the_interval(digits, monkeypatch):
    monkeypatch.setattr(training, "host_sync_every", lambda device: 4)
    calls = []

    def step(m, x, y):
        calls.append(1)
        loss = F.cross_entropy(m(x), y)
        return loss * float("inf") if len(calls) == 2 else loss  # one bad step, then finite again

    m = _mlp()
    with pytest.raises(DivergenceError, match="diverged"):
        fit(m, digits.train, step, make_optimizer(m.parameters(), "sgd", 0.01), epochs=1, batch_size=64,
            generator=torch.Generator().manual_seed(0))
    assert len(calls) == 4  # detected at the first check after the bad step, not at the end of the epoch


def test_deferred_check_trains_exactly_like_the_per_step_check(digits, monkeypatch):
    def run():
        m = _mlp()
        c = fit(m, digits.train, lambda m, x, y: F.cross_entropy(m(x), y), make_optimizer(m.parameters(), "sgd", 0.05),
                epochs=2, batch_size=100, generator=torch.Generator().manual_seed(0))
        return m, c

    reference, c_ref = run()
    monkeypatch.setattr(training, "host_sync_every", lambda device: 5)  # 14 steps per epoch: not a multiple
    deferred, c_def = run()
    assert (c_def.steps, c_def.sample_passes) == (c_ref.steps, c_ref.sample_passes) == (28, 2 * len(digits.train))
    for p, q in zip(reference.parameters(), deferred.parameters()):
        assert torch.equal(p, q)


def test_host_syncs_every_step_on_the_cpu_only():
    assert performance.host_sync_every(torch.device("cpu")) == 1
    assert performance.host_sync_every(torch.device("cuda")) == performance.ACCELERATOR_SYNC_EVERY > 1


def test_channels_last_applies_to_accelerator_image_batches_only(digits):
    performance.set_channels_last(True)
    try:
        x = torch.randn(2, 3, 4, 4)
        assert performance.to_model_layout(x) is x  # CPU: never (see to_model_layout)
        assert performance.to_model_layout(torch.randn(2, 5)).dim() == 2
        xb, _ = next(iterate_batches(digits.train, 8))
        assert xb.is_contiguous()
    finally:
        performance.set_channels_last(False)
    assert not performance.channels_last()


def test_move_dataset_to_keeps_batches_and_labels(digits):
    from torch.utils.data import Subset

    x_before = [b for b in iterate_batches(Subset(digits.test, list(range(10))), 4)]
    assert performance.move_dataset_to(Subset(digits.test, [1, 2]), "cpu")
    assert digits.test.y.device.type == "cpu"  # labels stay on the host
    x_after = [b for b in iterate_batches(Subset(digits.test, list(range(10))), 4)]
    for (a, ya), (b, yb) in zip(x_before, x_after):
        assert torch.equal(a, b) and torch.equal(ya, yb)
    assert not performance.move_dataset_to(torch.utils.data.TensorDataset(torch.zeros(2, 1)), "cpu")
