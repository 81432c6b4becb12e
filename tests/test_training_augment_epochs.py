"""Recipe.augment_epochs: only the leading epochs augment, the rest see the plain images."""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import TensorDataset

import unlearnkit as uk
import unlearnkit.training as training
from unlearnkit.cli import main
from unlearnkit.errors import InvalidConfigError
from unlearnkit.methods.retrain import RetrainConfig
from unlearnkit.training import fit, make_optimizer

N_IMAGES = 16


@pytest.fixture
def images():
    g = torch.Generator().manual_seed(0)
    return TensorDataset(torch.rand(N_IMAGES, 3, 32, 32, generator=g), torch.arange(N_IMAGES) % 4)


def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 4))


def plain_per_epoch(images, **fit_args) -> list[bool]:
    """Per epoch (one batch = the whole dataset): did every sample arrive exactly as stored?"""
    stored = images.tensors[0].flatten(1)
    seen = []

    def step(model, x, y):
        seen.append(bool((torch.cdist(x.flatten(1), stored).min(1).values < 1e-6).all()))
        return F.cross_entropy(model(x), y)

    model = tiny_model()
    fit(model, images, step, make_optimizer(model.parameters(), "sgd", 0.01), batch_size=N_IMAGES,
        generator=torch.Generator().manual_seed(0), **fit_args)
    return seen


def test_fit_augments_only_the_leading_epochs(images):
    assert plain_per_epoch(images, epochs=4, augment=True, augment_epochs=1) == [False, True, True, True]
    assert plain_per_epoch(images, epochs=3, augment=True) == [False, False, False]  # None: every epoch
    assert plain_per_epoch(images, epochs=2, augment=True, augment_epochs=0) == [True, True]


def test_train_and_retrain_pass_augment_epochs_on(images, monkeypatch):
    flags = []
    real = training.iterate_batches

    def recording(*args, augment=False, **kwargs):
        flags.append(augment)
        return real(*args, augment=augment, **kwargs)

    monkeypatch.setattr(training, "iterate_batches", recording)
    recipe = uk.Recipe(epochs=3, batch_size=N_IMAGES, augment=True, augment_epochs=2)
    uk.train(tiny_model(), images, recipe)
    assert flags == [True, True, False]
    assert RetrainConfig.from_recipe(recipe).to_recipe(seed=0).augment_epochs == 2  # the oracle's recipe


@pytest.mark.parametrize("values, message", [
    ({"augment_epochs": 2}, "needs augment=True"),
    ({"augment": True, "epochs": 3, "augment_epochs": 4}, "at most epochs (3)"),
    ({"augment": True, "augment_epochs": -1}, "augment_epochs"),
])
def test_bad_augment_epochs_is_one_clear_error(values, message):
    with pytest.raises(InvalidConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        uk.Recipe(**values)
    with pytest.raises(InvalidConfigError, match="augment_epochs"):
        RetrainConfig(**values)


def test_cli_train_refuses_augment_epochs_without_augment(tmp_path, capsys):
    assert main(["train", "--epochs", "1", "--model", "mlp", "--augment-epochs", "1", "--out",
                 str(tmp_path / "ck"), "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "needs augment=True" in err


def test_cache_keys_leave_out_augment_epochs_at_its_default():
    """Results cached before the field existed keep their keys; a set value is part of the key."""
    from unlearnkit.bench.config import BenchConfig
    from unlearnkit.methods.retrain import RetrainConfig

    plain = BenchConfig(recipe={"epochs": 3, "augment": True})
    assert "augment_epochs" not in plain.original_key(0)["recipe"]
    assert "augment_epochs" in plain.recipe_for(0).to_dict()
    partial = BenchConfig(recipe={"epochs": 3, "augment": True, "augment_epochs": 2})
    assert partial.original_key(0)["recipe"]["augment_epochs"] == 2
    assert "augment_epochs" not in RetrainConfig().key_dict()
