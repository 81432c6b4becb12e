"""The store tests' checkpoint: a tiny MLP (one hidden layer of 32) trained 2 epochs on digits (helpers: store_helpers)."""

from __future__ import annotations

import pytest

import unlearnkit as uk
from unlearnkit.workflow import save_model, train_original


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory, digits):
    out = tmp_path_factory.mktemp("store-ck") / "mlp"
    model, meta, _ = train_original("digits", "mlp", uk.Recipe(epochs=2, lr=0.05, batch_size=64), splits=digits,
                                    model_kwargs={"hidden": 32, "depth": 1})
    save_model(out, model, meta, {})
    return out
