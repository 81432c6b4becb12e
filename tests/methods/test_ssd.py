"""SSD: the importance estimates against loops written from the paper's equations, and the dampening rule.

Foster et al. (AAAI 2024): I = E[(d CE / d theta)^2] (diagonal Fisher); entries with
I_f > alpha * I_D are scaled by min(lambda * I_D / I_f, 1). The per-sample estimate must not
depend on the order or batching of the data; the reference estimate squares batch-mean
gradients over D = retain (grouped by class) + forget, unshuffled.
"""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import Subset

from unlearnkit.data import dataset_labels
from unlearnkit.errors import InvalidConfigError
from unlearnkit.methods import create_method
from unlearnkit.methods.random_label import concat_datasets
from unlearnkit.methods.ssd import SSDConfig, batch_fisher, dampen, per_sample_fisher

ALPHA = 3.0  # below |D|/|D_f| (~10 for one digits class), so entries can be selected


@pytest.fixture
def small_class3(class3):
    """A few hundred samples of class-3 forgetting (fast hand-written loops)."""
    retain = Subset(class3.retain, list(range(0, len(class3.retain), 6)))
    forget = Subset(class3.forget, list(range(0, len(class3.forget), 3)))
    return retain, forget


def _samples(dataset, order=None):
    order = range(len(dataset)) if order is None else order
    xs, ys = zip(*(dataset[i] for i in order))
    return torch.stack([torch.as_tensor(x).float() for x in xs]), torch.as_tensor([int(y) for y in ys])


def _grads(model, x, y):
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.autograd.grad(F.cross_entropy(model(x), y), params)


def _hand_per_sample(model, dataset):
    """mean_i (dCE_i/dtheta)^2, one sample at a time, in eval mode."""
    model.eval()
    x, y = _samples(dataset)
    total = [torch.zeros_like(p) for p in model.parameters()]
    for i in range(len(y)):
        for t, g in zip(total, _grads(model, x[i:i + 1], y[i:i + 1])):
            t += g.square()
    return [t / len(y) for t in total]


def _hand_reference(model, retain, forget, batch_size):
    """The reference pass: retain sorted by class (stable), then forget; mean over batches of (batch-mean grad)^2."""
    model.eval()
    order = sorted(range(len(retain)), key=lambda i: int(retain[i][1]))
    xr, yr = _samples(retain, order)
    xf, yf = _samples(forget)

    def importance(x, y):
        total, batches = [torch.zeros_like(p) for p in model.parameters()], 0
        for start in range(0, len(y), batch_size):
            for t, g in zip(total, _grads(model, x[start:start + batch_size], y[start:start + batch_size])):
                t += g.square()
            batches += 1
        return [t / batches for t in total]

    return importance(torch.cat([xr, xf]), torch.cat([yr, yf])), importance(xf, yf)


def _close(got: dict, expected: list, rtol=1e-5):
    for (name, g), e in zip(got.items(), expected):
        scale = e.abs().max().item() or 1.0
        assert (g - e).abs().max().item() <= rtol * scale + 1e-12, name


def test_per_sample_importance_equals_hand_loop(trained_cnn, small_class3):
    retain, _ = small_class3
    _close(per_sample_fisher(trained_cnn, retain, 32), _hand_per_sample(trained_cnn, retain))


def test_per_sample_importance_is_independent_of_order_and_batching(trained_cnn, small_class3):
    retain, _ = small_class3
    reversed_retain = Subset(retain, list(range(len(retain)))[::-1])
    a = per_sample_fisher(trained_cnn, retain, 64)
    b = per_sample_fisher(trained_cnn, reversed_retain, 7)
    _close(b, list(a.values()))


def test_ssd_result_does_not_depend_on_seed_or_sample_order(trained_cnn, small_class3):
    """The former shuffled-batch estimate changed with the seed (batch composition); per_sample does not."""
    retain, forget = small_class3
    shuffled = Subset(retain, torch.randperm(len(retain), generator=torch.Generator().manual_seed(5)).tolist())
    a = create_method("ssd", trained_cnn, seed=0, alpha=ALPHA).fit(retain, forget)
    b = create_method("ssd", trained_cnn, seed=1, alpha=ALPHA, batch_size=16).fit(shuffled, forget)
    assert a.info["dampened_entries"] > 0
    assert abs(a.info["dampened_entries"] - b.info["dampened_entries"]) <= 2  # float ties at the threshold
    for (n, pa), pb in zip(a.model.named_parameters(), b.model.parameters()):
        assert torch.allclose(pa, pb, rtol=1e-4, atol=1e-6), n


def test_reference_batches_equal_hand_written_reference_loop(trained_cnn, small_class3):
    retain, forget = small_class3
    method = create_method("ssd", trained_cnn, importance="reference_batches", alpha=ALPHA)
    result = method.fit(retain, forget)
    assert result.info["batch_size"] == 64 and result.info["class_forgetting"]
    expected_d, expected_f = _hand_reference(trained_cnn, retain, forget, 64)
    _close(method.importances["data"], expected_d)
    _close(method.importances["forget"], expected_f)


