"""Retrain starts from what the original started from: a fresh draw, or the weights it was fine-tuned from."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

import unlearnkit as uk
from unlearnkit.errors import InvalidConfigError, UnlearnkitError
from unlearnkit.methods import method_options
from unlearnkit.workflow import initial_model_factory, method_options_for

MLP = dict(in_channels=1, image_size=8, hidden=32)
TINY_STEP = dict(epochs=1, lr=1e-12, momentum=0.0, weight_decay=0.0, batch_size=256)  # training barely moves


def mlp(num_classes=10, seed=0, **kwargs):
    torch.manual_seed(seed)
    return uk.create_model("mlp", num_classes=num_classes, **MLP, **kwargs)


def test_builtin_model_starts_from_a_weights_file(tmp_path):
    source = mlp(num_classes=5, seed=1)  # another head size: only the body matches
    path = tmp_path / "body.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    model = mlp(seed=2, weights=str(path))
    fresh = mlp(seed=2)
    own, src = model.state_dict(), source.state_dict()
    for name, tensor in own.items():
        if tensor.shape == src[name].shape:
            assert torch.equal(tensor, src[name]), name
        else:  # the head keeps its fresh draw
            assert torch.equal(tensor, fresh.state_dict()[name]), name
    assert any(own[n].shape != src[n].shape for n in own)


def test_builtin_model_refuses_pretrained_flag():
    with pytest.raises(UnlearnkitError, match="no published pretrained weights; pass weights=FILE"):
        mlp(pretrained=True)


def test_retrain_uses_the_model_factory(class3):
    start = mlp(seed=7)
    calls = []

    def factory():
        calls.append(1)
        return mlp(seed=7)

    result = uk.unlearn(mlp(seed=0), class3.retain, class3.forget, "retrain", model_factory=factory, **TINY_STEP)
    assert calls == [1]
    for name, tensor in result.model.state_dict().items():
        assert torch.allclose(tensor, start.state_dict()[name], atol=1e-6), name
    plain = uk.unlearn(mlp(seed=5), class3.retain, class3.forget, "retrain", **TINY_STEP)  # a fresh draw instead
    assert not torch.allclose(plain.model.state_dict()["features.1.weight"], start.state_dict()["features.1.weight"])


@pytest.mark.parametrize("factory, message", [
    (lambda: uk.create_model("mlp", num_classes=10, in_channels=1, image_size=8, hidden=16), "another architecture"),
    (lambda: "not a model", "returned str, not an nn.Module"),
])
def test_retrain_rejects_a_factory_of_another_model(class3, factory, message):
    with pytest.raises(UnlearnkitError, match=message) as info:
        uk.unlearn(mlp(), class3.retain, class3.forget, "retrain", model_factory=factory, **TINY_STEP)
    assert "\n" not in str(info.value)
    with pytest.raises(UnlearnkitError, match="model_factory must be a callable"):
        uk.unlearn(mlp(), class3.retain, class3.forget, "retrain", model_factory=3, **TINY_STEP)


def test_method_options_are_not_config_fields(class3):
    assert {"device", "seed", "inplace", "model_factory"} <= set(method_options("retrain"))
    assert "check_data" in method_options("pgu") and "model_factory" not in method_options("finetune")
    with pytest.raises(InvalidConfigError, match="model_factory"):  # finetune has no such option or field
        uk.unlearn(mlp(), class3.retain, class3.forget, "finetune", model_factory=lambda: mlp())


def test_checkpoint_from_weights_gives_retrain_that_start(tmp_path):
    source = mlp(seed=3)
    path = tmp_path / "init.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    meta = {"model": "mlp", "model_args": {"num_classes": 10, **MLP, "weights": str(path)}}
    factory = initial_model_factory(meta)
    built = factory()
    for name, tensor in source.state_dict().items():
        assert torch.equal(built.state_dict()[name], tensor), name
    assert set(method_options_for("retrain", meta)) == {"model_factory"}
    assert method_options_for("finetune", meta) == {}
    scratch = {"model": "mlp", "model_args": {"num_classes": 10, **MLP}}
    assert initial_model_factory(scratch) is None and method_options_for("retrain", scratch) == {}


def test_cli_retrain_of_a_fine_tuned_checkpoint_starts_from_its_weights(tmp_path, monkeypatch):
    from unlearnkit.checkpoint import load_checkpoint
    from unlearnkit.cli import main

    source = mlp(seed=3)
    path = tmp_path / "init.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    original = tmp_path / "original"
    assert main(["train", "--dataset", "digits", "--model", "mlp", "--model-arg", f"weights={path}",
                 "--model-arg", "hidden=32", "--epochs", "1", "--out", str(original), "-q"]) == 0
    out = tmp_path / "retrain"
    overrides = [f"--set={k}={v}" for k, v in TINY_STEP.items()]
    assert main(["forget", "--checkpoint", str(original), "--method", "retrain", "--forget", "class:3",
                 "--out", str(out), *overrides, "-q"]) == 0
    model, _ = load_checkpoint(out, num_classes=10)
    for name, tensor in source.state_dict().items():
        assert torch.allclose(model.state_dict()[name], tensor, atol=1e-6), name
