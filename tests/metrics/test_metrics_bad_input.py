"""Bad input: one-line UnlearnkitErrors, never a torch traceback."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch.utils.data import Subset

import unlearnkit as uk
from unlearnkit.metrics import evaluate
from metric_helpers import ConstantModel, constant_class


def _error(fn, match):
    with pytest.raises(uk.UnlearnkitError, match=match) as info:
        fn()
    assert "\n" not in str(info.value)
    return str(info.value)


def test_model_of_another_class_count(class3):
    _error(lambda: evaluate(constant_class(0, num_classes=5), class3), "model outputs 5 classes but the data has 10")


def test_reference_of_another_class_count(class3):
    _error(lambda: evaluate(constant_class(0), class3, reference=constant_class(0, num_classes=7)),
           "reference model outputs 7 classes but the data has 10")


def test_empty_and_missing_splits(class3):
    empty_forget = dataclasses.replace(class3, forget=Subset(class3.train, []))
    _error(lambda: evaluate(constant_class(0), empty_forget), "forget split is empty")
    empty_retain = dataclasses.replace(class3, retain=Subset(class3.train, []))
    _error(lambda: evaluate(constant_class(0), empty_retain), "retain split is empty")
    no_test = dataclasses.replace(class3, test=None, test_retain=None, test_forget=None)
    _error(lambda: evaluate(constant_class(0), no_test), "test(_all)? split is missing")


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_logits(class3, bad):
    logits = torch.zeros(10)
    logits[4] = bad
    _error(lambda: evaluate(ConstantModel(logits), class3), "NaN or inf logits")
    _error(lambda: evaluate(constant_class(0), class3, reference=ConstantModel(logits)), "reference model produced NaN")


def test_model_that_cannot_take_the_input(class3):
    wrong = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3, 10))
    _error(lambda: evaluate(wrong, class3), "The model failed on the forget split")


def test_wrong_argument_types(class3, random10):
    _error(lambda: evaluate("model", class3), "model must be a torch.nn.Module")
    _error(lambda: evaluate(constant_class(0), class3.forget), "data must be an UnlearningData")
    _error(lambda: evaluate(constant_class(0), class3, batch_size=0), "'batch_size'")
    _error(lambda: evaluate(constant_class(0), class3, seed=-1), "'seed'")
    _error(lambda: evaluate(constant_class(0), class3, reference=3), "reference must be a torch.nn.Module")
    other = evaluate(constant_class(0), random10)
    _error(lambda: evaluate(constant_class(0), class3, reference=other), "another forget request")
    _error(lambda: evaluate(constant_class(0), class3, device="tpu"), "Unknown device 'tpu'")
    _error(lambda: uk.Evaluation.from_dict({"schema_version": 99, "metrics": {}}), "schema_version 99")
