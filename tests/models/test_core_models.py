import pytest
import torch

import unlearnkit as uk
from unlearnkit.errors import UnlearnkitError
from unlearnkit.models import classifier_head, fresh_copy


@pytest.mark.parametrize("name", ["mlp", "cnn", "resnet20", "vit_tiny"])
def test_registered_models_build_and_run(name):
    kwargs = {"dim": 32, "depth": 1, "heads": 2} if name == "vit_tiny" else {}
    model = uk.create_model(name, num_classes=7, in_channels=3, image_size=32, **kwargs)
    out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 7)
    assert classifier_head(model)[1].out_features == 7


def test_vit_tiny_has_separate_qkv_linear_layers():
    model = uk.create_model("vit_tiny", num_classes=10, in_channels=3, image_size=32)
    attn = model.blocks[0].attn
    assert all(isinstance(getattr(attn, n), torch.nn.Linear) for n in ("q", "k", "v", "proj"))
    assert not any(isinstance(m, torch.nn.MultiheadAttention) for m in model.modules())
    assert model.patch_embed.kernel_size == (4, 4)
    assert sum(p.numel() for p in model.parameters()) > 1_000_000


def test_resnet20_size():
    model = uk.create_model("resnet20", num_classes=10)
    assert 0.26e6 < sum(p.numel() for p in model.parameters()) < 0.28e6


def test_unknown_model_and_argument():
    with pytest.raises(UnlearnkitError, match="Unknown model 'resnet21'.*Did you mean 'resnet20'"):
        uk.create_model("resnet21", num_classes=10)
    with pytest.raises(UnlearnkitError, match="Unknown argument\\(s\\) depthh for model 'vit_tiny'"):
        uk.create_model("vit_tiny", num_classes=10, depthh=3)


def test_list_models():
    assert {"mlp", "cnn", "resnet20", "vit_tiny"} <= set(uk.list_models())
    assert uk.list_models("vit*") == ["vit_tiny"]


@pytest.mark.parametrize("name", ["cnn", "vit_tiny", "resnet20"])
def test_fresh_copy_redraws_every_parameter(name):
    model = uk.create_model(name, num_classes=10, in_channels=1, image_size=8)
    clone = fresh_copy(model, seed=1)
    for (n, a), (_, b) in zip(model.named_parameters(), clone.named_parameters()):
        if a.numel() > 1 and a.std() > 0:
            assert not torch.equal(a, b), n


def test_fresh_copy_refuses_unresettable_parameters():
    class Custom(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.randn(4, 4))

        def forward(self, x):
            return x @ self.w

    with pytest.raises(UnlearnkitError, match="Cannot re-initialise parameter 'w'"):
        fresh_copy(Custom(), seed=0)


def test_cifar_resnet18_shape_size_and_reinit():
    from unlearnkit.models.zoo import fresh_copy

    m = uk.create_model("resnet18", num_classes=10)
    assert sum(p.numel() for p in m.parameters()) == 11_173_962  # the CIFAR ResNet-18 of the unlearning papers
    assert m(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    small = uk.create_model("resnet18", num_classes=10, in_channels=1, width=8)
    assert small(torch.randn(2, 1, 8, 8)).shape == (2, 10)
    clone = fresh_copy(small, seed=1)
    assert not torch.equal(clone.conv1.weight, small.conv1.weight)
