"""Shared fixtures: digits, and a tiny CNN and ViT trained on it once per test session."""

from __future__ import annotations

import copy
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest
import torch

import unlearnkit as uk
from unlearnkit.progress import set_progress

torch.set_num_threads(2)
set_progress(False)

TINY_MODELS = {
    "cnn": (dict(width=16), uk.Recipe(epochs=15, lr=0.05, batch_size=64)),
    "vit_tiny": (dict(dim=48, depth=2, heads=4),
                 uk.Recipe(epochs=20, lr=3e-3, optimizer="adamw", weight_decay=0.01, batch_size=64)),
}


@pytest.fixture
def one_thread():
    """Tiny models train ~15x faster on one thread than on two busy cores (the resume tests use it)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def digits():
    return uk.load_dataset("digits")


@pytest.fixture(scope="session")
def class3(digits):
    """Class-3 forgetting on digits: retain / forget / test splits."""
    return uk.make_unlearning_data(digits.train, digits.test, "class:3")


@pytest.fixture(scope="session")
def random10(digits):
    return uk.make_unlearning_data(digits.train, digits.test, "random:0.1", seed=0)


def build_tiny(name: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    kwargs, _ = TINY_MODELS[name]
    return uk.create_model(name, num_classes=10, in_channels=1, image_size=8, **kwargs)


_trained: dict[str, torch.nn.Module] = {}


def trained_tiny(name: str, digits) -> torch.nn.Module:
    """A tiny model trained on all of digits' training set (cached; a fresh copy each call)."""
    if name not in _trained:
        model = build_tiny(name)
        uk.train(model, digits.train, TINY_MODELS[name][1])
        _trained[name] = model
    return copy.deepcopy(_trained[name])


@pytest.fixture(params=sorted(TINY_MODELS))
def tiny_model(request, digits):
    """Each tiny architecture (cnn, vit_tiny), trained on digits; yields (name, model)."""
    return request.param, trained_tiny(request.param, digits)


@pytest.fixture
def trained_cnn(digits):
    return trained_tiny("cnn", digits)


@pytest.fixture
def trained_vit(digits):
    return trained_tiny("vit_tiny", digits)


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory, digits):
    """The store tests' checkpoint: a tiny MLP (one hidden layer of 32) trained 2 epochs on digits (helpers:
    tests/store/store_helpers.py). Test modules with a `checkpoint` fixture of their own override it."""
    from unlearnkit.workflow import save_model, train_original

    out = tmp_path_factory.mktemp("store-ck") / "mlp"
    model, meta, _ = train_original("digits", "mlp", uk.Recipe(epochs=2, lr=0.05, batch_size=64), splits=digits,
                                    model_kwargs={"hidden": 32, "depth": 1})
    save_model(out, model, meta, {})
    return out
