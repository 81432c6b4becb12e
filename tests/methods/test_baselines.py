"""The baselines (GA, RL, l1-sparse, SalUn, SCRUB, SSD) on digits class-3 forgetting, CNN and ViT.

Bounds: the tiny models start at 100% forget-set and ~100% retain-set (train) accuracy. Every
method must bring class-3 forget accuracy to <= 20%; retain accuracy must stay within a
method-specific margin of the original (GA, which ascends with no retain term, gets the widest).
The configs below are small-data settings checked on this machine, not the literature defaults.
"""

from __future__ import annotations

import pytest
import torch

import unlearnkit as uk
from unlearnkit.data import dataset_labels
from unlearnkit.errors import DivergenceError, InvalidConfigError
from unlearnkit.methods import create_method, get_method, list_methods, method_spec
from unlearnkit.methods.base import MethodConfig, TrainingConfig
from unlearnkit.methods.random_label import random_label_dataset, random_wrong_labels
from unlearnkit.methods.salun import forget_gradients, saliency_mask
from unlearnkit.training import accuracy

BASELINES = ["gradient_ascent", "random_label", "l1_sparse", "salun", "scrub", "ssd"]

# (config overrides for digits, allowed retain-accuracy drop in points)
# SCRUB's max-phase is stronger on the BatchNorm CNN: a smaller lr with more epochs (measured 0.7 / 97.6).
# OLD_SCRUB: the fields of the former defaults these settings were measured with (the 'small' preset differs).
OLD_SCRUB = dict(batch_size=128, weight_decay=5e-4, temperature=4.0)
SCRUB_CNN = (dict(epochs=4, max_epochs=2, optimizer="adam", lr=1e-3, forget_batch_size=32, **OLD_SCRUB), 5.0)
# Measured (forget / retain %, cnn then vit_tiny): GA 0/91.7, 0/91.2; RL 0/100, 0/99.0;
# l1_sparse 0/99.2, 0/93.7; SalUn 0/100, 0/99.0; SCRUB see SCRUB_CNN, vit 0/91.8; SSD 0/99.8, 0/100.
SETTINGS = {
    "gradient_ascent": (dict(lr=1e-2, epochs=2, batch_size=32), 15.0),
    # the default 'alternate' path (a forget pass, then a retain pass, per epoch) needs several forget steps
    # per epoch on digits: measured (cnn, seed 0) 0.0 / 99.3 for RL and 0.0 / 99.7 for SalUn at batch 32, lr 0.05
    "random_label": (dict(epochs=2, batch_size=32, lr=0.05), 5.0),
    "l1_sparse": (dict(epochs=2, batch_size=64, lr=1e-2, optimizer="adam"), 10.0),
    "salun": (dict(epochs=2, batch_size=32, lr=0.05), 5.0),
    "scrub": (dict(epochs=2, max_epochs=1, optimizer="adam", lr=3e-3, forget_batch_size=16, **OLD_SCRUB), 12.0),
    "ssd": (dict(alpha=3.0), 5.0),  # alpha must be < |D|/|D_f| ~ 10 (docs/methods/baselines.md)
}
# the reference's alternate RL path on the ViT (measured 17:30, seed 0): retain 89.1 (RL) and 92.7 (SalUn) of 100
ARCH_SETTINGS = {("scrub", "cnn"): SCRUB_CNN,
                 ("random_label", "vit_tiny"): (SETTINGS["random_label"][0], 12.0),
                 ("salun", "vit_tiny"): (SETTINGS["salun"][0], 12.0)}
FORGET_BOUND = 20.0


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_registered_with_configs():
    for name in BASELINES:
        assert name in list_methods()
        spec = method_spec(name)
        assert spec.description and "\n" not in spec.description
        base = MethodConfig if name == "ssd" else TrainingConfig
        assert issubclass(spec.config_class, base)
        config = spec.config_class()
        assert config.to_dict()["method"] == name
        assert set(config.all_constraints()) <= set(config.field_names())


