"""The relearning loop: it really fine-tunes (a no-op would fail), and steps are counted from 0."""

from __future__ import annotations

import torch
from torch.utils.data import TensorDataset

from unlearnkit.audit.relearn import relearn_curve, steps_to_level, summarise_steps


def test_relearn_curve_learns_a_suppressed_class():
    torch.manual_seed(0)
    x = torch.randn(64, 4)
    y = (x[:, 0] > 0).long()
    model = torch.nn.Linear(4, 2)
    with torch.no_grad():
        model.weight.zero_()
        model.bias.copy_(torch.tensor([5.0, -5.0]))  # always predicts class 0
    ds = TensorDataset(x, y)
    curve = relearn_curve(model, ds, ds, steps=40, lr=0.5, batch_size=16, seed=0)
    assert len(curve) == 41 and curve[0] < 60.0 and curve[-1] > 90.0
    assert model.bias[0].item() == 5.0  # the audited model itself is untouched


def test_steps_to_level_and_summary():
    assert steps_to_level([10.0, 50.0, 95.0], 90.0) == 2
    assert steps_to_level([95.0], 90.0) == 0
    assert steps_to_level([10.0, 20.0], 90.0) is None
    assert summarise_steps([2, None, 4], horizon=10)["median_steps"] == 4.0
