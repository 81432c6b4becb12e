"""rfa_lora (Residual Feature Alignment with LoRA, a reconstruction) on the tiny CNN and ViT."""

from __future__ import annotations

import copy

import pytest
import torch

import unlearnkit as uk
from unlearnkit.data.loading import iterate_batches
from unlearnkit.errors import InvalidConfigError, UnlearnkitError
from unlearnkit.methods.rfa_lora import HEAD_INPUT, default_aligned_layers

FAST = dict(epochs=2, batch_size=32)  # Adam lr 1e-3 (default); cnn 1 epoch left 23.9% forget accuracy
FORGET_BOUND = 10.0  # forget accuracy (%) must fall below this
RETAIN_SLACK = 5.0  # retain accuracy (%) may drop at most this many points
RETAIN_RESIDUAL_BOUND = 0.15  # mean relative sq. residual of retain features (measured: cnn 0.046, vit 0.093)


def test_rfa_class_forgetting(tiny_model, class3):
    name, model = tiny_model
    keys = list(model.state_dict())
    ra0 = uk.accuracy(model, class3.retain)
    result = uk.unlearn(model, class3.retain, class3.forget, "rfa_lora", **FAST)
    out = result.model
    forget_acc, retain_acc = uk.accuracy(out, class3.forget), uk.accuracy(out, class3.retain)
    assert forget_acc < FORGET_BOUND, f"{name}: forget accuracy {forget_acc:.1f}%"
    assert retain_acc >= ra0 - RETAIN_SLACK, f"{name}: retain {ra0:.1f}% -> {retain_acc:.1f}%"
    assert type(out) is type(model) and list(out.state_dict()) == keys
    assert not any("lora" in n or "base_layer" in n for n, _ in out.named_modules())
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in out.modules())
    assert result.info["rfa_shift"] == "mean_other"
    assert result.trainable_params == result.info["lora_trainable_parameters"]
    # the mechanism: retain features stay where they were, forget features move far
    layers = default_aligned_layers(model)
    retain_residual = _relative_residual(model, out, class3.retain, layers)
    forget_residual = _relative_residual(model, out, class3.forget, layers)
    assert retain_residual < RETAIN_RESIDUAL_BOUND, f"{name}: retain residual {retain_residual:.3f}"
    assert forget_residual > 3 * retain_residual, f"{name}: forget {forget_residual:.3f}, retain {retain_residual:.3f}"


def test_rfa_forget_weight_zero_leaves_the_class_recognised(trained_cnn, class3):
    """Ablation: without the forget alignment term, retain alignment + CE alone do not forget class 3."""
    r = uk.unlearn(trained_cnn, class3.retain, class3.forget, "rfa_lora", forget_weight=0.0, **FAST)
    assert uk.accuracy(r.model, class3.forget) > 80.0


def _features(model, data, layers) -> dict[str, torch.Tensor]:
    """Outputs of the named modules on the first 256 samples of ``data`` (eval mode)."""
    found, handles = {}, []
    for name in layers:
        hook = lambda m, i, o, name=name: found.__setitem__(name, o.detach().flatten(1))  # noqa: E731
        handles.append(model.get_submodule(name).register_forward_hook(hook))
    model.eval()
    with torch.no_grad():
        model(next(iterate_batches(data, 256))[0])
    for h in handles:
        h.remove()
    return found


def _relative_residual(original, unlearned, data, layers) -> float:
    """mean over layers and samples of ||f_unlearned - f_original||^2 / ||f_original||^2."""
    before, after = _features(original, data, layers), _features(unlearned, data, layers)
    ratios = [((after[n] - before[n]) ** 2).sum(1) / (before[n] ** 2).sum(1) for n in layers]
    return float(torch.stack([r.mean() for r in ratios]).mean())


def test_default_aligned_layers(trained_cnn, trained_vit):
    assert default_aligned_layers(trained_vit) == ["blocks.0", "blocks.1"]
    assert default_aligned_layers(trained_cnn) == ["features.2", "features.5", "features.8"]  # the ReLUs
    assert default_aligned_layers(uk.create_model("resnet20", num_classes=10)) == ["layer1", "layer2", "layer3"]
    linear = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    assert default_aligned_layers(linear) == [HEAD_INPUT]


