"""Random labels (and SalUn's random-label step): the reference's two paths, 'alternate' (CIFAR-10) and 'concat'."""

from __future__ import annotations

import pytest
import torch

import unlearnkit as uk
from unlearnkit.errors import InvalidConfigError
from unlearnkit.methods import random_label as rl_module


class Recorder:
    """Wraps ``fit`` and ``random_labels`` in the random_label module: which passes ran, which labels were drawn."""

    def __init__(self, monkeypatch):
        self.passes: list[tuple[str, int]] = []
        self.draws: list[tuple[torch.Tensor, torch.Tensor]] = []
        real_fit, real_draw = rl_module.fit, rl_module.random_labels

        def fit(model, dataset, step, optimizer, **kwargs):
            self.passes.append((kwargs["description"], len(dataset)))
            return real_fit(model, dataset, step, optimizer, **kwargs)

        def draw(labels, num_classes, generator, kind="any"):
            out = real_draw(labels, num_classes, generator, kind)
            self.draws.append((labels.cpu().clone(), out.clone()))
            return out

        monkeypatch.setattr(rl_module, "fit", fit)
        monkeypatch.setattr(rl_module, "random_labels", draw)


def test_default_is_the_reference_cifar10_path():
    for name in ("random_label", "salun"):
        config = uk.make_config(name)
        assert (config.mode, config.labels) == ("alternate", "any")


@pytest.mark.parametrize("method", ["random_label", "salun"])
def test_alternate_runs_a_forget_pass_then_a_retain_pass_each_epoch(method, trained_cnn, class3, monkeypatch):
    rec = Recorder(monkeypatch)
    result = uk.unlearn(trained_cnn, class3.retain, class3.forget, method, seed=0, epochs=2, batch_size=64)
    n_f, n_r = len(class3.forget), len(class3.retain)
    assert rec.passes == [(f"{method} forget", n_f), (f"{method} retain", n_r)] * 2
    # labels drawn afresh for every forget batch (3 batches of <= 64 per epoch), uniform over all 10 classes
    assert len(rec.draws) == 2 * -(-n_f // 64)
    true = torch.cat([t for t, _ in rec.draws])
    drawn = torch.cat([d for _, d in rec.draws])
    assert set(drawn.tolist()) == set(range(10))
    assert 0 < int((drawn == true).sum()) < len(true) // 3  # 'any' keeps the true label about 1 time in 10
    epoch1, epoch2 = drawn[: len(drawn) // 2], drawn[len(drawn) // 2:]
    assert not torch.equal(epoch1, epoch2)
    assert result.sample_passes >= 2 * (n_f + n_r)


def test_wrong_labels_never_keep_the_true_class(trained_cnn, class3, monkeypatch):
    rec = Recorder(monkeypatch)
    uk.unlearn(trained_cnn, class3.retain, class3.forget, "random_label", seed=0, epochs=1, labels="wrong")
    true = torch.cat([t for t, _ in rec.draws])
    drawn = torch.cat([d for _, d in rec.draws])
    assert len(true) == len(class3.forget) and not bool((drawn == true).any())


def test_concat_mixes_a_fresh_relabelling_into_the_retain_set_each_epoch(trained_cnn, class3, monkeypatch):
    rec = Recorder(monkeypatch)
    uk.unlearn(trained_cnn, class3.retain, class3.forget, "random_label", seed=0, epochs=2, mode="concat")
    n = len(class3.forget) + len(class3.retain)
    assert rec.passes == [("random_label", n)] * 2
    assert len(rec.draws) == 2 and all(len(t) == len(class3.forget) for t, _ in rec.draws)
    assert not torch.equal(rec.draws[0][1], rec.draws[1][1])


def test_include_retain_false_runs_forget_passes_only(trained_cnn, class3, monkeypatch):
    rec = Recorder(monkeypatch)
    uk.unlearn(trained_cnn, class3.retain, class3.forget, "random_label", seed=0, epochs=2, include_retain=False)
    assert rec.passes == [("random_label forget", len(class3.forget))] * 2


def test_seeded_runs_are_identical(trained_cnn, class3):
    a = uk.unlearn(trained_cnn, class3.retain, class3.forget, "random_label", seed=3, epochs=1).model
    b = uk.unlearn(trained_cnn, class3.retain, class3.forget, "random_label", seed=3, epochs=1).model
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_epoch_lr_follows_the_schedule():
    assert [rl_module.epoch_lr(0.1, "constant", e, 4) for e in range(4)] == [0.1] * 4
    assert [rl_module.epoch_lr(0.1, "cosine", e, 2) for e in range(2)] == pytest.approx([0.1, 0.05])
    assert [rl_module.epoch_lr(0.1, "step", e, 4) for e in range(4)] == pytest.approx([0.1, 0.1, 0.01, 0.001])


@pytest.mark.parametrize("field,value,message", [
    ("mode", "mixed", "The 'mode' parameter of RandomLabelConfig must be one of 'alternate', 'concat'. Got 'mixed'"),
    ("labels", "all", "The 'labels' parameter of SalUnConfig must be one of 'any', 'wrong'. Got 'all'"),
])
def test_bad_options_are_one_line(field, value, message):
    method = "salun" if "SalUn" in message else "random_label"
    with pytest.raises(InvalidConfigError, match=message):
        uk.make_config(method, **{field: value})


