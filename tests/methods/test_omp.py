"""OMP as the paper runs it: prune, retrain the sparse model on all of D (the sparse original), then unlearn.

Measured on digits, class 3, seed 0 (see docs/methods/pruning.md): the 95%-pruned CNN alone keeps
21.2% retain accuracy; the sparse original (5 epochs, Adam 1e-2, cosine) is back at 99.8 (original 99.9).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import unlearnkit as uk
from unlearnkit.errors import UnlearnkitError
from unlearnkit.methods.omp import sparse_original
from unlearnkit.components.pruning import prune

# FT on D_r after the sparse original: the paper's FT defaults (Adam 1e-3, 5 epochs of 128) are
# too few steps on digits to forget, so the forgetting tests use Adam 3e-2, batch 32, 3 epochs (pruning.md).
FORGET = dict(lr=3e-2, epochs=3, batch_size=32)


def _mlp(digits) -> nn.Module:
    """A plain nn.Sequential MLP (not a registered model) trained on digits."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU(),
                          nn.Linear(64, 10))
    uk.train(model, digits.train, uk.Recipe(epochs=30, lr=0.05, batch_size=64))
    return model


@pytest.fixture(scope="module")
def mlp(digits):
    return _mlp(digits)


def _pruned_entries_zero(model: nn.Module, masks: dict[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters())
    for name, keep in masks.items():
        assert torch.count_nonzero(params[name].detach()[~keep]) == 0, name


def test_prepare_repairs_the_pruning_damage_before_unlearning(trained_cnn, class3):
    """The model unlearning starts from is the retrained sparse original, not the damaged pruned one."""
    retain_before = uk.accuracy(trained_cnn, class3.retain)
    pruned_only = _copy(trained_cnn)
    prune(pruned_only, kind="magnitude_global", ratio=0.95)
    method = uk.create_method("omp", trained_cnn, seed=0).prepare(class3.retain, class3.forget)
    start = method._work
    assert uk.accuracy(pruned_only, class3.retain) < 50.0  # pruning alone: ~21%
    assert uk.accuracy(start, class3.retain) > retain_before - 2.0
    assert uk.accuracy(start, class3.forget) > 90.0  # trained on all of D: the class is still there
    _pruned_entries_zero(start, method.pruning.masks)
    assert method.pruning.total_sparsity == pytest.approx(0.95, abs=1e-3)
    facts = method.info["sparse_original"]
    assert facts["given"] is False and facts["trained_on"] == len(class3.retain) + len(class3.forget)
    assert facts["sample_passes"] == 5 * (len(class3.retain) + len(class3.forget))


def _copy(model):
    import copy

    return copy.deepcopy(model)


@pytest.mark.parametrize("arch", ["cnn", "mlp"])
def test_omp_forgets_class3_with_the_mask_kept(arch, trained_cnn, mlp, class3):
    model = trained_cnn if arch == "cnn" else _copy(mlp)
    retain_before = uk.accuracy(model, class3.retain)
    result = uk.unlearn(model, class3.retain, class3.forget, "omp", seed=0, **FORGET)
    forget_acc, retain_acc = uk.accuracy(result.model, class3.forget), uk.accuracy(result.model, class3.retain)
    assert forget_acc < 15.0, (arch, forget_acc)
    assert retain_acc > retain_before - 3.0, (arch, retain_acc, retain_before)
    masks = prune(_copy(model), kind="magnitude_global", ratio=0.95).masks  # the same ranking as in prepare
    _pruned_entries_zero(result.model, masks)
    # the request's cost is the unlearning step only; the one-off sparse original is reported apart
    assert result.sample_passes == FORGET["epochs"] * len(class3.retain)
    assert result.info["sparse_original"]["sample_passes"] == 5 * (len(class3.retain) + len(class3.forget))
    assert result.prepare_seconds >= result.info["sparse_original"]["seconds"] > 0


def test_a_prebuilt_sparse_original_is_used_as_is(trained_cnn, digits, class3):
    sparse, pruning, facts = sparse_original(trained_cnn, digits.train, seed=0)
    assert facts["trained_on"] == len(digits.train) and facts["seconds"] > 0
    assert uk.accuracy(sparse, class3.retain) > uk.accuracy(trained_cnn, class3.retain) - 2.0
    _pruned_entries_zero(sparse, pruning.masks)
    method = uk.create_method("omp", trained_cnn, seed=0, sparse_model=sparse, epochs=1)
    result = method.fit(class3.retain, None)  # no forget set needed: D was seen when the sparse model was built
    assert result.info["sparse_original"] == {"given": True}
    assert {k: torch.equal(v, method.pruning.masks[k]) for k, v in pruning.masks.items()} == {
        k: True for k in pruning.masks}
    assert result.sample_passes == len(class3.retain)
    _pruned_entries_zero(result.model, pruning.masks)


def test_without_the_forget_set_or_a_sparse_model_it_says_what_is_missing(trained_cnn, class3):
    with pytest.raises(UnlearnkitError, match="omp trains its sparse original on all of D = retain \\+ forget"):
        uk.unlearn(trained_cnn, class3.retain, None, "omp")
    with pytest.raises(UnlearnkitError, match="omp's sparse_model must be a"):
        uk.create_method("omp", trained_cnn, sparse_model=nn.Linear(2, 2))


def test_sparse_epochs_zero_is_the_pruned_only_model(trained_cnn, class3):
    method = uk.create_method("omp", trained_cnn, seed=0, sparse_epochs=0).prepare(class3.retain, class3.forget)
    assert uk.accuracy(method._work, class3.retain) < 50.0
    assert method.info["sparse_original"]["sample_passes"] == 0