def test_rfa_fixed_shift_and_custom_layers_run(trained_cnn, class3):
    """The 'fixed' shift target and an explicit layer list run and leave a plain model without hooks."""
    model = copy.deepcopy(trained_cnn)
    r = uk.unlearn(model, class3.retain, class3.forget, "rfa_lora", shift="fixed", layers=["features.8"],
                   epochs=1, batch_size=128)
    assert r.info["rfa_layers"] == ["features.8"] and r.info["rfa_shift"] == "fixed"
    assert all(not m._forward_hooks for m in r.model.modules())
    assert list(r.model.state_dict()) == list(trained_cnn.state_dict())


def test_rfa_bad_inputs(trained_cnn, class3):
    with pytest.raises(InvalidConfigError, match="'shift'.*'fixed'.*'mean_other'"):
        uk.make_config("rfa_lora", shift="random")
    with pytest.raises(InvalidConfigError, match="'rank'"):
        uk.make_config("rfa_lora", rank=0)
    with pytest.raises(UnlearnkitError, match=r"'layers' parameter names modules \['nope'\]"):
        uk.unlearn(trained_cnn, class3.retain, class3.forget, "rfa_lora", layers=("nope",))
    with pytest.raises(UnlearnkitError, match="needs a forget dataset"):
        uk.unlearn(trained_cnn, class3.retain, None, "rfa_lora")


def _merged_weights(model, data, **options) -> tuple[dict[str, torch.Tensor], dict]:
    r = uk.unlearn(model, data.retain, data.forget, "rfa_lora", epochs=1, batch_size=128, **options)
    return r.model.state_dict(), r.info


@pytest.mark.parametrize("shift, budget_mb, cached", [("mean_other", 1024.0, ["retain", "forget"]),
                                                      ("fixed", 1024.0, ["retain", "forget"]),
                                                      ("mean_other", 0.5, ["forget"])])
def test_rfa_cached_original_features_train_the_same_model(trained_cnn, class3, shift, budget_mb, cached):
    """The fast path (original features computed once, looked up by sample position; mean_other's forget term
    from the norms only; or only the forget set cached) trains the model the per-step no-grad forward
    trains, to float noise."""
    fast, fast_info = _merged_weights(trained_cnn, class3, shift=shift, feature_cache_mb=budget_mb)
    slow, slow_info = _merged_weights(trained_cnn, class3, shift=shift, feature_cache_mb=0.0)
    assert fast_info["rfa_cached_features"] == cached and slow_info["rfa_cached_features"] == []
    moved = max(float((fast[k] - trained_cnn.state_dict()[k]).abs().max()) for k in fast)
    assert moved > 1e-3  # training happened, so equality below is not trivial
    for k in fast:
        torch.testing.assert_close(fast[k], slow[k], rtol=1e-4, atol=1e-5, msg=k)


def test_rfa_feature_cache_budget_and_augmentation(trained_cnn, class3):
    """The forget set is cached first (mean_other: one norm per sample and layer); the retain set only within
    the budget; augmentation changes a sample's features, so then nothing is cached."""
    from unlearnkit.methods.rfa_lora import RfaLora

    method = RfaLora(trained_cnn, uk.make_config("rfa_lora", feature_cache_mb=0.5))
    method.prepare(class3.retain, class3.forget)
    assert method.info["rfa_cached_features"] == ["forget"]  # 1214 retain images x 25 KB do not fit in 0.5 MB
    assert method.forget_cache.norms_only and not method.forget_cache.features
    augmented = RfaLora(trained_cnn, uk.make_config("rfa_lora", augment=True)).prepare(class3.retain, class3.forget)
    assert augmented.info["rfa_cached_features"] == [] and augmented.retain_cache is None


def test_rfa_mean_other_forget_difference_equals_residual_minus_target():
    """(adapted - original) - (m_y - original) == adapted - m_y: the identity the norms-only forget cache uses."""
    from unlearnkit.methods.rfa_lora import relative_sq, relative_sq_to, squared_norms

    g = torch.Generator().manual_seed(0)
    adapted, original = torch.randn(6, 4, 3, 3, generator=g), torch.randn(6, 4, 3, 3, generator=g)
    table, labels = torch.randn(10, 4, 3, 3, generator=g), torch.tensor([0, 3, 3, 9, 1, 2])
    straightforward = relative_sq((adapted - original) - (table[labels] - original), original)
    fast = relative_sq_to(adapted - table[labels], squared_norms(original))
    torch.testing.assert_close(fast, straightforward, rtol=1e-5, atol=1e-7)