@pytest.mark.parametrize("name", BASELINES)
def test_forgets_class3_keeps_retain(name, tiny_model, class3):
    arch, model = tiny_model
    before = _state(model)
    retain_before = accuracy(model, class3.retain)
    assert accuracy(model, class3.forget) >= 95.0
    overrides, margin = ARCH_SETTINGS.get((name, arch), SETTINGS[name])
    result = create_method(name, model, seed=0, **overrides).fit(class3.retain, class3.forget)
    out = result.model
    assert type(out) is type(model) and out is not model
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in out.modules())
    assert _same(_state(model), before), "the caller's model changed"
    forget_acc, retain_acc = accuracy(out, class3.forget), accuracy(out, class3.retain)
    assert forget_acc <= FORGET_BOUND, f"{name}/{arch}: forget acc {forget_acc:.1f}%"
    assert retain_acc >= retain_before - margin, f"{name}/{arch}: retain acc {retain_acc:.1f}% (was {retain_before:.1f}%)"
    assert result.sample_passes > 0


@pytest.mark.parametrize("optimizer,weight_decay", [("adam", 5e-4), ("sgd", 5e-4)])
def test_salun_unmasked_weights_bit_identical(optimizer, weight_decay, trained_cnn, class3):
    original = _state(trained_cnn)
    method = create_method("salun", trained_cnn, epochs=1, batch_size=64, lr=1e-2, optimizer=optimizer,
                           momentum=0.9, weight_decay=weight_decay, mask_ratio=0.3)
    out = method.fit(class3.retain, class3.forget).model
    # the mask is computed on the original model
    expected = saliency_mask(forget_gradients(trained_cnn, class3.forget, 64), 0.3)
    assert expected.keys() == method.masks.keys()
    assert all(torch.equal(expected[n], method.masks[n]) for n in expected)
    params = dict(out.named_parameters())
    moved = 0
    for name, mask in method.masks.items():
        assert torch.equal(params[name].detach()[~mask], original[name][~mask]), name
        moved += int((params[name].detach()[mask] != original[name][mask]).sum())
    assert moved > 0
    total = sum(m.numel() for m in method.masks.values())
    assert abs(sum(int(m.sum()) for m in method.masks.values()) - round(0.3 * total)) <= 1


def test_scrub_teacher_frozen(trained_cnn, class3):
    original = _state(trained_cnn)
    method = create_method("scrub", trained_cnn, epochs=1, max_epochs=1, optimizer="adam", lr=3e-3)
    out = method.fit(class3.retain, class3.forget).model
    teacher = method.teacher
    assert teacher is not out and not teacher.training
    assert all(not p.requires_grad for p in teacher.parameters())
    assert _same(_state(teacher), original)
    assert not _same(_state(out), original)


