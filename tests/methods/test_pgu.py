"""Projected-Gradient Unlearning: unfold, downdate, projection, forgetting, sequential requests, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import Subset

import unlearnkit as uk
from unlearnkit.components import gradient_projection as pgu
from unlearnkit.methods.pgu import PGU, PGUConfig, forget_loss


def _direct_patches(x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """Patches by explicit loops over output positions: (positions * batch, C*kh*kw)."""
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = conv.kernel_size, conv.stride, conv.padding, conv.dilation
    xp = F.pad(x, (pw, pw, ph, ph))
    out_h = (x.shape[2] + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    out_w = (x.shape[3] + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    rows = []
    for n in range(x.shape[0]):
        for i in range(out_h):
            for j in range(out_w):
                patch = xp[n, :, i * sh:i * sh + dh * (kh - 1) + 1:dh, j * sw:j * sw + dw * (kw - 1) + 1:dw]
                rows.append(patch.reshape(-1))
    return torch.stack(rows).double(), out_h, out_w


def test_unfold_gram_and_projected_gradient_match_direct_computation():
    torch.manual_seed(0)
    conv = nn.Conv2d(2, 3, 3, stride=2, padding=1, dilation=2, bias=False)
    x = torch.randn(2, 2, 7, 7)
    cols = pgu.layer_inputs(conv, x)[0].double()
    direct, out_h, out_w = _direct_patches(x, conv)
    assert cols.shape == direct.shape == (2 * out_h * out_w, 18)
    gram_unfold, gram_direct = cols.T @ cols, direct.T @ direct
    torch.testing.assert_close(gram_unfold, gram_direct, rtol=0, atol=1e-10)

    # gradient of a loss on the conv output, by autograd and by hand from the direct patches
    target = torch.randn(2, 3, out_h, out_w)
    out = conv(x)
    assert out.shape == target.shape
    ((out - target) ** 2).sum().backward()
    delta = 2 * (out - target).detach().double()  # dL/dout, (n, out, h, w)
    delta_rows = delta.permute(0, 2, 3, 1).reshape(-1, 3)  # same (n, i, j) order as the patches
    grad_direct = delta_rows.T @ direct  # (out, C*kh*kw)
    torch.testing.assert_close(conv.weight.grad.reshape(3, -1).double(), grad_direct, rtol=1e-5, atol=1e-5)

    cache = pgu.PGUCache.build(nn.Sequential(conv), [uk.data.ArrayDataset(x, torch.zeros(2))], batch_size=2)
    bases, _ = pgu.projection_bases(cache, cache.grams, cache.traces, 0.9)
    projected = pgu.project_(conv.weight.grad.clone(), bases["0"]).reshape(3, -1).double()
    lam, vec = torch.linalg.eigh(gram_direct)
    lam, vec = lam.flip(0), vec.flip(1)
    sv = lam.clamp_min(0).sqrt()  # the reference's rule: cumulative singular-value share <= tau, plus one
    k = int((torch.cumsum(sv, 0) / sv.sum() <= 0.9).sum()) + 1
    assert 0 < k < 18
    u = vec[:, :k]
    torch.testing.assert_close(projected, grad_direct - grad_direct @ u @ u.T, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kwargs", [dict(padding="same"), dict(padding=2, padding_mode="reflect", stride=2),
                                    dict(padding=1, dilation=2, stride=(2, 1), groups=2)])
def test_unfolded_inputs_times_weight_reproduce_the_conv(kwargs):
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 6, 3, bias=False, **kwargs)
    x = torch.randn(2, 4, 9, 9)
    cols = pgu.layer_inputs(conv, x)  # (groups, n * positions, d)
    g = conv.groups
    out = cols @ conv.weight.reshape(g, 6 // g, -1).transpose(1, 2)
    ref = conv(x)
    n, o, h, w = ref.shape
    mine = out.reshape(g, n, h * w, o // g).permute(1, 0, 3, 2).reshape(n, o, h, w)
    torch.testing.assert_close(mine, ref, rtol=1e-5, atol=1e-5)


def test_grouped_conv_gets_one_gram_per_group():
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 4, 3, stride=2, padding=1, groups=2, bias=False)
    x = torch.randn(3, 4, 6, 6)
    cols = pgu.layer_inputs(conv, x).double()  # (2, n, 2*9)
    full = pgu.layer_inputs(nn.Conv2d(4, 4, 3, stride=2, padding=1, bias=False), x)[0].double()
    torch.testing.assert_close(cols[0], full[:, :18])
    torch.testing.assert_close(cols[1], full[:, 18:])
    # the grouped conv's output only depends on what project_ keeps: a full-energy projection kills its gradient
    cache = pgu.PGUCache.build(nn.Sequential(conv), [uk.data.ArrayDataset(x, torch.zeros(3))], batch_size=3)
    bases, ranks = pgu.projection_bases(cache, cache.grams, cache.traces, 1.0)
    assert len(ranks["0"]) == 2
    conv(x).pow(2).sum().backward()
    assert pgu.project_(conv.weight.grad.clone(), bases["0"]).abs().max() < 1e-4 * conv.weight.grad.abs().max()


def test_downdate_equals_recomputation_on_the_retain_set(trained_cnn, digits, class3):
    # every sample and patch, float64 (tests/methods/test_pgu_budget.py: the same under a sample budget)
    kw = dict(max_dense_features=100, rank=16, max_samples=None, max_patches=None, dtype=torch.float64)
    cache = pgu.PGUCache.build(trained_cnn, [digits.train], **kw)  # convs 2 and 3 are sketched
    assert cache.layers["features.3"]["lowrank"] and not cache.layers["head"]["lowrank"]
    fg, ft = cache.forget_stats(trained_cnn, class3.forget)
    retain_g, retain_t = cache.downdated(fg, ft)
    direct = pgu.PGUCache.build(trained_cnn, [class3.retain], **kw)
    for name in cache.layers:
        scale = max(1.0, direct.grams[name].abs().max().item())
        assert (retain_g[name] - direct.grams[name]).abs().max().item() <= 1e-8 * scale, name
        assert torch.allclose(retain_t[name], direct.traces[name], rtol=0, atol=1e-8 * scale)


def test_lowrank_sketch_recovers_the_dense_projector():
    torch.manual_seed(0)
    layer = nn.Sequential(nn.Linear(40, 3))
    x = torch.randn(300, 5) @ torch.randn(5, 40) * torch.linspace(1, 3, 5).repeat(8)  # rank-5 inputs
    data = uk.data.ArrayDataset(x, torch.zeros(300))
    dense = pgu.PGUCache.build(layer, [data], max_dense_features=4096, dtype=torch.float64)
    sketch = pgu.PGUCache.build(layer, [data], max_dense_features=16, rank=12, dtype=torch.float64)
    assert sketch.grams["0"].shape == (1, 40, 12)
    for energy in (0.9, 0.99):  # (tau = 1 freezes a dense layer; a sketch only knows the data's span)
        bd, rd = pgu.projection_bases(dense, dense.grams, dense.traces, energy)
        bs, rs = pgu.projection_bases(sketch, sketch.grams, sketch.traces, energy)
        assert rd == rs
        pd, ps = bd["0"][0] @ bd["0"][0].T, bs["0"][0] @ bs["0"][0].T
        torch.testing.assert_close(pd, ps, rtol=0, atol=1e-6)


def test_projected_update_moves_retain_outputs_far_less(trained_cnn, digits, class3):
    model = trained_cnn.eval()
    cache = pgu.PGUCache.build(model, [class3.retain])
    bases, _ = pgu.projection_bases(cache, cache.grams, cache.traces, 0.95)
    x_f, y_f = class3.forget.dataset.batch(torch.as_tensor(class3.forget.indices))
    forget_loss(model(x_f), y_f, 1e-3, 0.2).backward()
    x_r, _ = class3.retain.dataset.batch(torch.as_tensor(class3.retain.indices[:400]))
    inputs = {}
    hooks = [m.register_forward_pre_hook(lambda m, a, n=n: inputs.__setitem__(n, a[0].detach()))
             for n, m in pgu.target_layers(model).items()]
    with torch.no_grad():
        model(x_r)
    for h in hooks:
        h.remove()
    for name in ("features.3", "head"):  # a strided conv and the classifier
        layer = pgu.target_layers(model)[name]
        raw = layer.weight.grad.detach().clone()
        projected = pgu.project_(raw.clone(), bases[name])
        raw = raw * projected.norm() / raw.norm()  # same size
        if isinstance(layer, nn.Conv2d):
            moved = lambda d: F.conv2d(inputs[name], d, stride=layer.stride, padding=layer.padding)  # noqa: E731
        else:
            moved = lambda d: inputs[name] @ d.T  # noqa: E731
        ratio = moved(projected).norm() / moved(raw).norm()
        assert ratio < 0.5, (name, float(ratio))


@pytest.fixture
def cache_file(tmp_path):
    return tmp_path / "gram.safetensors"


INPUT_LAYER = {"cnn": "features.0", "vit_tiny": "patch_embed"}


def _frozen_state(model, input_layer):
    targets = {f"{n}.weight" for n in pgu.target_layers(model)} - {f"{input_layer}.weight"}
    return {k: v.clone() for k, v in model.state_dict().items() if k not in targets}


def test_class_forgetting_without_retain_data(tiny_model, digits, class3, cache_file):
    arch, model = tiny_model
    pgu.prepare(model, digits.train, path=cache_file)
    frozen = _frozen_state(model, INPUT_LAYER[arch])
    result = uk.unlearn(model, None, class3.forget, "pgu", cache=str(cache_file))
    out = result.model
    assert uk.accuracy(out, class3.forget) < 10.0
    assert uk.accuracy(model, class3.retain) - uk.accuracy(out, class3.retain) < 5.0
    assert uk.accuracy(model, class3.test_retain) - uk.accuracy(out, class3.test_retain) < 5.0
    assert result.sample_passes <= 5 * len(class3.forget)
    assert result.info["frozen_layers"] == [INPUT_LAYER[arch]]
    for k, v in _frozen_state(out, INPUT_LAYER[arch]).items():  # biases, BN/LN, embeddings, input layer: bit for bit
        assert torch.equal(v, frozen[k]), k
    assert result.info["forgetting"] == "class" and result.info["check_set"] == "none"
    saved = pgu.PGUCache.load(cache_file)
    assert set(saved.subtracted) == set(class3.forget_ids.tolist())
    saved.check_model(out)  # the cache now belongs to the unlearned model


def test_random_sample_forgetting_stops_at_the_heldout_accuracy(tiny_model, digits, random10, cache_file):
    arch, model = tiny_model
    pgu.prepare(model, digits.train, path=cache_file)
    runner = PGU(model, PGUConfig(cache=str(cache_file)), check_data=digits.test)
    result = runner.fit(None, random10.forget)
    out, heldout = result.model, uk.accuracy(model, digits.test)
    assert result.info["forgetting"] == "sample" and result.info["forget_acc_target"] == pytest.approx(heldout)
    assert result.info["check_set"] == "check_data"
    assert uk.accuracy(out, random10.forget) <= heldout + 3.0  # the retrain oracle's forget accuracy ~ held-out
    assert uk.accuracy(model, random10.retain) - uk.accuracy(out, random10.retain) < 2.0
    moved = [n for n, m in pgu.target_layers(out).items()
             if not torch.equal(m.weight, pgu.target_layers(model)[n].weight)]
    assert moved and INPUT_LAYER[arch] not in moved  # not a no-op; the input layer stays frozen


def test_without_cache_the_gram_comes_from_retain_and_forget(trained_cnn, class3):
    runner = PGU(trained_cnn, PGUConfig(max_steps=3))
    result = runner.fit(class3.retain, class3.forget)
    assert result.info["gram"].startswith("computed") and result.prepare_seconds > 0
    assert result.info["check_set"] == "retain"
    assert set(runner.cache.subtracted) == set(class3.forget_ids.tolist())


def test_two_sequential_requests_need_no_retain_data(trained_cnn, digits, class3, cache_file):
    pgu.prepare(trained_cnn, digits.train, path=cache_file)
    first = uk.unlearn(trained_cnn, None, class3.forget, "pgu", cache=str(cache_file)).model
    ids5 = np.flatnonzero(uk.data.dataset_labels(digits.train).numpy() == 5)
    forget5 = Subset(digits.train, ids5.tolist())
    second = uk.unlearn(first, None, forget5, "pgu", cache=str(cache_file)).model
    retain = Subset(digits.train, np.setdiff1d(np.arange(len(digits.train)), np.r_[class3.forget_ids, ids5]).tolist())
    assert uk.accuracy(second, forget5) < 10.0 and uk.accuracy(second, class3.forget) < 10.0
    assert uk.accuracy(trained_cnn, retain) - uk.accuracy(second, retain) < 5.0
    cache = pgu.PGUCache.load(cache_file)
    assert len(cache.requests) == 2 and len(cache.subtracted) == len(class3.forget_ids) + len(ids5)
    before = cache_file.read_bytes()
    with pytest.raises(uk.UnlearnkitError, match="already subtracted"):
        uk.unlearn(second, None, forget5, "pgu", cache=str(cache_file))
    with pytest.raises(uk.UnlearnkitError, match="updated by an earlier request"):
        uk.unlearn(trained_cnn, None, forget5, "pgu", cache=str(cache_file))
    assert cache_file.read_bytes() == before


def test_bad_inputs_leave_the_cache_unchanged(trained_cnn, trained_vit, digits, class3, cache_file):
    first_half = Subset(digits.train, list(range(600)))
    pgu.prepare(trained_cnn, first_half, path=cache_file)
    before = cache_file.read_bytes()
    cache = pgu.PGUCache.load(cache_file)
    with pytest.raises(uk.UnlearnkitError, match="not in the prepared set") as err:
        cache.subtract(class3.forget, model=trained_cnn)
    assert "\n" not in str(err.value)
    with pytest.raises(uk.UnlearnkitError, match="not in the prepared set"):
        uk.unlearn(trained_cnn, None, class3.forget, "pgu", cache=str(cache_file))
    some = Subset(digits.train, list(range(10)))
    cache.subtract(some, model=trained_cnn, save=False)  # in memory only
    with pytest.raises(uk.UnlearnkitError, match="already subtracted"):
        cache.subtract(some, model=trained_cnn, save=False)
    for energy in (0.0, 1.5, -0.1):
        with pytest.raises(uk.InvalidConfigError, match="'energy' parameter of PGUConfig must be a float in the "
                                                        r"range \(0.0, 1.0\]"):
            uk.unlearn(trained_cnn, None, some, "pgu", cache=str(cache_file), energy=energy)
    with pytest.raises(uk.UnlearnkitError, match="another architecture"):
        uk.unlearn(trained_vit, None, some, "pgu", cache=str(cache_file))
    other = uk.create_model("cnn", num_classes=10, in_channels=1, width=16)
    with pytest.raises(uk.UnlearnkitError, match="belongs to other model weights"):
        uk.unlearn(other, None, some, "pgu", cache=str(cache_file))
    with pytest.raises(uk.UnlearnkitError, match="needs either the 'cache' parameter"):
        uk.unlearn(trained_cnn, None, some, "pgu")
    assert cache_file.read_bytes() == before
    assert pgu.PGUCache.load(cache_file).subtracted.size == 0


def test_cli_prepare_writes_the_cache_beside_the_checkpoint(trained_cnn, digits, tmp_path):
    from unlearnkit.cli import main
    from unlearnkit.workflow import dataset_fingerprint, save_model

    meta = {"model": "cnn", "model_args": {"num_classes": 10, "in_channels": 1, "width": 16}, "num_classes": 10,
            "dataset": {"name": "digits", "args": {}, "fingerprint": dataset_fingerprint(digits)}}
    save_model(tmp_path / "ckpt", trained_cnn, meta, {})
    assert main(["prepare", "--checkpoint", str(tmp_path / "ckpt"), "--quiet", "--device", "cpu"]) == 0
    cache = pgu.PGUCache.load(pgu.default_cache_path(tmp_path / "ckpt"))
    cache.check_model(trained_cnn)
    assert len(cache.ids) == len(digits.train)
    assert main(["prepare", "--checkpoint", str(tmp_path / "missing")]) == 2

