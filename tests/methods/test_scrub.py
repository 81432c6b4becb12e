"""SCRUB's named presets: each reproduces its reference notebook (meghdadk/SCRUB) exactly."""

from __future__ import annotations

import pytest

import unlearnkit as uk
from unlearnkit.errors import InvalidConfigError
from unlearnkit.methods import scrub as scrub_module
from unlearnkit.methods.base import config_from_dict
from unlearnkit.methods.scrub import decayed_lr

# Read from the notebooks' argument cells (args.optim, sgda_*, kd_T, alpha, gamma, msteps, loaders' batch sizes).
SMALL_NOTEBOOK = {"optimizer": "adam", "lr": 5e-4, "weight_decay": 0.1, "epochs": 10, "max_epochs": 3,
                  "batch_size": 32, "forget_batch_size": 64, "temperature": 2.0, "kl_weight": 0.5, "ce_weight": 1.0,
                  "lr_decay_epochs": [5, 8, 9], "lr_decay_rate": 0.1}
LARGE_NOTEBOOK = {"optimizer": "sgd", "lr": 5e-4, "momentum": 0.9, "weight_decay": 5e-4, "epochs": 3,
                  "max_epochs": 2, "batch_size": 256, "forget_batch_size": 512, "temperature": 4.0,
                  "kl_weight": 0.001, "ce_weight": 0.99, "lr_decay_epochs": [3, 5, 9], "lr_decay_rate": 0.1}


@pytest.mark.parametrize("preset,expected", [("small", SMALL_NOTEBOOK), ("large", LARGE_NOTEBOOK)])
def test_each_preset_is_its_notebook(preset, expected):
    config = uk.make_config("scrub", preset=preset).to_dict()
    assert {k: config[k] for k in expected} == expected


def test_default_is_the_small_preset_by_name():
    config = uk.make_config("scrub")
    assert config.preset == "small"
    assert config == uk.make_config("scrub", preset="small")


def test_explicit_fields_win_and_a_new_preset_resets_the_rest():
    config = uk.make_config("scrub", preset="large", lr=1e-3, epochs=4)
    assert (config.lr, config.epochs, config.optimizer, config.temperature) == (1e-3, 4, "sgd", 4.0)
    moved = uk.make_config("scrub").replace(preset="large")
    assert {k: moved.to_dict()[k] for k in LARGE_NOTEBOOK} == LARGE_NOTEBOOK
    kept = uk.make_config("scrub").replace(preset="large", epochs=7)
    assert (kept.epochs, kept.batch_size) == (7, 256)
    assert config_from_dict(config.to_dict()) == config


def test_bad_preset_is_one_clear_line():
    with pytest.raises(InvalidConfigError, match="The 'preset' parameter of SCRUBConfig must be one of 'large', "
                                                 "'small'. Got 'huge' instead."):
        uk.make_config("scrub", preset="huge")
    with pytest.raises(InvalidConfigError, match="'lr_decay_epochs' parameter of SCRUBConfig must be a list of ints"):
        uk.make_config("scrub", lr_decay_epochs=[0])


def test_reference_step_decay_per_epoch():
    lrs = [decayed_lr(5e-4, e, (5, 8, 9), 0.1) for e in range(1, 11)]
    assert lrs == pytest.approx([5e-4] * 5 + [5e-5] * 3 + [5e-6, 5e-7])
    assert [decayed_lr(5e-4, e, (3, 5, 9), 0.1) for e in (1, 2, 3)] == [5e-4] * 3  # large: never within 3 epochs


def test_the_decay_reaches_the_optimizer(trained_cnn, class3, monkeypatch):
    """Each epoch's phases run at the decayed lr (the old loop kept it constant)."""
    seen = []
    real_fit = scrub_module.fit

    def recording_fit(model, dataset, step, optimizer, **kwargs):
        seen.append((kwargs["description"].split()[-1], optimizer.param_groups[0]["lr"]))
        return real_fit(model, dataset, step, optimizer, **kwargs)

    monkeypatch.setattr(scrub_module, "fit", recording_fit)
    uk.unlearn(trained_cnn, class3.retain, class3.forget, "scrub", seed=0, epochs=3, max_epochs=1,
               lr_decay_epochs=[1, 2], batch_size=256, forget_batch_size=256)
    assert seen == [("max", pytest.approx(5e-4)), ("min", pytest.approx(5e-4)), ("min", pytest.approx(5e-5)),
                    ("min", pytest.approx(5e-6))]


def test_small_preset_moves_the_model_on_digits(trained_cnn, class3):
    """Measured: class-3 forget accuracy 100 -> 61.9, retain 99.9 -> 100 (the large preset: 100 / 99.9)."""
    retain_before = uk.accuracy(trained_cnn, class3.retain)
    result = uk.unlearn(trained_cnn, class3.retain, class3.forget, "scrub", seed=0)
    assert uk.accuracy(result.model, class3.forget) < 80.0
    assert uk.accuracy(result.model, class3.retain) >= retain_before - 1.0
