"""rfa_lora's ``forget_batch_size``: how many forget samples each step (and so each epoch) trains on."""

from __future__ import annotations

import math

import pytest
import torch

import unlearnkit as uk
from unlearnkit.bench.budget import PLANS
from unlearnkit.errors import InvalidConfigError
from unlearnkit.methods.rfa_lora import RfaLora, forget_batch_size_for, forget_samples_per_epoch
from unlearnkit.workflow import parse_overrides

pytestmark = pytest.mark.usefixtures("one_thread")  # a 2-thread step is ~5x slower on the busy CI cores

BATCH = 128  # digits class 3: 1214 retain images -> 10 steps an epoch; 134 forget images


def _samples_trained_on(model, data, **options) -> tuple[int, uk.UnlearnResult]:
    """Rows of every forward with gradients during ``unlearn`` (the retain batch and the forget batch joined),
    counted by a hook on the model; prepare's no-grad passes for the cached original features are not counted."""
    method = RfaLora(model, uk.make_config("rfa_lora", epochs=1, batch_size=BATCH, **options))
    method.prepare(data.retain, data.forget)
    rows = []
    hook = method._work.register_forward_pre_hook(
        lambda m, args: rows.append(len(args[0])) if torch.is_grad_enabled() else None)
    try:
        result = method.unlearn()
    finally:
        hook.remove()
    return sum(rows), result


DEFAULT = object()  # no forget_batch_size given


@pytest.mark.parametrize("option, forget_seen", [(DEFAULT, 134),  # the default: once_per_epoch
                                                 ("batch_size", 5 * 134),  # 128 + 6: five passes in 10 steps
                                                 ("once_per_epoch", 134),  # batches of 14: one pass
                                                 (3, 30)])
def test_forget_batch_size_sets_the_forget_samples_an_epoch_sees(trained_cnn, class3, option, forget_seen):
    options = {} if option is DEFAULT else {"forget_batch_size": option}
    rows, result = _samples_trained_on(trained_cnn, class3, **options)
    assert rows - len(class3.retain) == forget_seen
    assert result.sample_passes == rows
    config = uk.make_config("rfa_lora", batch_size=BATCH, **options)
    # the planned figure is an average over epochs (the cycle through D_f does not restart with an epoch)
    assert forget_samples_per_epoch(config, len(class3.retain), len(class3.forget)) == pytest.approx(forget_seen,
                                                                                                  rel=0.01)
    assert result.info["rfa_forget_batch_size"] == forget_batch_size_for(config, len(class3.retain),
                                                                         len(class3.forget))


def test_once_per_epoch_size_covers_the_forget_set_once():
    config = uk.make_config("rfa_lora", batch_size=64, forget_batch_size="once_per_epoch")
    assert forget_batch_size_for(config, 2250, 250) == 7  # 36 retain batches x 7 >= 250
    assert forget_samples_per_epoch(config, 2250, 250) == 250
    assert forget_batch_size_for(config, 64, 1000) == 1000  # one retain batch: the whole forget set
    every_step = uk.make_config("rfa_lora", batch_size=64, forget_batch_size="batch_size")
    assert forget_batch_size_for(every_step, 2250, 250) == 64
    assert forget_samples_per_epoch(every_step, 2250, 250) == 2250  # 36 steps, 4 forget batches a pass
    # the benchmark's equal-budget rule counts the forget passes the option gives
    assert PLANS["rfa_lora"](config, 2250, 250) == ("epochs", 2500, 0)
    assert PLANS["rfa_lora"](every_step, 2250, 250) == ("epochs", 4500, 0)
    assert PLANS["rfa_lora"](uk.make_config("rfa_lora", batch_size=64), 2250, 250) == ("epochs", 2500, 0)


def test_once_per_epoch_still_forgets(trained_cnn, class3):
    """A forget batch of 4 (32-sample retain batches) forgets class 3 as the default's 32 does."""
    r = uk.unlearn(trained_cnn, class3.retain, class3.forget, "rfa_lora", epochs=2, batch_size=32,
                   forget_batch_size="once_per_epoch")
    assert r.info["rfa_forget_batch_size"] == math.ceil(134 / 38)
    assert uk.accuracy(r.model, class3.forget) < 10.0
    assert uk.accuracy(r.model, class3.retain) > 95.0


@pytest.mark.parametrize("bad", [0, -2, "once", 2.5, True])
def test_forget_batch_size_bad_values_name_the_field_and_what_is_allowed(bad):
    with pytest.raises(InvalidConfigError, match=r"'forget_batch_size' parameter of RfaLoraConfig must be an int "
                                                 r"in the range \[1, inf\), one of 'batch_size', 'once_per_epoch' or None"):
        uk.make_config("rfa_lora", forget_batch_size=bad)


def test_forget_batch_size_from_the_command_line():
    assert parse_overrides("rfa_lora", ["forget_batch_size=once_per_epoch"]) == {"forget_batch_size": "once_per_epoch"}
    assert parse_overrides("rfa_lora", ["forget_batch_size=16"]) == {"forget_batch_size": 16}
    assert parse_overrides("rfa_lora", ["forget_batch_size=batch_size"]) == {"forget_batch_size": "batch_size"}
    assert parse_overrides("rfa_lora", ["forget_batch_size=none"]) == {"forget_batch_size": None}


def test_cache_keys_tell_the_default_from_the_earlier_batches():
    """Stored benchmark results are keyed on ``key_dict()``: runs made before the field existed (a forget batch of
    batch_size, now ``"batch_size"``) keep their keys, and the new default ``once_per_epoch`` never reuses them."""
    assert uk.make_config("rfa_lora").forget_batch_size == "once_per_epoch"
    assert uk.make_config("rfa_lora").key_dict()["forget_batch_size"] == "once_per_epoch"
    earlier = uk.make_config("rfa_lora", forget_batch_size="batch_size").key_dict()
    assert "forget_batch_size" not in earlier
    assert earlier == {k: v for k, v in uk.make_config("rfa_lora").key_dict().items() if k != "forget_batch_size"}
    assert uk.make_config("rfa_lora", forget_batch_size=8).key_dict()["forget_batch_size"] == 8
