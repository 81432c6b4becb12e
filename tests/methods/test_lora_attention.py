"""LoRA, PruneLoRA and RFA on a ViT built from torch's nn.TransformerEncoderLayer (nn.MultiheadAttention).

torch's attention reads ``in_proj_weight`` and ``out_proj.weight`` directly and never calls the
``out_proj`` module, so an adapter wrapping that module would get no gradient (a dead adapter).
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn

import unlearnkit as uk
from unlearnkit.data.loading import iterate_batches
from unlearnkit.errors import UnlearnkitError
from unlearnkit.components.lora_adapters import add_lora, resolve_targets
from unlearnkit.components.pruning import prune


class TorchViT(nn.Module):
    """8x8 digits -> 16 patches of 2x2, two pre-norm nn.TransformerEncoderLayer blocks, class token, head."""

    def __init__(self, dim: int = 32, depth: int = 2, heads: int = 4):
        super().__init__()
        self.patch_embed = nn.Conv2d(1, dim, 2, stride=2)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.randn(1, 17, dim) * 0.02)
        self.blocks = nn.Sequential(*[
            nn.TransformerEncoderLayer(dim, heads, dim_feedforward=2 * dim, dropout=0.0, batch_first=True,
                                       norm_first=True) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, 10)

    def forward(self, x):
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(len(x), -1, -1), x], dim=1) + self.pos_embed
        return self.head(self.norm(self.blocks(x))[:, 0])


_cache: dict[str, nn.Module] = {}


@pytest.fixture
def torch_vit(digits):
    if "vit" not in _cache:
        torch.manual_seed(0)
        model = TorchViT()
        uk.train(model, digits.train, uk.Recipe(epochs=12, lr=3e-3, optimizer="adamw", weight_decay=0.01,
                                                batch_size=64))
        _cache["vit"] = model
    return copy.deepcopy(_cache["vit"])


ATTENTION_TARGETS = [f"blocks.{i}.self_attn.{p}" for i in range(2) for p in ("in_proj_weight", "out_proj")]


def test_attention_projections_are_targets_and_get_gradients(torch_vit, digits):
    targets = resolve_targets(torch_vit)
    assert set(ATTENTION_TARGETS) <= set(targets)
    adapter = add_lora(torch_vit, rank=4, targets=("*.self_attn.*",))
    assert adapter.targets == ATTENTION_TARGETS
    # 2 blocks x (in_proj 32->96 + out_proj 32->32) at rank 4, plus the head
    assert adapter.trainable_parameters() == 2 * 4 * ((32 + 96) + (32 + 32)) + 330
    x, y = next(iterate_batches(digits.train, 64))
    torch_vit.train()
    nn.functional.cross_entropy(torch_vit(x), y).backward()
    for name, delta in adapter.deltas.items():  # B starts at zero, so B is what the first step moves
        assert delta.lora_B.grad is not None and delta.lora_B.grad.abs().sum() > 0, name


@pytest.mark.parametrize("pruned", [False, True])
def test_attention_merge_is_exact(torch_vit, digits, pruned):
    masks = prune(torch_vit, kind="l2_structured", ratio=0.5).masks if pruned else None
    keys = list(torch_vit.state_dict())
    adapter = add_lora(torch_vit)
    if masks:
        assert adapter.enforce_masks(masks) > 0
    torch.manual_seed(0)
    for p in adapter.lora_parameters():
        nn.init.normal_(p, std=0.05)
    x, _ = next(iterate_batches(digits.test, 64))
    torch_vit.eval()
    with torch.no_grad():
        adapted = torch_vit(x)
        with adapter.disabled():
            base = torch_vit(x)
    assert (adapted - base).abs().max() > 1e-2
    merged = adapter.merge(masks)
    assert list(merged.state_dict()) == keys
    assert not any("lora" in n or "parametriz" in n for n, _ in merged.named_modules())
    with torch.no_grad():  # eval + no_grad: torch's fused encoder path reads the merged weights
        torch.testing.assert_close(merged(x), adapted, atol=1e-5, rtol=1e-5)
    if masks:
        params = dict(merged.named_parameters())
        for pname, keep in masks.items():
            assert torch.all(params[pname][~keep] == 0), pname


# (method, options, forget bound %, retain slack points). Measured on this model: prune_lora forget < 10 at
# retain 93.8 -> 87.6; rfa_lora in 2 epochs forget 23.9% (it forgets more slowly here than on vit_tiny), measured
# with a forget batch of batch_size (the default then; now once_per_epoch), which the test keeps.
@pytest.mark.parametrize("method,options,forget_bound,retain_slack", [
    ("lora", dict(epochs=1, batch_size=32, forget_loss="random_label"), 10.0, 6.0),
    ("prune_lora", dict(epochs=2, batch_size=32, lr=3e-3, forget_loss="random_label"), 10.0, 8.0),
    ("rfa_lora", dict(epochs=2, batch_size=32, forget_batch_size="batch_size"), 30.0, 6.0),
])
def test_attention_model_forgets(torch_vit, class3, method, options, forget_bound, retain_slack):
    original = {k: v.clone() for k, v in torch_vit.state_dict().items()}
    ra0 = uk.accuracy(torch_vit, class3.retain)
    r = uk.unlearn(torch_vit, class3.retain, class3.forget, method, **options)
    forget_acc, retain_acc = uk.accuracy(r.model, class3.forget), uk.accuracy(r.model, class3.retain)
    assert forget_acc < forget_bound, f"{method}: forget {forget_acc:.1f}%"
    assert retain_acc >= ra0 - retain_slack, f"{method}: retain {ra0:.1f}% -> {retain_acc:.1f}%"
    state = r.model.state_dict()
    assert list(state) == list(original)
    for block in range(2):  # the attention weights moved: the adapters there trained and were merged
        for key in ("self_attn.in_proj_weight", "self_attn.out_proj.weight"):
            assert not torch.equal(state[f"blocks.{block}.{key}"], original[f"blocks.{block}.{key}"]), key


def test_separate_qkv_attention_is_refused():
    class Cross(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = nn.MultiheadAttention(8, 2, kdim=4, vdim=4, batch_first=True)
            self.head = nn.Linear(8, 3)

    with pytest.raises(UnlearnkitError, match="cannot adapt the attention 'attn'.*separate q/k/v"):
        add_lora(Cross())