def test_scrub_max_phase_leaves_batchnorm_statistics(trained_cnn, class3):
    method = create_method("scrub", trained_cnn, optimizer="adam", lr=3e-3).prepare(class3.retain, class3.forget)
    student = method._work
    bn = [n for n, m in student.named_modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert bn, "the tiny CNN has BatchNorm"
    buffers = {k: v.clone() for k, v in student.state_dict().items() if "running" in k or "num_batches" in k}
    weights = {k: p.detach().clone() for k, p in student.named_parameters()}
    optimizer = uk.training.make_optimizer(student.parameters(), "adam", 3e-3)
    method._max_phase(student, class3.forget, optimizer)
    state = student.state_dict()
    assert all(torch.equal(state[k], v) for k, v in buffers.items())
    assert any(not torch.equal(p.detach(), weights[k]) for k, p in student.named_parameters())
    method._min_phase(student, class3.retain, optimizer)  # retain batches do update them
    assert any(not torch.equal(student.state_dict()[k], v) for k, v in buffers.items() if "running_mean" in k)


@pytest.mark.parametrize("inplace", [False, True])
def test_gradient_ascent_divergence_is_clear(inplace, trained_cnn, class3):
    before = _state(trained_cnn)
    method = create_method("gradient_ascent", trained_cnn, lr=1e8, epochs=5, batch_size=16, inplace=inplace)
    with pytest.raises(DivergenceError, match=r"gradient_ascent: .*diverged.*lower the learning rate"):
        method.fit(class3.retain, class3.forget)
    assert _same(_state(trained_cnn), before)


def test_ssd_changes_only_selected_entries(trained_cnn, class3):
    original = {n: p.detach().clone() for n, p in trained_cnn.named_parameters()}
    method = create_method("ssd", trained_cnn, alpha=10.0, dampening=1.0)
    result = method.fit(class3.retain, class3.forget)
    assert result.steps == 0
    assert result.sample_passes == len(class3.retain) + 2 * len(class3.forget)
    imp_d, imp_f = method.importances["data"], method.importances["forget"]
    selected = 0
    for name, p in result.model.named_parameters():
        chosen = imp_f[name] > 10.0 * imp_d[name]
        new, old = p.detach(), original[name]
        assert torch.equal(new[~chosen], old[~chosen]), name
        factor = torch.clamp(imp_d[name][chosen] / imp_f[name][chosen], max=1.0)
        torch.testing.assert_close(new[chosen], old[chosen] * factor)
        selected += int(chosen.sum())
    assert selected == result.info["dampened_entries"] > 0


def test_random_labels_are_wrong_seeded_and_fast(class3):
    labels = torch.arange(10).repeat(50)
    a = random_wrong_labels(labels, 10, torch.Generator().manual_seed(1))
    b = random_wrong_labels(labels, 10, torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and bool((a != labels).all()) and int(a.min()) >= 0 and int(a.max()) <= 9
    labels_before = class3.train.y.clone()
    data = random_label_dataset(class3.forget, 10, torch.Generator().manual_seed(0), class3.retain)
    assert len(data) == len(class3.forget) + len(class3.retain)
    assert uk.data.loading.resolve_arrays(data) is not None  # still on the in-memory fast path
    ys = dataset_labels(data)
    assert bool((ys[:len(class3.forget)] != 3).all())
    assert torch.equal(ys[len(class3.forget):], dataset_labels(class3.retain))
    assert torch.equal(class3.train.y, labels_before)  # the original labels are untouched


@pytest.mark.parametrize("name,field,value,message", [
    ("salun", "mask_ratio", 0.0,
     "The 'mask_ratio' parameter of SalUnConfig must be a float in the range (0.0, 1.0]. Got 0.0 instead."),
    ("ssd", "alpha", -1.0, "The 'alpha' parameter of SSDConfig must be a float in the range (0.0, inf) or None. Got -1.0 instead."),
    ("ssd", "dampening", 0, "The 'dampening' parameter of SSDConfig must be a float in the range (0.0, inf)."),
    ("l1_sparse", "alpha", -1e-4, "The 'alpha' parameter of L1SparseConfig must be a float in the range [0.0, inf)."),
    ("scrub", "temperature", 0.0, "The 'temperature' parameter of SCRUBConfig must be a float in the range (0.0, inf)."),
    ("scrub", "schedule", "cosine", "The 'schedule' parameter of SCRUBConfig must be one of 'constant'. Got 'cosine'"),
    ("scrub", "max_epochs", 11, "'max_epochs' (11) cannot exceed 'epochs' (10)"),
    ("random_label", "include_retain", "yes", "The 'include_retain' parameter of RandomLabelConfig must be a bool."),
    ("gradient_ascent", "lr", 0.0, "The 'lr' parameter of GradientAscentConfig must be a float in the range (0.0, inf)."),
])
def test_bad_config_message(name, field, value, message):
    with pytest.raises(InvalidConfigError) as err:
        get_method(name).config_class(**{field: value})
    assert message in str(err.value)
    assert "\n" not in str(err.value)
