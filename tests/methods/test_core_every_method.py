"""Checks every registered method passes, generated from the registry (a new method is covered)."""

import copy
import dataclasses

import pytest
import torch
import torch.nn as nn

import unlearnkit as uk
from unlearnkit.methods import list_methods, method_spec

CHEAP = {"epochs": 1, "max_epochs": 1, "max_steps": 5}


def cheap_overrides(name):
    fields = {f.name for f in dataclasses.fields(method_spec(name).config_class)}
    return {k: v for k, v in CHEAP.items() if k in fields}


@pytest.mark.parametrize("name", list_methods())
def test_method_returns_plain_model_and_leaves_input_alone(name, tiny_model, class3):
    arch, model = tiny_model
    before = copy.deepcopy(model.state_dict())
    result = uk.unlearn(model, class3.retain, class3.forget, name, **cheap_overrides(name))
    out = result.model
    assert type(out) is type(model)
    assert list(out.state_dict()) == list(before), "state_dict keys changed (adapter or reparametrisation left?)"
    assert not any("lora" in n.lower() or n.endswith("_orig") for n, _ in out.named_parameters())
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in out.modules()), "hooks left on the model"
    assert all(isinstance(p, nn.Parameter) and torch.isfinite(p).all() for p in out.parameters())
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), f"{name} modified the input model ({k})"
    assert result.method == name and result.config["method"] == name
    assert result.seconds >= 0 and result.trainable_params >= 0


@pytest.mark.parametrize("name", list_methods())
def test_method_has_description_and_docstring(name):
    spec = method_spec(name)
    assert spec.description and "\n" not in spec.description
    assert (spec.method_class.__module__ and __import__(spec.method_class.__module__, fromlist=["x"]).__doc__)
