import torch
import torch.nn.functional as F

import unlearnkit as uk
from unlearnkit.errors import DivergenceError
from unlearnkit.components.weight_masks import ParamMask
from unlearnkit.training import Counter, fit, make_optimizer


def test_train_is_reproducible_with_one_seed(digits):
    def run():
        torch.manual_seed(0)
        m = uk.create_model("mlp", num_classes=10, in_channels=1, image_size=8, hidden=32)
        return uk.train(m, digits.train, uk.Recipe(epochs=2, lr=0.05, seed=3))

    a, b = run(), run()
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)


def test_train_learns_digits(digits):
    torch.manual_seed(0)
    m = uk.create_model("mlp", num_classes=10, in_channels=1, image_size=8, hidden=64)
    uk.train(m, digits.train, uk.Recipe(epochs=5, lr=0.05, batch_size=64))
    assert uk.accuracy(m, digits.test) > 90


def test_fit_counts_sample_passes_and_steps(digits):
    m = uk.create_model("mlp", num_classes=10, in_channels=1, image_size=8, hidden=16)
    opt = make_optimizer(m.parameters(), "sgd", 0.01)
    c = fit(m, digits.train, lambda m, x, y: F.cross_entropy(m(x), y), opt, epochs=2, batch_size=100,
            generator=torch.Generator().manual_seed(0))
    assert c.sample_passes == 2 * len(digits.train)
    assert c.steps == 2 * 14


def test_fit_stops_on_divergence(digits):
    m = uk.create_model("mlp", num_classes=10, in_channels=1, image_size=8, hidden=16)
    opt = make_optimizer(m.parameters(), "sgd", 0.01)
    import pytest

    with pytest.raises(DivergenceError, match="diverged"):
        fit(m, digits.train, lambda m, x, y: F.cross_entropy(m(x), y) * float("inf"), opt, epochs=1,
            batch_size=64, generator=torch.Generator().manual_seed(0))


def test_param_mask_freezes_entries_through_adam_and_weight_decay(digits):
    torch.manual_seed(0)
    m = uk.create_model("mlp", num_classes=10, in_channels=1, image_size=8, hidden=16)
    w = m.features[1].weight
    keep = torch.rand_like(w) < 0.5
    with torch.no_grad():
        w[~keep] = 0.0
    before = w.detach().clone()
    mask = ParamMask(m, {"features.1.weight": keep})
    for name in ("adam", "sgd"):
        opt = make_optimizer(m.parameters(), name, 0.05, momentum=0.9, weight_decay=0.1)
        fit(m, digits.train, lambda m, x, y: F.cross_entropy(m(x), y), opt, epochs=1, batch_size=64,
            generator=torch.Generator().manual_seed(0), mask=mask)
        assert torch.equal(w[~keep], before[~keep])
        assert not torch.equal(w[keep], before[keep])


def test_predict_logits_and_accuracy_of_empty_set(digits):
    from torch.utils.data import Subset

    m = uk.create_model("mlp", num_classes=10, in_channels=1, image_size=8)
    logits, labels = uk.training.predict_logits(m, digits.test)
    assert logits.shape == (len(digits.test), 10) and torch.equal(labels, digits.test.y)
    import pytest

    for empty in (Subset(digits.test, []), None):  # nothing to measure: an error, never NaN
        with pytest.raises(uk.UnlearnkitError, match="non-empty dataset"):
            uk.accuracy(m, empty)