def test_reference_batches_depend_on_class_grouping(trained_cnn, small_class3):
    """Class-pure batches give a larger I_D than shuffled (mixed) ones: why the reference's estimate is order-bound."""
    retain, forget = small_class3
    ref = create_method("ssd", trained_cnn, importance="reference_batches")
    ref.fit(retain, forget)
    mixed = batch_fisher(trained_cnn, concat_datasets(retain, forget), 64, shuffle=True,
                         generator=torch.Generator().manual_seed(0))
    grouped_total = sum(float(v.sum()) for v in ref.importances["data"].values())
    assert grouped_total > 1.3 * sum(float(v.sum()) for v in mixed.values())


def test_dampening_rule_on_hand_made_importances():
    model = nn.Linear(3, 2, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]))
    imp_d = {"weight": torch.tensor([[1.0, 1.0, 0.0], [2.0, 1.0, 1.0]])}
    imp_f = {"weight": torch.tensor([[20.0, 10.0, 5.0], [8.0, 0.5, 100.0]])}
    selected = dampen(model, imp_d, imp_f, alpha=5.0, dampening=2.0)
    # I_f > 5 I_D: (0,0) 20>5 yes, (0,1) 10>5 yes, (0,2) 5>0 yes, (1,0) 8>10 no, (1,1) no, (1,2) 100>5 yes
    # factor min(2 I_D / I_f, 1): 0.1, 0.2, 0.0, -, -, 0.02
    expected = torch.tensor([[0.1, 0.4, 0.0], [4.0, 5.0, 0.12]])
    assert selected == 4
    torch.testing.assert_close(model.weight.detach(), expected)
    untouched = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])[1, :2]
    assert torch.equal(model.weight.detach()[1, :2], untouched)  # bit for bit
    with torch.no_grad():
        model.weight.fill_(1.0)
    assert dampen(model, {"weight": torch.ones(2, 3)}, {"weight": torch.full((2, 3), 5.0)}, 5.0, 1.0) == 0  # strict >


def test_alpha_at_or_above_the_bound_warns_and_dampens_nothing(trained_cnn, small_class3):
    retain, forget = small_class3
    bound = (len(retain) + len(forget)) / len(forget)
    with pytest.warns(UserWarning, match=r"alpha=.* >= \|D\|/\|D_f\|.*nothing will be dampened"):
        result = create_method("ssd", trained_cnn, alpha=bound * 1.01).fit(retain, forget)
    assert result.info["dampened_entries"] == 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert create_method("ssd", trained_cnn, alpha=ALPHA).fit(retain, forget).info["dampened_entries"] > 0


class _ItemModel(nn.Module):
    """A forward with data-dependent Python control flow, which torch.func's vmap cannot trace."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.lin = nn.Linear(64, 10)

    def forward(self, x):
        h = x.flatten(1)
        if float(h.abs().sum()) >= 0:  # always true; .item()-like calls fail under vmap
            h = h * 1.0
        return self.lin(h)


def test_per_sample_falls_back_to_a_loop_for_untraceable_models(small_class3):
    retain, _ = small_class3
    model = _ItemModel()
    _close(per_sample_fisher(model, retain, 32), _hand_per_sample(model, retain))


def test_importance_option_is_validated():
    with pytest.raises(InvalidConfigError, match="The 'importance' parameter of SSDConfig must be one of"):
        SSDConfig(importance="batches")
    assert SSDConfig().importance == "per_sample" and SSDConfig().batch_size is None


def test_sample_forgetting_uses_the_reference_batch_size(trained_cnn, random10):
    forget = random10.forget
    retain = Subset(random10.retain, list(range(300)))
    assert set(dataset_labels(forget).tolist()) & set(dataset_labels(retain).tolist())
    result = create_method("ssd", trained_cnn, importance="reference_batches").fit(retain, forget)
    assert result.info["batch_size"] == 128 and not result.info["class_forgetting"]


class _TinyEncoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.layer = nn.TransformerEncoderLayer(d_model=8, nhead=2, dim_feedforward=16, batch_first=True)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        return self.head(self.layer(x).mean(1))


def test_default_alpha_is_the_references_ten_for_cnns_and_five_for_attention_models(trained_cnn, small_class3):
    from unlearnkit.methods.ssd import reference_alpha
    from unlearnkit.models import create_model

    assert reference_alpha(trained_cnn) == 10.0
    vit = create_model("vit_tiny", num_classes=10, in_channels=1, image_size=8, patch_size=2, dim=16, depth=1, heads=2)
    assert reference_alpha(vit) == 5.0  # our zoo's ViT (an ``Attention`` module)
    assert reference_alpha(_TinyEncoder()) == 5.0  # torch's nn.MultiheadAttention
    assert SSDConfig().alpha is None
    retain, forget = small_class3
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        info = create_method("ssd", trained_cnn).fit(retain, forget).info
    assert info["alpha"] == 10.0
