"""Pretrained-backbone plumbing: timm/torchvision by name (skipped without the vision extra),
input resizing and local weights files (no extra needed)."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import unlearnkit as uk
from unlearnkit.errors import UnlearnkitError
from unlearnkit.models import classifier_head
from unlearnkit.models.external import ResizedInput, load_weights_file

VISION_EXTRA = "the vision extra is not installed (pip install 'unlearnkit[vision]')"


def test_timm_vit_by_name_random_weights_resized():
    pytest.importorskip("timm", reason=f"timm: {VISION_EXTRA}")
    model = uk.create_model("timm:vit_tiny_patch16_224", num_classes=10, in_channels=3, image_size=32, resize=224)
    assert isinstance(model, ResizedInput) and model.size == 224
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert classifier_head(model)[1].out_features == 10


def test_torchvision_resnet_by_name_random_weights():
    pytest.importorskip("torchvision", reason=f"torchvision: {VISION_EXTRA}")
    model = uk.create_model("torchvision:resnet18", num_classes=10, in_channels=1, resize=64)
    with torch.no_grad():
        assert model(torch.randn(2, 1, 32, 32)).shape == (2, 10)  # 1 channel repeated to 3


def test_missing_extra_or_unknown_source_is_one_line_error():
    with pytest.raises(UnlearnkitError, match="Unknown model source 'foo'"):
        uk.create_model("foo:bar", num_classes=10)
    with pytest.raises(UnlearnkitError, match="'resize' must be a positive int"):
        uk.create_model("timm:vit_small_patch16_224", num_classes=10, resize=0)


class _Probe(nn.Module):
    def __init__(self):
        super().__init__()
        self.seen = None
        self.body = nn.Linear(3 * 16 * 16, 4)
        self.head = nn.Linear(4, 10)

    def forward(self, x):
        self.seen = tuple(x.shape)
        return self.head(self.body(x.flatten(1)))


def test_resized_input_interpolates_and_repeats_channels():
    model = ResizedInput(_Probe(), 16, channels=3)
    out = model(torch.randn(5, 1, 8, 8))
    assert model.backbone.seen == (5, 3, 16, 16) and out.shape == (5, 10)
    assert classifier_head(model)[1] is model.backbone.head


def test_local_weights_file_skips_the_mismatched_head(tmp_path):
    from safetensors.torch import save_file

    source = _Probe()
    source.head = nn.Linear(4, 1000)  # an "ImageNet" head
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(tmp_path / "w.safetensors"))
    target = _Probe()
    head_before = target.head.weight.clone()
    report = load_weights_file(target, tmp_path / "w.safetensors")
    assert torch.equal(target.body.weight, source.body.weight)
    assert torch.equal(target.head.weight, head_before)
    assert report["skipped"] == ["head.bias", "head.weight"]
    torch.save({"state_dict": source.state_dict()}, tmp_path / "w.pt")
    assert load_weights_file(_Probe(), tmp_path / "w.pt")["loaded"] == ["body.bias", "body.weight"]
    with pytest.raises(UnlearnkitError, match="not found"):
        load_weights_file(target, tmp_path / "missing.safetensors")
    save_file({"other": torch.zeros(2)}, str(tmp_path / "bad.safetensors"))
    with pytest.raises(UnlearnkitError, match="no tensor matching"):
        load_weights_file(target, tmp_path / "bad.safetensors")
